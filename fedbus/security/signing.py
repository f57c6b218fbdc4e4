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
Binary, not JSON: no base64 (a third more bytes) and no canonical-JSON or canonical-base64 rules to get
right, fixed offsets, and the payload still reads as JSON at the end of the frame in ``mosquitto_sub``. A
v1 payload starts with ``{``, a frame with ``F``: a receiver can tell them apart by the first byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedbus.errors import LocalProtocolError
from fedbus.protocol.ids import is_valid_id
from fedbus.security import crypto
from fedbus.security.crypto import SIGNATURE_BYTES, PrivateKey
from fedbus.security.errors import WireRejected
from fedbus.security.keys import KeyLookup

MAGIC = b"FB2S"
DOMAIN = b"fedbus/v2 signed\n"
MAX_SIGNER_ID = 64
_HEADER = len(MAGIC) + 1  # magic and the id's length byte


@dataclass(frozen=True, slots=True)
class Verified:
    """A payload whose signature checked out, and who signed it."""

    payload: bytes
    signer_id: str


def signed_data(signer_id: str, payload: bytes) -> bytes:
    """The bytes the signature is over: the domain string, the id's length byte, the id, the payload."""
    raw_id = signer_id.encode("ascii")
    return DOMAIN + bytes([len(raw_id)]) + raw_id + payload


def sign(payload: bytes, signer: PrivateKey, signer_id: str) -> bytes:
    """The signed frame of ``payload`` by ``signer_id`` with ``signer``'s key.

    Raises :class:`~fedbus.errors.LocalProtocolError` if ``signer_id`` is not a fedbus id (our bug)."""
    if not is_valid_id(signer_id):
        raise LocalProtocolError(f"cannot sign as {signer_id!r}: not a fedbus id")
    raw_id = signer_id.encode("ascii")
    signature = crypto.ed25519_sign(signer, signed_data(signer_id, payload))
    return MAGIC + bytes([len(raw_id)]) + raw_id + signature + payload


def is_signed(wire: bytes) -> bool:
    """True if ``wire`` starts like a signed frame (it may still fail :func:`verify`); a v1 payload does not."""
    return wire[: len(MAGIC)] == MAGIC


def unverified_payload(wire: bytes) -> bytes | None:
    """The payload a frame carries, NOT verified: only for a look that decides nothing about trust (e.g. whether a
    client id is shown online before connecting under it). None if ``wire`` is no well-formed frame."""
    if signer_of(wire) is None:
        return None
    start = _HEADER + wire[len(MAGIC)] + SIGNATURE_BYTES
    return wire[start:] if len(wire) > start else None


def signer_of(wire: bytes) -> str | None:
    """The signer id a frame claims, unverified (for a log line or a key lookup); None if it names none."""
    if len(wire) < _HEADER or wire[: len(MAGIC)] != MAGIC:
        return None
    n = wire[len(MAGIC)]
    if not 1 <= n <= MAX_SIGNER_ID or len(wire) < _HEADER + n:
        return None
    try:
        signer_id = wire[_HEADER : _HEADER + n].decode("ascii")
    except UnicodeDecodeError:
        return None
    return signer_id if is_valid_id(signer_id) else None


def verify(wire: bytes, keys: KeyLookup, *, signer: str | None = None) -> Verified:
    """Check a signed frame; return its payload and signer.

    ``keys`` maps signer ids to public keys; ``signer``, when given, is the only signer accepted (the client
    of the topic it came on, or ``aggregator``). Raises :class:`WireRejected` and nothing else, whatever the
    bytes: ``unsigned`` (no ``FB2S`` magic), ``malformed`` (a cut or garbled header), ``wrong-signer``,
    ``unknown-signer``, ``bad-signature``."""
    if isinstance(wire, bytearray | memoryview):
        wire = bytes(wire)
    if not isinstance(wire, bytes):
        raise WireRejected("malformed", f"expected bytes, got {type(wire).__name__}")
    signer_id = signer_of(wire)
    if signer_id is None:
        if not is_signed(wire):
            raise WireRejected("unsigned", "not a signed frame (no FB2S magic): a v1 payload, or garbage")
        raise WireRejected("malformed", "the frame's signer id is missing, cut or not a fedbus id")
    start = _HEADER + len(signer_id)
    if len(wire) < start + SIGNATURE_BYTES:
        raise WireRejected("malformed", f"frame of {len(wire)} bytes is too short for its signature")
    if signer is not None and signer_id != signer:
        raise WireRejected("wrong-signer", f"signed by {signer_id!r}, expected {signer!r}")
    key = keys.get(signer_id)
    if key is None:
        raise WireRejected("unknown-signer", f"no key for {signer_id!r}")
    signature = wire[start : start + SIGNATURE_BYTES]
    payload = wire[start + SIGNATURE_BYTES :]
    if not crypto.ed25519_verify(key.sign, signature, signed_data(signer_id, payload)):
        raise WireRejected("bad-signature", f"the signature does not match {signer_id!r}'s key")
    return Verified(payload=payload, signer_id=signer_id)
