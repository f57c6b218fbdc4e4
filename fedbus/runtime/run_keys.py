"""A run's key secret: every party's protocol-v2 keys of ``fedbus run`` derive from it.

32 random bytes, kept in RUN_DIR/keys/run.secret (0600, in a 0700 folder) as privately as a key file:
``--resume`` needs the same secret, because the journal replays signed and sealed frames. The
aggregator's public key goes next to it (aggregator.pub), for the invitations remote clients join with.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedbus.runtime.journal import ResumeError
from fedbus.security.crypto import random_bytes

KEYS = "keys"
SECRET = "run.secret"


def run_secret(run_dir: Path, *, resume: bool) -> bytes:
    """The run's secret: read back when resuming, else drawn fresh and written."""
    path = run_dir / KEYS / SECRET
    if resume:
        try:
            return bytes.fromhex(path.read_text(encoding="ascii").strip())
        except (OSError, ValueError) as exc:
            raise ResumeError(f"--resume {run_dir}: its key secret {path} cannot be read ({exc}); the journal's "
                              "signed messages cannot be replayed without it") from exc
    secret = random_bytes(32)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secret.hex() + "\n")
    return secret
