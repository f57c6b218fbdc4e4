"""The errors of the security layer, each carrying a short machine-readable ``reason``.

They extend fedbus's one hierarchy (:mod:`fedbus.errors`): a wire that fails verification or unsealing is a
:class:`~fedbus.errors.RemoteProtocolError` (a peer or the network sent it: log it, drop it, go on), so code
that already catches the codec's ``MessageRejected`` catches these too. A bad key file or join token is the
user's input, reported once at the door.
"""

from __future__ import annotations

from fedbus.errors import FedbusError, RemoteProtocolError

# Why a wire was rejected (WireRejected.reason), in the order the checks run. docs/SECURITY.md lists them.
WIRE_REASONS = ("unsigned", "malformed", "wrong-signer", "unknown-signer", "bad-signature", "not-sealed", "bad-seal")
# Why a join token was refused (TokenError.reason).
TOKEN_REASONS = ("prefix", "encoding", "json", "version", "field", "fingerprint-mismatch")


class WireRejected(RemoteProtocolError):
    """A signed or sealed wire that is not acceptable. ``reason`` is one of :data:`WIRE_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class KeyFileError(FedbusError):
    """A key file or authorized-keys file that cannot be used, with the path and what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class TokenError(FedbusError):
    """A join token that cannot be used. ``reason`` is one of :data:`TOKEN_REASONS`; ``field`` names the
    token field at fault (empty when the token as a whole is)."""

    def __init__(self, reason: str, detail: str, field: str = "") -> None:
        self.reason = reason
        self.field = field
        self.detail = detail
        where = f" ({field})" if field else ""
        super().__init__(f"invalid join token{where}: {reason}: {detail}")
