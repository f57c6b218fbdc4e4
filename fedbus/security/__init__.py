"""Trusted federations: keys, signed frames, sealed bodies and join tokens (protocol v2, docs/SECURITY.md).

Modules, one concept each:

- :mod:`~fedbus.security.keys`: public keys, fingerprints, authorized keys (pure, stdlib);
- :mod:`~fedbus.security.crypto`: private keys and the primitives, the only importer of ``cryptography``;
- :mod:`~fedbus.security.signing`: :func:`sign` and :func:`verify` of the ``FB2S`` frame;
- :mod:`~fedbus.security.sealing`: :func:`seal`, :func:`unseal` of the ``FB2E`` box, and message bodies;
- :mod:`~fedbus.security.token`: join tokens and the enrollment proof (pure, stdlib);
- :mod:`~fedbus.security.keyfiles`: key files on disk (the I/O edge);
- :mod:`~fedbus.security.policy`: :class:`Security`, what a session needs to speak v2 (or not: mode ``none``);
- :mod:`~fedbus.security.errors`: :class:`WireRejected`, :class:`KeyFileError`, :class:`TokenError`.

The names below load their module when first used (PEP 562): a process that needs one part (the simulator
signs and seals; it reads no key file and no join token) does not import the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedbus.lazy import exports

if TYPE_CHECKING:
    from fedbus.security.crypto import PrivateKey, derive, generate
    from fedbus.security.errors import KeyFileError, TokenError, WireRejected
    from fedbus.security.keyfiles import Identity, Peer, keygen, load_authorized, load_private, load_public
    from fedbus.security.keys import AuthorizedKeys, KeyLookup, PublicKey, fingerprint, parse_public
    from fedbus.security.policy import DEFAULT_SECURITY, SECURITY_MODES, Security
    from fedbus.security.sealing import open_body, seal, seal_body, seal_context, unseal
    from fedbus.security.signing import Verified, is_signed, sign, verify
    from fedbus.security.token import JoinToken, decode_token, encode_token

__all__ = [
    "DEFAULT_SECURITY",
    "SECURITY_MODES",
    "AuthorizedKeys",
    "Identity",
    "JoinToken",
    "KeyFileError",
    "KeyLookup",
    "Peer",
    "PrivateKey",
    "PublicKey",
    "Security",
    "TokenError",
    "Verified",
    "WireRejected",
    "decode_token",
    "derive",
    "encode_token",
    "fingerprint",
    "generate",
    "is_signed",
    "keygen",
    "load_authorized",
    "load_private",
    "load_public",
    "open_body",
    "parse_public",
    "seal",
    "seal_body",
    "seal_context",
    "sign",
    "unseal",
    "verify",
]
if not TYPE_CHECKING:  # mypy checks the names imported above instead
    __getattr__, __dir__ = exports(__name__, globals(), {  # module -> the names it gives
        "fedbus.security.crypto": ("PrivateKey", "derive", "generate"),
        "fedbus.security.errors": ("KeyFileError", "TokenError", "WireRejected"),
        "fedbus.security.keyfiles": ("Identity", "Peer", "keygen", "load_authorized", "load_private", "load_public"),
        "fedbus.security.keys": ("AuthorizedKeys", "KeyLookup", "PublicKey", "fingerprint", "parse_public"),
        "fedbus.security.policy": ("DEFAULT_SECURITY", "SECURITY_MODES", "Security"),
        "fedbus.security.sealing": ("open_body", "seal", "seal_body", "seal_context", "unseal"),
        "fedbus.security.signing": ("Verified", "is_signed", "sign", "verify"),
        "fedbus.security.token": ("JoinToken", "decode_token", "encode_token"),
    })
