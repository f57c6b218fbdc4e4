"""Sealed boxes: a payload only the aggregator can read, bound to the message it belongs to.

A box, byte for byte (docs/SECURITY.md, "Protocol v2"):

====== ======== ===============================================================
offset size     content
====== ======== ===============================================================
0      4        magic ``FB2E`` (``46 42 32 45``)
4      32       the sender's ephemeral X25519 public key ``E``
36     the rest ChaCha20-Poly1305 ciphertext of the plaintext, then its 16-byte tag
====== ======== ===============================================================

With ``R`` the recipient's X25519 public key and ``e`` the ephemeral secret (fresh for every box):
``shared = X25519(e, R)``; ``key || nonce = HKDF-SHA256(ikm=shared, salt=E || R, info="fedbus/v2 sealed",
44 bytes)`` (32 + 12); associated data ``"fedbus/v2 sealed\\n" || context``. An update's context is
``run "\\n" client "\\n" id`` (:func:`seal_context`), so a box lifted into another message, from another
client or run, does not open.

In a message, a sealed body replaces the v1 ``body`` object by ``{"sealed":"<standard base64 of the box>"}``,
the box's plaintext being the UTF-8 JSON of the original body (:func:`seal_body`, :func:`open_body`).
"""

from __future__ import annotations

import json
from typing import Any

from fedbus.errors import LocalProtocolError
from fedbus.protocol import codec
from fedbus.security import crypto
from fedbus.security.crypto import AEAD_KEY_BYTES, AEAD_NONCE_BYTES, AEAD_TAG_BYTES, PrivateKey
from fedbus.security.errors import WireRejected
from fedbus.security.keys import KEY_BYTES, PublicKey, b64decode_exact, b64encode

MAGIC = b"FB2E"
DOMAIN = b"fedbus/v2 sealed\n"  # the associated data starts with it
HKDF_INFO = b"fedbus/v2 sealed"
OVERHEAD = len(MAGIC) + KEY_BYTES + AEAD_TAG_BYTES  # 52 bytes more than the plaintext
SEALED_FIELD = "sealed"


def seal_context(run: str, client: str, msg_id: str) -> bytes:
    """The context an update body is sealed under: ``utf8(run) || 0x0A || utf8(client) || 0x0A || utf8(id)``.

    Run and client ids cannot hold a newline, and the id comes last, so the three cannot be confused.
    ``ValueError`` if one cannot be written as UTF-8 (a lone surrogate)."""
    try:
        return b"\n".join(part.encode("utf-8") for part in (run, client, msg_id))
    except UnicodeEncodeError as exc:
        raise ValueError(f"context not encodable as UTF-8: {exc.reason}") from None


def _key_and_nonce(shared: bytes, ephemeral_public: bytes, recipient: bytes) -> tuple[bytes, bytes]:
    okm = crypto.hkdf_sha256(shared, ephemeral_public + recipient, HKDF_INFO, AEAD_KEY_BYTES + AEAD_NONCE_BYTES)
    return okm[:AEAD_KEY_BYTES], okm[AEAD_KEY_BYTES:]


def seal(plaintext: bytes, recipient: PublicKey, context: bytes, *, ephemeral: bytes | None = None) -> bytes:
    """A box of ``plaintext`` that only ``recipient``'s private key opens, and only under ``context``.

    ``ephemeral`` is for test vectors and the simulator only (:attr:`fedbus.security.policy.Security.ephemeral_seed`
    derives one per payload, so that a seed replays the same bytes): a fixed 32-byte ephemeral secret. Left out
    (always, over a network), a fresh one comes from the OS's CSPRNG; reusing one for another plaintext would
    reuse the AEAD key and nonce."""
    secret = crypto.random_bytes(KEY_BYTES) if ephemeral is None else ephemeral
    if len(secret) != KEY_BYTES:
        raise LocalProtocolError("the ephemeral secret must be 32 bytes")
    # a seed-derived ephemeral secret (the simulator's) is no secret: its shared one is kept for the opener
    ephemeral_public, shared = crypto.x25519_ephemeral(secret, recipient.seal, remember=ephemeral is not None)
    if shared is None:
        raise LocalProtocolError("the recipient's X25519 key is unusable (a low-order point)")
    key, nonce = _key_and_nonce(shared, ephemeral_public, recipient.seal)
    return MAGIC + ephemeral_public + crypto.aead_encrypt(key, nonce, plaintext, DOMAIN + context)


def unseal(box: bytes, recipient: PrivateKey, context: bytes) -> bytes:
    """The plaintext of a box sealed to ``recipient`` under ``context``.

    Raises :class:`WireRejected` and nothing else: ``malformed`` (not a box), ``bad-seal`` (sealed to another
    key, under another context, or altered: the three cannot be told apart, by design)."""
    if not isinstance(box, bytes) or len(box) < OVERHEAD or box[: len(MAGIC)] != MAGIC:
        raise WireRejected("malformed", "not a sealed box (too short or no FB2E magic)")
    ephemeral_public = box[len(MAGIC) : len(MAGIC) + KEY_BYTES]
    shared = crypto.x25519_shared(recipient, ephemeral_public)
    if shared is None:
        raise WireRejected("bad-seal", "the box's ephemeral key is a low-order point")
    key, nonce = _key_and_nonce(shared, ephemeral_public, recipient.public.seal)
    plaintext = crypto.aead_decrypt(key, nonce, box[len(MAGIC) + KEY_BYTES :], DOMAIN + context)
    if plaintext is None:
        raise WireRejected("bad-seal", "the box does not open with this key under this message's context")
    return plaintext


