"""Signed frames: protocol v2's envelope around a payload, so a receiver knows who sent it, unaltered.

The frame, byte for byte (docs/SECURITY.md, "Protocol v2"):

====== ======== =====================================================================
offset size     content
====== ======== =====================================================================
0      4        magic ``FB2S`` (``46 42 32 53``)
4      1        ``n``, the length of the signer id, 1-64
5      n        the signer id, ASCII, a fedbus id (``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``)
5+n    64       Ed25519 signature of ``"fedbus/v2 signed\\n" || n || signer id || payload``
69+n   the rest the payload: a protocol v1 message exactly as its sender encoded it
====== ======== =====================================================================

The signature covers the whole payload (run, kind, client, round, id, sent, body) and the signer id; the
domain string keeps a fedbus signature from being valid for anything else signed with the same key.

Messages between one client and the aggregator (tasks and receipts to the client, updates and failures from it)
may travel in a **paired frame** instead (magic ``FB2M``): the same layout with a 32-byte HMAC-SHA256 tag in place
of the signature, under the pair's key, which only that client and the aggregator can compute (X25519 of one's
secret and the other's public key, then HKDF: :func:`pair_key`). Verifying one costs ~5 µs against ~120 µs for an
Ed25519 signature, and a 1,000-client round verifies three per client. Broadcasts (the global state, presence,
heartbeats, Last Wills) stay signed: everyone verifies those.
Binary, not JSON: no base64 (a third more bytes) and no canonical-JSON or canonical-base64 rules to get
right, fixed offsets, and the payload still reads as JSON at the end of the frame in ``mosquitto_sub``. A
v1 payload starts with ``{``, a frame with ``F``: a receiver can tell them apart by the first byte.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from fedbus.errors import LocalProtocolError
from fedbus.protocol.ids import MAX_ID_CHARS, is_valid_id
from fedbus.security import crypto
from fedbus.security.crypto import SIGNATURE_BYTES, PrivateKey
from fedbus.security.errors import WireRejected
from fedbus.security.keys import KeyLookup, PublicKey

MAGIC = b"FB2S"
DOMAIN = b"fedbus/v2 signed\n"
PAIRED_MAGIC = b"FB2M"
PAIRED_DOMAIN = b"fedbus/v2 paired\n"
PAIR_KEY_INFO = b"fedbus/v2 pair key\n"
TAG_BYTES = 32
MAX_SIGNER_ID = MAX_ID_CHARS
_HEADER = len(MAGIC) + 1  # magic and the id's length byte
_AUTH_BYTES = {MAGIC: SIGNATURE_BYTES, PAIRED_MAGIC: TAG_BYTES}  # what follows the id in each kind of frame
# (signer id, its key) -> the pair's key, or None where there is none; a verifier given one accepts paired frames
PairKeys = Callable[[str, PublicKey], "bytes | None"]


@dataclass(frozen=True, slots=True)
class Verified:
    """A payload whose signature checked out, and who signed it."""

    payload: bytes
    signer_id: str


def signed_data(signer_id: str, payload: bytes) -> bytes:
    """The bytes the signature is over: the domain string, the id's length byte, the id, the payload."""
    return _covered(DOMAIN, signer_id, payload)


def sign(payload: bytes, signer: PrivateKey, signer_id: str) -> bytes:
    """The signed frame of ``payload`` by ``signer_id`` with ``signer``'s key.

    Raises :class:`~fedbus.errors.LocalProtocolError` if ``signer_id`` is not a fedbus id (our bug)."""
    return _frame(MAGIC, DOMAIN, signer_id, payload, lambda data: crypto.ed25519_sign(signer, data))


def _covered(domain: bytes, signer_id: str, payload: bytes) -> bytes:
    raw_id = signer_id.encode("ascii")
    return domain + bytes([len(raw_id)]) + raw_id + payload


def _frame(magic: bytes, domain: bytes, signer_id: str, payload: bytes, auth: Callable[[bytes], bytes]) -> bytes:
    """``magic ‖ n ‖ signer id ‖ auth(domain ‖ n ‖ signer id ‖ payload) ‖ payload``."""
    if not is_valid_id(signer_id):
        raise LocalProtocolError(f"cannot sign as {signer_id!r}: not a fedbus id")
    raw_id = signer_id.encode("ascii")
    return magic + bytes([len(raw_id)]) + raw_id + auth(_covered(domain, signer_id, payload)) + payload


# ---------------------------------------------------------------------------------------------- paired frames
def pair_key(own: PrivateKey, peer: PublicKey, client_id: str, *, aggregator: bool) -> bytes | None:
    """The key client ``client_id`` and the aggregator share: ``own`` is one side's private key and ``peer`` the
    other's public key (``aggregator``: ``own`` is the aggregator's). Both sides compute the same 32 bytes:

    ``HKDF-SHA256(ikm = X25519(own, peer), salt = aggregator's X25519 key ‖ client's, info = "fedbus/v2 pair
    key" ‖ 0x0A ‖ client id, length 32)``. None where ``peer``'s X25519 key is unusable (a low-order point)."""
    return _pair_key(own, peer.seal, client_id, aggregator)


