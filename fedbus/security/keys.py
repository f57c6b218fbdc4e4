"""Public keys as frozen values, their text forms, fingerprints and the aggregator's authorized-keys file.

Pure: stdlib only (the cryptographic library stays in :mod:`fedbus.security.crypto`). A party's public key
is a pair: an Ed25519 key it signs with and an X25519 key others seal to. The two are separate keys (not
one derived from the other): every language's library has both primitives, while the Ed25519-to-X25519
conversion is not in all of them, and a key used for one purpose only is the safer habit.

Text forms (docs/SECURITY.md, "Key files"):

- public key: ``fedbus-pk:`` + standard base64 (with padding) of ``ed25519 public (32) || x25519 public (32)``;
- fingerprint: ``SHA256:`` + standard base64 without padding of SHA-256 of the same 64 bytes (OpenSSH's style);
- authorized-keys line: ``<client id> <public key> [comment]``; ``#`` starts a comment line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Protocol

from fedbus.protocol.ids import AGGREGATOR, is_valid_id
from fedbus.security.errors import KeyFileError

KEY_BYTES = 32
PUBLIC_PREFIX = "fedbus-pk:"
FINGERPRINT_PREFIX = "SHA256:"


def b64encode(raw: bytes) -> str:
    """Standard base64 with padding (RFC 4648 section 4)."""
    return base64.b64encode(raw).decode("ascii")


def b64decode_exact(text: str, length: int | None = None) -> bytes | None:
    """Decode standard padded base64, or None unless ``text`` is the one canonical encoding of its bytes (no
    stray characters, no non-zero padding bits: each byte string has one text form, so none can be altered
    without changing what it decodes to) and, when given, the bytes are ``length`` long."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    if b64encode(raw) != text or (length is not None and len(raw) != length):
        return None
    return raw


class PublicKey:
    """What others know of a party: its Ed25519 verifying key (``sign``) and its X25519 key (``seal``).

    A frozen value: equal, and hashed alike, when both halves are. A key pair's own public key
    (:attr:`fedbus.security.crypto.PrivateKey.public`) computes its Ed25519 half the first time it is read
    (:meth:`deferred`): a client of the simulator's virtual population, or a party that only ever pairs and seals
    (the protocol's paired frames), never signs with Ed25519, and the half costs as much as an X25519 exchange."""

    __slots__ = ("_sign", "_sign_of", "seal")
    _sign: bytes | None
    seal: bytes
    _sign_of: Callable[[], bytes] | None

    def __init__(self, sign: bytes, seal: bytes) -> None:
        _check_half(sign, "sign", "an Ed25519")
        _check_half(seal, "seal", "an X25519")
        object.__setattr__(self, "_sign", sign)
        object.__setattr__(self, "seal", seal)
        object.__setattr__(self, "_sign_of", None)

    @classmethod
    def deferred(cls, seal: bytes, sign_of: Callable[[], bytes]) -> PublicKey:
        """The key whose X25519 half is ``seal`` and whose Ed25519 half is ``sign_of()``, called once, when
        :attr:`sign` is first read (or the key compared, hashed, written or pickled)."""
        _check_half(seal, "seal", "an X25519")
        key = cls.__new__(cls)
        object.__setattr__(key, "_sign", None)
        object.__setattr__(key, "seal", seal)
        object.__setattr__(key, "_sign_of", sign_of)
        return key

    @property
    def sign(self) -> bytes:
        sign = self._sign
        if sign is None:
            sign_of = self._sign_of
            if sign_of is None:  # another thread computed it since: it set _sign before it cleared _sign_of
                return self._sign  # type: ignore[return-value]
            sign = sign_of()
            _check_half(sign, "sign", "an Ed25519")
            object.__setattr__(self, "_sign", sign)  # two threads at once compute the same bytes
            object.__setattr__(self, "_sign_of", None)
        return sign

    @property
    def raw(self) -> bytes:
        """The 64 bytes the text form and the fingerprint are made of: ``sign || seal``."""
        return self.sign + self.seal

    def text(self) -> str:
        """``fedbus-pk:<base64 of sign || seal>``: how key files, authorized keys and tokens write it."""
        return PUBLIC_PREFIX + b64encode(self.raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return self is other or (self.seal == other.seal and self.sign == other.sign)

    def __hash__(self) -> int:
        return hash((self.sign, self.seal))

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type[PublicKey], tuple[bytes, bytes]]:
        return (PublicKey, (self.sign, self.seal))

    def __repr__(self) -> str:
        return f"PublicKey({fingerprint(self)})"


def _check_half(value: object, name: str, kind: str) -> None:
    if type(value) is not bytes or len(value) != KEY_BYTES:
        raise ValueError(f"PublicKey.{name} must be 32 bytes ({kind} public key)")


def fingerprint(key: PublicKey) -> str:
    """``SHA256:<base64, unpadded, of SHA-256(sign || seal)>``: 50 characters to compare or pin."""
    digest = hashlib.sha256(key.raw).digest()
    return FINGERPRINT_PREFIX + b64encode(digest).rstrip("=")


