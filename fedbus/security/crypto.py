"""The one module that imports the ``cryptography`` library: private keys and the primitives fedbus uses.

Ed25519 (signatures), X25519 (key agreement), HKDF-SHA256 and ChaCha20-Poly1305, each behind a function
over plain bytes. The library's exceptions end here: a signature that does not verify is ``False``, a
ciphertext that does not open is ``None``. How the primitives are put together (domain strings, framing)
is in :mod:`fedbus.security.signing` and :mod:`fedbus.security.sealing`, specified in docs/SECURITY.md.

Randomness: :func:`generate` and :func:`random_bytes` draw from the operating system's CSPRNG. Keys and
ephemeral secrets must never come from a seeded ``random.Random``; tests pass fixed bytes instead.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedbus.security.keys import KEY_BYTES, PublicKey

SIGNATURE_BYTES = 64
AEAD_KEY_BYTES = 32
AEAD_NONCE_BYTES = 12
AEAD_TAG_BYTES = 16


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """A party's secrets: the 32-byte Ed25519 seed it signs with and the 32-byte X25519 secret that opens
    what is sealed to it. ``public`` is derived; its Ed25519 half, like the signing key, when first needed (a
    party that only pairs and seals never loads it). The secrets never appear in ``repr``; two keys are equal when
    their secrets are."""

    sign_seed: bytes = field(repr=False)
    seal_secret: bytes = field(repr=False)
    public: PublicKey = field(init=False, compare=False)
    _opener: X25519PrivateKey = field(init=False, repr=False, compare=False)
    _signing: Ed25519PrivateKey | None = field(init=False, repr=False, compare=False)  # loaded when first used

    def __post_init__(self) -> None:
        if type(self.sign_seed) is not bytes or len(self.sign_seed) != KEY_BYTES:
            raise ValueError("PrivateKey.sign_seed must be 32 bytes")
        if type(self.seal_secret) is not bytes or len(self.seal_secret) != KEY_BYTES:
            raise ValueError("PrivateKey.seal_secret must be 32 bytes")
        opener = X25519PrivateKey.from_private_bytes(self.seal_secret)
        object.__setattr__(self, "_opener", opener)
        object.__setattr__(self, "_signing", None)
        # the deferred half holds the seed it needs, not this key: no cycle, and nothing more kept alive
        object.__setattr__(self, "public", PublicKey.deferred(opener.public_key().public_bytes_raw(),
                                                              functools.partial(_ed25519_public, self.sign_seed)))

    @property
    def _signer(self) -> Ed25519PrivateKey:
        signing = self._signing
        if signing is None:
            signing = Ed25519PrivateKey.from_private_bytes(self.sign_seed)
            object.__setattr__(self, "_signing", signing)  # two threads at once load the same key
        return signing


def _ed25519_public(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG."""
    return secrets.token_bytes(n)


def generate() -> PrivateKey:
    """A fresh key pair (both halves) from the operating system's CSPRNG."""
    return PrivateKey(random_bytes(KEY_BYTES), random_bytes(KEY_BYTES))


DERIVE_DOMAIN = b"fedbus/v2 derived key\n"


def derive(secret: bytes, owner: str) -> PrivateKey:
    """``owner``'s key pair derived from ``secret`` (HMAC-SHA256 of the domain, the owner and the half's name):
    one secret gives a process's own parties each a key of its own (``fedbus run`` and its clients; the
    simulator, from its seed, to replay byte for byte). As secret as ``secret``: at least 32 random bytes from
    :func:`random_bytes` for a real run; a seed-derived one only where nobody attacks (the simulator)."""
    if type(secret) is not bytes or len(secret) < KEY_BYTES:
        raise ValueError(f"a key-derivation secret must be at least {KEY_BYTES} bytes")
    label = DERIVE_DOMAIN + owner.encode("utf-8") + b"\n"
    return PrivateKey(hmac.digest(secret, label + b"ed25519", "sha256"),
                      hmac.digest(secret, label + b"x25519", "sha256"))


