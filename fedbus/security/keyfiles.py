"""Key files on disk: generate, load, and the aggregator's authorized-keys file. The I/O edge of the package.

A private key file (mode 0600, refused when group or others may read it, as OpenSSH does) is one JSON object::

    {"type": "fedbus-private-key", "v": 1, "id": "<owner id>",
     "ed25519": "<base64 of the 32-byte Ed25519 seed>", "x25519": "<base64 of the 32-byte X25519 secret>",
     "public": "fedbus-pk:..."}

``public`` repeats the public key, checked on load (a damaged file is refused, not silently a new identity).
Next to it, ``<file>.pub`` holds one authorized-keys line, ``<owner id> fedbus-pk:... SHA256:...``, so that
``cat client-0.key.pub >> authorized_keys`` authorizes a client. See :mod:`fedbus.security.keys`.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbus.protocol.ids import is_valid_id
from fedbus.security import crypto
from fedbus.security.crypto import PrivateKey
from fedbus.security.errors import KeyFileError
from fedbus.security.keys import (
    KEY_BYTES,
    AuthorizedKeys,
    PublicKey,
    authorized_line,
    b64decode_exact,
    b64encode,
    parse_authorized,
    parse_key_line,
)

PRIVATE_TYPE = "fedbus-private-key"
KEYFILE_VERSION = 1
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


@dataclass(frozen=True, slots=True)
class Identity:
    """A private key and whose it is (the id it signs as)."""

    owner: str
    key: PrivateKey

    @property
    def public(self) -> PublicKey:
        return self.key.public


@dataclass(frozen=True, slots=True)
class Peer:
    """A public key and whose it is."""

    owner: str
    key: PublicKey


def public_path(path: Path) -> Path:
    """Where the public half of the key file ``path`` lives: ``<path>.pub``."""
    return path.with_name(path.name + ".pub")


# ---------------------------------------------------------------------------------------------- pure text forms
def private_text(identity: Identity) -> str:
    """The private key file's text."""
    document = {"type": PRIVATE_TYPE, "v": KEYFILE_VERSION, "id": identity.owner,
                "ed25519": b64encode(identity.key.sign_seed), "x25519": b64encode(identity.key.seal_secret),
                "public": identity.public.text()}
    return json.dumps(document, indent=2) + "\n"


def parse_private(text: str, source: str = "") -> Identity:
    """An identity from a private key file's text; :class:`KeyFileError` saying what is wrong."""
    try:
        document: Any = json.loads(text)
    except (ValueError, RecursionError):
        raise KeyFileError(source, "not a fedbus private key file (not JSON)") from None
    if not isinstance(document, dict) or document.get("type") != PRIVATE_TYPE:
        raise KeyFileError(source, f"not a fedbus private key file (no \"type\": \"{PRIVATE_TYPE}\")")
    if document.get("v") != KEYFILE_VERSION or type(document.get("v")) is not int:
        raise KeyFileError(source, f"key file version {document.get('v')!r} is not {KEYFILE_VERSION}")
    owner = document.get("id")
    if not isinstance(owner, str) or not is_valid_id(owner):
        raise KeyFileError(source, f"id {owner!r} is not a fedbus id")
    secrets: list[bytes] = []
    for name in ("ed25519", "x25519"):
        value = document.get(name)
        raw = b64decode_exact(value, KEY_BYTES) if isinstance(value, str) else None
        if raw is None:
            raise KeyFileError(source, f"{name} must be the base64 of 32 bytes")
        secrets.append(raw)
    key = PrivateKey(secrets[0], secrets[1])
    stated = document.get("public")
    if stated is not None and stated != key.public.text():
        raise KeyFileError(source, "the public key written in the file does not belong to its secrets (damaged?)")
    return Identity(owner=owner, key=key)


# ---------------------------------------------------------------------------------------------- files
def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; set exactly these
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def keygen(path: Path, owner: str, key: PrivateKey | None = None) -> Identity:
    """Create a key pair for ``owner``: the private key file ``path`` (mode 0600) and ``<path>.pub``.

    ``key`` is for tests (a fixed key); left out, a fresh one is generated. Refuses to overwrite either file
    (rotate by generating a new file, then switching to it: docs/SECURITY.md)."""
    if not is_valid_id(owner):
        raise KeyFileError(str(path), f"{owner!r} is not a fedbus id")
    identity = Identity(owner=owner, key=crypto.generate() if key is None else key)
    pub = public_path(path)
    for target in (path, pub):
        if target.exists():
            raise KeyFileError(str(target), "already exists: not overwriting a key")
    try:
        _write_new(path, private_text(identity), PRIVATE_MODE)
        _write_new(pub, authorized_line(owner, identity.public), PUBLIC_MODE)
    except OSError as exc:
        raise KeyFileError(str(path), exc.strerror or str(exc)) from None
    return identity


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(str(path), getattr(exc, "strerror", None) or str(exc)) from None


def load_private(path: Path) -> Identity:
    """Read a private key file; refuses one that group or others may read or write."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise KeyFileError(str(path), exc.strerror or str(exc)) from None
    if mode & 0o077:
        raise KeyFileError(str(path), f"permissions {mode:04o} are too open for a private key: chmod 600 it")
    return parse_private(_read(path), str(path))


def load_public(path: Path) -> Peer:
    """Read a public key file (``.pub``: one ``<id> fedbus-pk:... [comment]`` line, as in authorized keys)."""
    lines = [line for line in _read(path).splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1:
        raise KeyFileError(str(path), "a public key file holds exactly one '<id> fedbus-pk:...' line")
    try:
        owner, key = parse_key_line(lines[0])
    except ValueError as exc:
        raise KeyFileError(str(path), str(exc)) from None
    return Peer(owner=owner, key=key)


def load_authorized(path: Path) -> AuthorizedKeys:
    """Read the aggregator's authorized-keys file (``<client id> fedbus-pk:... [comment]`` per line)."""
    return parse_authorized(_read(path), str(path))


def save_authorized(path: Path, keys: AuthorizedKeys) -> None:
    """Write the authorized-keys file whole, atomically (a new file renamed over the old one)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.unlink(missing_ok=True)
        _write_new(temporary, keys.text(), PUBLIC_MODE)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise KeyFileError(str(path), exc.strerror or str(exc)) from None