def parse_public(text: str) -> PublicKey:
    """The key a ``fedbus-pk:...`` text names; ``ValueError`` saying what is wrong."""
    if not text.startswith(PUBLIC_PREFIX):
        raise ValueError(f"a public key starts with {PUBLIC_PREFIX!r}")
    raw = b64decode_exact(text[len(PUBLIC_PREFIX):], 2 * KEY_BYTES)
    if raw is None:
        raise ValueError("a public key is the canonical base64 of 64 bytes after its prefix")
    return PublicKey(sign=raw[:KEY_BYTES], seal=raw[KEY_BYTES:])


class KeyLookup(Protocol):
    """Where :func:`fedbus.security.signing.verify` finds a signer's key: a dict ``{id: PublicKey}`` will do,
    and so will :class:`AuthorizedKeys`."""

    def get(self, signer_id: str, /) -> PublicKey | None: ...


@dataclass(frozen=True, slots=True)
class KeyChain:
    """Several key lookups as one: a signer's key is the first one found, in order. ``fedbus run`` puts its own
    clients' keys first, then the keys of remote clients (invited, or from ``--authorized-keys``), so that no
    remote entry can stand in for one of the run's own clients."""

    lookups: tuple[KeyLookup, ...]

    def get(self, signer_id: str, /) -> PublicKey | None:
        for lookup in self.lookups:
            key = lookup.get(signer_id)
            if key is not None:
                return key
        return None


@dataclass(frozen=True, slots=True)
class AuthorizedKeys:
    """The clients an aggregator accepts, each with its public key (the authorized-keys file, parsed)."""

    entries: tuple[tuple[str, PublicKey], ...] = ()
    _index: dict[str, PublicKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, PublicKey] = {}
        owners: dict[PublicKey, str] = {}
        for owner, key in self.entries:
            problem = _entry_problem(owner, key, index, owners)
            if problem:
                raise ValueError(problem)
            index[owner] = key
            owners[key] = owner
        object.__setattr__(self, "_index", index)

    def get(self, signer_id: str, /) -> PublicKey | None:
        return self._index.get(signer_id)

    def __contains__(self, signer_id: object) -> bool:
        return signer_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def with_key(self, owner: str, key: PublicKey) -> AuthorizedKeys:
        """A copy that also authorizes ``owner`` with ``key`` (enrollment); ``ValueError`` if ``owner`` is
        already there with another key, or the key is another client's."""
        if self._index.get(owner) == key:
            return self
        return AuthorizedKeys((*self.entries, (owner, key)))

    def text(self) -> str:
        """The file's text: one ``<id> <public key> <fingerprint>`` line per client."""
        return "".join(authorized_line(owner, key) for owner, key in self.entries)


def _entry_problem(owner: str, key: PublicKey, index: dict[str, PublicKey], owners: dict[PublicKey, str]) -> str:
    """What is wrong with adding ``owner``'s ``key`` to ``index`` (``owners``: the same, key to owner), or ''.
    Constant time per entry: a federation of thousands of clients loads in linear time."""
    if not is_valid_id(owner) or owner == AGGREGATOR:
        return f"{owner!r} is not a client id"
    if not isinstance(key, PublicKey):
        return f"the key of {owner!r} is not a PublicKey"
    if owner in index:
        return f"{owner!r} is listed twice"
    if key in owners:
        return f"{owner!r} has the same key as {owners[key]!r}: each client needs a key of its own"
    return ""


def authorized_line(owner: str, key: PublicKey) -> str:
    """One authorized-keys line (also the whole of a ``.pub`` file): ``<id> <public key> <fingerprint>``."""
    return f"{owner} {key.text()} {fingerprint(key)}\n"


def parse_key_line(line: str) -> tuple[str, PublicKey]:
    """``<id> fedbus-pk:... [comment]`` as the id and its key; ``ValueError`` saying what is wrong."""
    words = line.split()
    if len(words) < 2:
        raise ValueError(f"expected '<id> {PUBLIC_PREFIX}...'")
    if not is_valid_id(words[0]):
        raise ValueError(f"{words[0]!r} is not a fedbus id")
    return words[0], parse_public(words[1])


def parse_authorized(text: str, source: str = "") -> AuthorizedKeys:
    """Parse an authorized-keys file. Blank lines and lines starting with ``#`` are skipped; every other line
    is ``<client id> <public key>`` and may go on with a comment. ``KeyFileError`` names the first bad line."""
    entries: list[tuple[str, PublicKey]] = []
    index: dict[str, PublicKey] = {}
    owners: dict[PublicKey, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            owner, key = parse_key_line(line)
        except ValueError as exc:
            raise KeyFileError(source, f"line {number}: {exc}") from None
        problem = _entry_problem(owner, key, index, owners)
        if problem:
            raise KeyFileError(source, f"line {number}: {problem}")
        index[owner] = key
        owners[key] = owner
        entries.append((owner, key))
    return AuthorizedKeys(tuple(entries))
