"""Join tokens: everything a client needs to join a trusted federation, in one line that ``fedbus invite`` prints.

``fedbus1:`` + base64url (RFC 4648 section 5, no padding) of the token's canonical JSON: an object with sorted
keys, no spaces, ASCII only (``json.dumps(doc, sort_keys=True, separators=(",", ":"))``)::

    v                       1
    broker                  "mqtt://host:port" or "mqtts://host:port" (no credentials in it)
    run                     the run id
    client                  the client id this token is for
    aggregator_key          the aggregator's public key, "fedbus-pk:..." (it verifies with it, seals to it)
    aggregator_fingerprint  "SHA256:..." of that key: a decoder checks that the two agree
    username, password      optional: the client's broker credentials
    enroll                  optional: a one-time enrollment secret, base64url without padding of 32 bytes
    client_key              optional: the client's own private key, minted by ``fedbus invite``: base64url without
                            padding of 64 bytes, its Ed25519 seed (32) then its X25519 secret (32)

Optional fields are left out when unset. A decoder ignores fields it does not know. Pure: stdlib only.

The enrollment secret lets the aggregator bind the client's public key on first use: the client proves it
holds the secret with :func:`enrollment_proof` over its run, id and public key, so a broker operator who sees
the request cannot swap in a key of its own (docs/SECURITY.md, "Enrollment").

A token with ``client_key`` is the client's credential itself (``fedbus invite`` minted the key pair and
authorized its public half): whoever holds the token can sign as that client. Hand it over like a password,
and over a channel the broker operator does not see.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fedbus.protocol.ids import AGGREGATOR, is_valid_id
from fedbus.security.errors import TokenError
from fedbus.security.keys import PublicKey, fingerprint, parse_public

TOKEN_PREFIX = "fedbus1:"
TOKEN_VERSION = 1
MAX_TOKEN_CHARS = 8192
SECRET_BYTES = 32
CLIENT_KEY_BYTES = 64  # Ed25519 seed || X25519 secret
BROKER_SCHEMES = ("mqtt", "mqtts")
ENROLL_DOMAIN = b"fedbus/v2 enroll\n"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")  # a URL, without spaces or control characters


class _Bad(ValueError):
    """A token field that fails its check (turned into :class:`TokenError` by :func:`decode_token`)."""

    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        super().__init__(f"{name}: {detail}")
        self.detail = detail


def b64url_encode(raw: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes | None:
    """The bytes of canonical unpadded base64url, or None."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if b64url_encode(raw) == text else None


