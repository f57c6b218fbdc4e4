"""The aggregator's checks of one signed delivery as a value, so that they can run ahead, elsewhere.

:class:`~fedbus.aggregator.session.AggregatorSession` verifies a client's frame and opens a sealed update body
itself (:meth:`~fedbus.security.policy.Security.authenticate`, then
:meth:`~fedbus.security.policy.Security.open_sealed`). Under load those two cost the aggregator ~200 µs per
update on one core (docs/SECURITY.md), so a driver may compute them ahead, in batches on worker processes
(:mod:`fedbus.runtime.check_pool`), and hand the session the result: a :class:`Checked`. The session then takes
the result instead of computing it; everything else it does (the order, the records, who is blamed) is the same,
and a session fed no result computes the same thing (tests/unit/test_checks.py).

:func:`check` is pure: bytes, an id and keys in, a frozen value out, no exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedbus.security.crypto import PrivateKey
from fedbus.security.errors import WireRejected
from fedbus.security.keys import PublicKey
from fedbus.security.sealing import open_body
from fedbus.security.signing import pair_key, verify


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a check failed: a :class:`~fedbus.security.errors.WireRejected` as plain data (it crosses processes)."""

    reason: str
    detail: str

    def error(self) -> WireRejected:
        return WireRejected(self.reason, self.detail)


@dataclass(frozen=True, slots=True)
class Checked:
    """What the checks of one delivery found.

    ``inner``: the v1 payload inside the frame, verified as signed by the claimed client, or why not (a forgery).
    ``opened``: for an update topic whose frame verified, the payload with its body opened (or passed through,
    where sealing is not required), or why not (the signer's doing); ``None`` for any other delivery."""

    inner: bytes | Refused
    opened: bytes | Refused | None = None
    # the signer's key it was checked with (set by the driver that asked): not part of what was found
    key: PublicKey | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Job:
    """One delivery to check: its bytes, the client whose topic it came on, that client's authorized key (looked
    up by the caller, who owns the key list), and whether it came on an update topic."""

    wire: bytes
    signer: str
    key: PublicKey | None
    update: bool


def check(job: Job, opener: PrivateKey, *, sealing_required: bool) -> Checked:
    """The aggregator's checks of ``job``: verify the frame against ``job.key`` as ``job.signer``'s, then (update
    topics only) open the body with the aggregator's key ``opener``. Never raises."""
    keys = {} if job.key is None else {job.signer: job.key}

    def pairs(signer: str, key: PublicKey) -> bytes | None:
        return pair_key(opener, key, signer, aggregator=True)

    try:
        inner = verify(job.wire, keys, signer=job.signer, pairs=pairs).payload
    except WireRejected as exc:
        return Checked(inner=Refused(exc.reason, exc.detail))
    if not job.update:
        return Checked(inner=inner)
    try:
        return Checked(inner=inner, opened=open_body(inner, opener, required=sealing_required))
    except WireRejected as exc:
        return Checked(inner=inner, opened=Refused(exc.reason, exc.detail))