@functools.lru_cache(maxsize=65536)
def _pair_key(own: PrivateKey, peer_seal: bytes, client_id: str, aggregator: bool) -> bytes | None:
    shared = crypto.x25519_shared(own, peer_seal, known=True)
    if shared is None:
        return None
    salt = own.public.seal + peer_seal if aggregator else peer_seal + own.public.seal
    return crypto.hkdf_sha256(shared, salt, PAIR_KEY_INFO + client_id.encode("ascii"), TAG_BYTES)


def paired(payload: bytes, key: bytes, signer_id: str) -> bytes:
    """The paired frame of ``payload`` from ``signer_id`` under the pair's ``key`` (from :func:`pair_key`).

    Raises :class:`~fedbus.errors.LocalProtocolError` if ``signer_id`` is not a fedbus id (our bug)."""
    return _frame(PAIRED_MAGIC, PAIRED_DOMAIN, signer_id, payload, lambda data: crypto.hmac_sha256(key, data))


def paired_data(signer_id: str, payload: bytes) -> bytes:
    """The bytes a paired frame's tag is over: the domain string, the id's length byte, the id, the payload."""
    return _covered(PAIRED_DOMAIN, signer_id, payload)


def is_signed(wire: bytes) -> bool:
    """True if ``wire`` starts like a frame, signed or paired (it may still fail :func:`verify`); a v1 payload
    does not."""
    return bytes(wire[: len(MAGIC)]) in _AUTH_BYTES


def unverified_payload(wire: bytes) -> bytes | None:
    """The payload a frame carries, NOT verified: only for a look that decides nothing about trust (e.g. whether a
    client id is shown online before connecting under it). None if ``wire`` is no well-formed frame."""
    if signer_of(wire) is None:
        return None
    start = _HEADER + wire[len(MAGIC)] + _AUTH_BYTES[bytes(wire[: len(MAGIC)])]
    return wire[start:] if len(wire) > start else None


def signer_of(wire: bytes) -> str | None:
    """The signer id a frame claims, unverified (for a log line or a key lookup); None if it names none."""
    if len(wire) < _HEADER or bytes(wire[: len(MAGIC)]) not in _AUTH_BYTES:
        return None
    n = wire[len(MAGIC)]
    if not 1 <= n <= MAX_SIGNER_ID or len(wire) < _HEADER + n:
        return None
    try:
        signer_id = wire[_HEADER : _HEADER + n].decode("ascii")
    except UnicodeDecodeError:
        return None
    return signer_id if is_valid_id(signer_id) else None


def verify(wire: bytes, keys: KeyLookup, *, signer: str | None = None, pairs: PairKeys | None = None) -> Verified:
    """Check a signed (or paired) frame; return its payload and signer.

    ``keys`` maps signer ids to public keys; ``signer``, when given, is the only signer accepted (the client
    of the topic it came on, or ``aggregator``). ``pairs`` gives the pair's key for a paired frame (the receiver's
    side of :func:`pair_key`); without it a paired frame is ``unknown-signer``. Raises :class:`WireRejected` and
    nothing else, whatever the bytes: ``unsigned`` (no ``FB2S`` or ``FB2M`` magic), ``malformed`` (a cut or
    garbled header), ``wrong-signer``, ``unknown-signer``, ``bad-signature`` (a paired frame's tag too)."""
    if isinstance(wire, bytearray | memoryview):
        wire = bytes(wire)
    if not isinstance(wire, bytes):
        raise WireRejected("malformed", f"expected bytes, got {type(wire).__name__}")
    signer_id = signer_of(wire)
    if signer_id is None:
        if not is_signed(wire):
            raise WireRejected("unsigned", "not a signed frame (no FB2S or FB2M magic): a v1 payload, or garbage")
        raise WireRejected("malformed", "the frame's signer id is missing, cut or not a fedbus id")
    magic = wire[: len(MAGIC)]
    auth_bytes = _AUTH_BYTES[magic]
    start = _HEADER + len(signer_id)
    if len(wire) < start + auth_bytes:
        raise WireRejected("malformed", f"frame of {len(wire)} bytes is too short for its "
                                        f"{'signature' if magic == MAGIC else 'tag'}")
    if signer is not None and signer_id != signer:
        raise WireRejected("wrong-signer", f"signed by {signer_id!r}, expected {signer!r}")
    key = keys.get(signer_id)
    if key is None:
        raise WireRejected("unknown-signer", f"no key for {signer_id!r}")
    auth = wire[start : start + auth_bytes]
    payload = wire[start + auth_bytes :]
    if magic == MAGIC:
        if not crypto.ed25519_verify(key.sign, auth, signed_data(signer_id, payload)):
            raise WireRejected("bad-signature", f"the signature does not match {signer_id!r}'s key")
        return Verified(payload=payload, signer_id=signer_id)
    shared = None if pairs is None else pairs(signer_id, key)
    if shared is None:
        raise WireRejected("unknown-signer", f"no pair key shared with {signer_id!r} for a paired (FB2M) frame")
    if not crypto.hmac_equal(auth, crypto.hmac_sha256(shared, paired_data(signer_id, payload))):
        raise WireRejected("bad-signature", f"the paired frame's tag does not match the key shared with {signer_id!r}")
    return Verified(payload=payload, signer_id=signer_id)