def _check_broker(url: object) -> None:
    if not isinstance(url, str) or not _PRINTABLE.fullmatch(url):
        raise _Bad("broker", "must be a URL without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _Bad("broker", f"{url!r}: {exc}") from None
    if parts.scheme not in BROKER_SCHEMES:
        raise _Bad("broker", f"{url!r}: the scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise _Bad("broker", f"{url!r}: no host")
    if parts.username is not None or parts.password is not None:
        raise _Bad("broker", "credentials go in username and password, not in the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _Bad("broker", f"{url!r}: only scheme, host and port")
    if port == 0:
        raise _Bad("broker", f"{url!r}: port 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinToken:
    """What a client needs to join a run: where, as whom, whom to trust, and how to enroll."""

    broker: str
    run: str
    client: str
    aggregator_key: PublicKey
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    enrollment_secret: bytes | None = field(default=None, repr=False)
    # the client's private key (Ed25519 seed || X25519 secret) when the inviter minted it; None: the client has its own
    client_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_broker(self.broker)
        if not is_valid_id(self.run):
            raise _Bad("run", f"{self.run!r} is not a run id")
        if not is_valid_id(self.client) or self.client == AGGREGATOR:
            raise _Bad("client", f"{self.client!r} is not a client id")
        if not isinstance(self.aggregator_key, PublicKey):
            raise _Bad("aggregator_key", "must be a PublicKey")
        if self.username is not None and (not isinstance(self.username, str) or not self.username):
            raise _Bad("username", "must be a non-empty string when given")
        if self.password is not None and not isinstance(self.password, str):
            raise _Bad("password", "must be a string when given")
        if self.password is not None and self.username is None:
            raise _Bad("password", "MQTT 3.1.1 sends a password only with a username")
        secret = self.enrollment_secret
        if secret is not None and (type(secret) is not bytes or len(secret) != SECRET_BYTES):
            raise _Bad("enroll", f"the enrollment secret must be {SECRET_BYTES} bytes")
        key = self.client_key
        if key is not None and (type(key) is not bytes or len(key) != CLIENT_KEY_BYTES):
            raise _Bad("client_key", f"the client's private key must be {CLIENT_KEY_BYTES} bytes")

    @property
    def aggregator_fingerprint(self) -> str:
        return fingerprint(self.aggregator_key)


def new_enrollment_secret() -> bytes:
    """A fresh one-time enrollment secret (32 bytes from the OS's CSPRNG)."""
    return secrets.token_bytes(SECRET_BYTES)


def encode_token(token: JoinToken) -> str:
    """The token's text: ``fedbus1:`` + base64url of its canonical JSON."""
    document: dict[str, Any] = {
        "v": TOKEN_VERSION,
        "broker": token.broker,
        "run": token.run,
        "client": token.client,
        "aggregator_key": token.aggregator_key.text(),
        "aggregator_fingerprint": token.aggregator_fingerprint,
    }
    if token.username is not None:
        document["username"] = token.username
    if token.password is not None:
        document["password"] = token.password
    if token.enrollment_secret is not None:
        document["enroll"] = b64url_encode(token.enrollment_secret)
    if token.client_key is not None:
        document["client_key"] = b64url_encode(token.client_key)
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return TOKEN_PREFIX + b64url_encode(text.encode("ascii"))


def _document(text: object) -> dict[str, Any]:
    if not isinstance(text, str):
        raise TokenError("prefix", f"a token is text, got {type(text).__name__}")
    text = text.strip()
    if not text.startswith(TOKEN_PREFIX):
        raise TokenError("prefix", f"a join token starts with {TOKEN_PREFIX!r}")
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenError("encoding", f"longer than {MAX_TOKEN_CHARS} characters")
    raw = b64url_decode(text[len(TOKEN_PREFIX):])
    if raw is None:
        raise TokenError("encoding", "not canonical base64url after the prefix (cut or mistyped?)")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise TokenError("json", "the decoded token is not UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise TokenError("json", "the decoded token is not a JSON object")
    version = document.get("v")
    if type(version) is not int or version != TOKEN_VERSION:
        raise TokenError("version", f"token version {version!r} is not {TOKEN_VERSION}")
    return document


def _optional(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is not None and not isinstance(value, str):
        raise TokenError("field", "not a string", name)
    return value


def _required(document: dict[str, Any], name: str) -> str:
    value = _optional(document, name)
    if value is None:
        raise TokenError("field", "missing", name)
    return value


def decode_token(text: object) -> JoinToken:
    """Parse and check a join token (surrounding whitespace is ignored). Raises :class:`TokenError` and
    nothing else: ``prefix``, ``encoding``, ``json``, ``version``, ``field`` (with the field's name) or
    ``fingerprint-mismatch`` (the key and its fingerprint disagree: the token was altered)."""
    document = _document(text)
    try:
        key = parse_public(_required(document, "aggregator_key"))
    except ValueError as exc:
        raise TokenError("field", str(exc), "aggregator_key") from None
    claimed = _required(document, "aggregator_fingerprint")
    if fingerprint(key) != claimed:
        raise TokenError("fingerprint-mismatch", f"the key's fingerprint is {fingerprint(key)}, the token says "
                         f"{claimed}", "aggregator_fingerprint")
    enroll_text = _optional(document, "enroll")
    secret = None if enroll_text is None else b64url_decode(enroll_text)
    if enroll_text is not None and secret is None:
        raise TokenError("field", "not canonical base64url", "enroll")
    key_text = _optional(document, "client_key")
    client_key = None if key_text is None else b64url_decode(key_text)
    if key_text is not None and client_key is None:
        raise TokenError("field", "not canonical base64url", "client_key")
    try:
        return JoinToken(broker=_required(document, "broker"), run=_required(document, "run"),
                         client=_required(document, "client"), aggregator_key=key,
                         username=_optional(document, "username"), password=_optional(document, "password"),
                         enrollment_secret=secret, client_key=client_key)
    except _Bad as exc:
        raise TokenError("field", exc.detail, exc.name) from None


def enrollment_proof(secret: bytes, run: str, client: str, key: PublicKey) -> bytes:
    """HMAC-SHA256 with the enrollment secret over ``"fedbus/v2 enroll\\n" || run || "\\n" || client || "\\n"
    || sign || seal``: proves that whoever asks to bind ``key`` to ``client`` holds the token's secret."""
    message = ENROLL_DOMAIN + run.encode("utf-8") + b"\n" + client.encode("utf-8") + b"\n" + key.raw
    return hmac.new(secret, message, hashlib.sha256).digest()


def enrollment_matches(secret: bytes, run: str, client: str, key: PublicKey, proof: bytes) -> bool:
    """True if ``proof`` is :func:`enrollment_proof` of these (compared in constant time)."""
    return hmac.compare_digest(enrollment_proof(secret, run, client, key), proof)