# ---------------------------------------------------------------------------------------------- message bodies
def _dump(document: Any) -> bytes:
    # The codec's own JSON style: compact, UTF-8. NaN passes through so that the codec, not this layer,
    # rejects it (with its own reason) when the message is decoded.
    return codec.write_json(document, allow_nan=True)


def _context_of(document: dict[str, Any]) -> bytes | None:
    run, client, msg_id = document.get("run"), document.get("client"), document.get("id")
    if not (isinstance(run, str) and isinstance(client, str) and isinstance(msg_id, str)):
        return None
    try:
        return seal_context(run, client, msg_id)
    except ValueError:
        return None


_BODY_KEY = b',"body":'


def _split(payload: bytes) -> tuple[bytes, dict[str, Any], bytes] | None:
    """The codec writes ``body`` last, after the envelope's ids (which hold no quote): ``head``, the envelope
    ``head`` parses to, and the body's own bytes, without reading the body; None where ``payload`` is not laid
    out so (the caller then reads it all)."""
    at = payload.find(_BODY_KEY)
    if at < 0 or not payload.endswith(b"}") or payload[at + len(_BODY_KEY) : at + len(_BODY_KEY) + 1] != b"{":
        return None
    head = payload[:at]
    try:
        envelope = json.loads(head + b"}")
    except (ValueError, RecursionError):
        return None
    if not isinstance(envelope, dict) or "body" in envelope:
        return None
    return head, envelope, payload[at + len(_BODY_KEY) : -1]


def seal_body(payload: bytes, recipient: PublicKey, *, ephemeral: bytes | None = None) -> bytes:
    """``payload`` (a v1 message as the codec encoded it) with its body sealed to ``recipient`` under the
    message's own ``run``, ``client`` and ``id``. ``LocalProtocolError`` if it is not such a message; the body of
    one laid out as the codec lays it out is sealed unread, so only its envelope is checked (the opener's codec
    checks the rest). ``ephemeral``: as in :func:`seal`.

    The result is the payload as the codec would write it with ``{"sealed": ...}`` for its body. The body's bytes
    are sealed as they are, unread: the codec's JSON is the style :func:`_dump` writes, so they are what parsing
    and writing them again would give (a few hundredths of a millisecond an update)."""
    split = _split(payload)
    if split is not None:
        head, envelope, body = split
        context = _context_of(envelope)
        if context is not None:
            box = seal(body, recipient, context, ephemeral=ephemeral)
            return head + _BODY_KEY + b'{"' + SEALED_FIELD.encode("ascii") + b'":"' + \
                b64encode(box).encode("ascii") + b'"}}'
    try:
        document = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"cannot seal: the payload is not JSON ({exc})") from None
    context = _context_of(document) if isinstance(document, dict) else None
    if context is None or not isinstance(document.get("body"), dict):
        raise LocalProtocolError("cannot seal: the payload is not a message with run, client, id and body")
    box = seal(_dump(document["body"]), recipient, context, ephemeral=ephemeral)
    document["body"] = {SEALED_FIELD: b64encode(box)}
    return _dump(document)


def open_body(payload: bytes, recipient: PrivateKey, *, required: bool = True) -> bytes:
    """``payload`` with its sealed body opened: a v1 message again, for the codec to decode and check.

    A message whose body is not sealed comes back unchanged when ``required`` is False, and is rejected as
    ``not-sealed`` when it is True. Raises :class:`WireRejected` and nothing else: ``malformed``,
    ``not-sealed``, ``bad-seal``. It checks only what opening needs; everything else is the codec's to check."""
    if not isinstance(payload, bytes):
        raise WireRejected("malformed", f"expected bytes, got {type(payload).__name__}")
    try:
        document = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise WireRejected("malformed", "the payload is not UTF-8 JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("body"), dict):
        raise WireRejected("malformed", "the payload is not a message with a body object")
    body: dict[str, Any] = document["body"]
    if SEALED_FIELD not in body:
        if required:
            raise WireRejected("not-sealed", "the body must be sealed to the aggregator")
        return payload
    text = body[SEALED_FIELD]
    if len(body) != 1 or not isinstance(text, str):
        raise WireRejected("malformed", 'a sealed body is exactly {"sealed": "<base64>"}')
    context = _context_of(document)
    if context is None:
        raise WireRejected("malformed", "run, client and id must be strings to open a sealed body")
    box = b64decode_exact(text)
    if box is None:
        raise WireRejected("malformed", "the sealed body is not canonical base64")
    plaintext = unseal(box, recipient, context)
    try:
        opened = json.loads(plaintext.decode("utf-8"))
    except (ValueError, RecursionError):
        raise WireRejected("malformed", "the opened body is not UTF-8 JSON") from None
    if not isinstance(opened, dict):
        raise WireRejected("malformed", "the opened body is not a JSON object")
    del document["body"]
    try:
        head = _dump(document)[:-1]  # the envelope, the body put back last (run, client and id are in it)
        # the body's bytes, checked to be one JSON object, go back as they are; only an escape ("\u...") may be
        # a lone surrogate, which the body must not smuggle in (it cannot be written as UTF-8): that one is
        # written anew, which fails for it
        written = _dump(opened) if b"\\u" in plaintext else plaintext
    except (ValueError, RecursionError):  # a lone surrogate cannot be written back as UTF-8
        raise WireRejected("malformed", "the message cannot be re-encoded as UTF-8") from None
    return head + _BODY_KEY + written + b"}"