# ---------------------------------------------------------------------------------------------- Ed25519
def ed25519_sign(key: PrivateKey, data: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``data`` (RFC 8032, deterministic)."""
    return key._signer.sign(data)


@functools.lru_cache(maxsize=4096)
def _verifier(public: bytes) -> Ed25519PublicKey:
    # Loading a key decompresses a curve point; the same few keys verify every message of a run.
    return Ed25519PublicKey.from_public_bytes(public)


def ed25519_verify(public: bytes, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``data`` under the 32-byte key ``public``.

    The answer for the same three byte strings is always the same, so the last few are remembered: a process
    hosting many clients verifies a broadcast (the global, the aggregator's presence), the same bytes for every
    one of them, once instead of once per client (~140 µs against ~5 µs to hash and compare ~3 KB)."""
    if len(public) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    return _verified(bytes(public), bytes(signature), bytes(data))


@functools.lru_cache(maxsize=64)
def _verified(public: bytes, signature: bytes, data: bytes) -> bool:
    try:
        _verifier(public).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------------------------- X25519
def x25519_public(secret: bytes) -> bytes:
    """The X25519 public key of a 32-byte secret (any 32 bytes are a valid secret: RFC 7748 clamps them)."""
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


def x25519_ephemeral(secret: bytes, public: bytes, *, remember: bool = False) -> tuple[bytes, bytes | None]:
    """``(x25519_public(secret), x25519_shared(secret, public))`` with the secret loaded once (loading one costs
    as much as the exchange). ``remember``: keep the shared secret for whoever in this process holds ``public``'s
    private key and asks for the same pair (:func:`x25519_shared`); only where the ephemeral secret is no secret
    anyway (the simulator's, derived from its seed), never for a fresh one."""
    own = X25519PrivateKey.from_private_bytes(secret)
    mine = own.public_key().public_bytes_raw()
    shared = _exchange(own, public, known=True)
    if remember and shared is not None:
        _remember(mine, public, shared)
    return mine, shared


@functools.lru_cache(maxsize=1024)
def _x25519_peer(public: bytes) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(public)


def x25519_shared(secret: bytes | PrivateKey, public: bytes, *, known: bool = False) -> bytes | None:
    """The X25519 shared secret of ``secret`` (32 bytes, or a party's key) and a 32-byte public key; None when
    ``public`` is not usable (wrong length, or a low-order point that makes the secret all zeros). ``known``: a
    party's long-term key, which is loaded once and remembered (an ephemeral one is not worth remembering).

    X25519(a, B) = X25519(b, A): where one process holds both parties' keys (the simulator: a client and the
    aggregator), the second of the pair to ask gets what the first computed. A party's key (a
    :class:`PrivateKey`) is looked up by its own public key and ``public``, so only a holder of one of the pair's
    private keys finds the pair's secret, which it could compute itself; raw secret bytes are never looked up."""
    if not isinstance(secret, PrivateKey):
        return _exchange(X25519PrivateKey.from_private_bytes(secret), public, known=known)
    pair = _pair_of(secret.public.seal, bytes(public))
    shared = _SHARED.get(pair)
    if shared is not None:
        with contextlib.suppress(KeyError):  # another thread may have let it go meanwhile: the answer stands
            _SHARED.move_to_end(pair)
        return shared
    shared = _exchange(secret._opener, public, known=known)
    if known and shared is not None:
        _keep(pair, shared)
    return shared


_SHARED: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()  # the last few pairs' secrets, least recent first
_SHARED_MAX = 1024


def _pair_of(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    return (a, b) if a <= b else (b, a)


def _remember(a: bytes, b: bytes, shared: bytes) -> None:
    _keep(_pair_of(bytes(a), bytes(b)), shared)


def _keep(pair: tuple[bytes, bytes], shared: bytes) -> None:
    # no lock (the pure core imports no threading): each step is atomic under the GIL, and a loop with a suppress
    # lets threads that keep at once neither fail nor overfill
    _SHARED[pair] = shared
    while len(_SHARED) > _SHARED_MAX:
        with contextlib.suppress(KeyError):
            _SHARED.popitem(last=False)


def _exchange(own: X25519PrivateKey, public: bytes, *, known: bool) -> bytes | None:
    if len(public) != KEY_BYTES:
        return None
    try:
        return own.exchange(_x25519_peer(bytes(public)) if known else X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------- HMAC
def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) of ``data`` under ``key``: 32 bytes."""
    return hmac.digest(key, data, "sha256")


def hmac_equal(a: bytes, b: bytes) -> bool:
    """Compare two tags in time independent of where they differ."""
    return hmac.compare_digest(a, b)


# ---------------------------------------------------------------------------------------------- HKDF, AEAD
def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869), extract and expand, ``length`` bytes of output."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """ChaCha20-Poly1305 (RFC 8439): the ciphertext followed by the 16-byte tag."""
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes | None:
    """The plaintext of a ChaCha20-Poly1305 ciphertext-and-tag, or None when it does not authenticate."""
    if len(ciphertext) < AEAD_TAG_BYTES:
        return None
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, associated)
    except (InvalidTag, ValueError, OverflowError):
        return None
