"""What the aggregator core asks the runtime to do, and the records it produces."""

from __future__ import annotations

from dataclasses import dataclass

from fedbus.protocol.messages import Message, UpdateStats


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """An update (or something on an update topic) that did not enter an aggregate, and why.

    ``kind`` is 'failure' for a client's failure report (recorded as 'client-failed' when it answered the
    client's task, else refused by a sender check), 'update' for everything else."""

    client: str | None
    msg_id: str | None
    round: int | None
    reason: str
    detail: str = ""
    at: float = 0.0
    kind: str = "update"


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted:
    """An update that entered (or will enter) round ``round``'s aggregate."""

    client: str
    msg_id: str
    round: int
    base_version: int
    prompt: str
    stats: UpdateStats
    at: float
    staleness: int = 0
    weight: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundResult:
    """Everything that happened in one round."""

    round: int
    status: str  # 'aggregated' | 'no-quorum' | 'reduce-failed'
    version_before: int
    version_after: int
    selected: tuple[str, ...]
    accepted: tuple[Accepted, ...]
    rejected: tuple[Rejection, ...]
    dropped: tuple[str, ...]
    missing: tuple[str, ...]
    opened_at: float
    closed_at: float
    prompt: str
    close_reason: str  # 'all-answered' | 'target-reached' | 'deadline' | 'all-gone' (nobody answered, all left)
    aggregate_chars: int = 0  # the aggregate's length before the cut at max_prompt_chars (0: no aggregate)

    @property
    def cut_chars(self) -> int:
        """How many characters of the aggregate the cut at ``max_prompt_chars`` dropped (0: none)."""
        return max(0, self.aggregate_chars - len(self.prompt)) if self.status == "aggregated" else 0

    @property
    def duration_s(self) -> float:
        return self.closed_at - self.opened_at


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish:
    """Send ``message`` on ``topic`` (QoS 1)."""

    topic: str
    message: Message
    retain: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ArmTimer:
    """Feed ``TimerFired`` at time ``at`` (or later)."""

    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Reduce:
    """Merge the accepted prompts of ``round`` with strategy ``strategy``; answer with ``Reduced``."""

    round: int
    strategy: str
    current_prompt: str
    prompts: tuple[tuple[str, str], ...]  # (client, prompt), sorted by client
    max_chars: int
    weights: tuple[float, ...] = ()  # buffered/async: one staleness weight per prompt; empty in sync mode


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundOpened:
    """A round started with these participants."""

    round: int
    version: int
    selected: tuple[str, ...]
    live: int
    opened_at: float
    deadline: float

    @property
    def deadline_s(self) -> float:
        """How long the round (or, in buffered/async mode, each task) may take."""
        return self.deadline - self.opened_at


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateAccepted:
    """A decision, for the event log."""

    accepted: Accepted


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateRejected:
    """A decision, for the event log."""

    rejection: Rejection


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundClosed:
    """A round ended; ``result`` says how."""

    result: RoundResult


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished:
    """The run ended: ``status`` is 'completed' or 'aborted'."""

    status: str
    reason: str
    rounds_closed: int
    version: int
    prompt: str
    leftover_rejections: tuple[Rejection, ...]


Effect = (Publish | ArmTimer | Reduce | RoundOpened | UpdateAccepted | UpdateRejected | RoundClosed
          | RunFinished)
