"""The messages of the fedbus protocol, as frozen values checked at construction.

Only :mod:`fedbus.protocol.codec` knows how they look on the wire; see docs/PROTOCOL.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fedbus.protocol.ids import AGGREGATOR, check_id

SCHEMA_VERSION = 1
PresenceStatus = Literal["online", "offline"]
GlobalStatus = Literal["waiting", "running", "finished"]
ReceiptOutcome = Literal["accepted", "rejected"]
PRESENCE_STATUSES = ("online", "offline")
GLOBAL_STATUSES = ("waiting", "running", "finished")
RECEIPT_OUTCOMES = ("accepted", "rejected")
# The run's limits when a message does not announce them (an aggregator older than these fields).
DEFAULT_MAX_PROMPT_CHARS = 20_000
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
MAX_REASON_CHARS = 64  # receipt.reason, failure.error_type
MAX_DETAIL_CHARS = 300  # receipt.detail, failure.reason


# Integers beyond what a double holds exactly are no counter, size or time a peer means: JSON lets a sender write
# a 400-digit one, which math.isfinite() cannot even convert (OverflowError, not ValueError).
MAX_INT = 2**53


# These run for every decoded message: exact type checks (``type(x) is int`` also excludes bool).
def _check_int(value: object, what: str, minimum: int = 0) -> None:
    if type(value) is not int or not minimum <= value <= MAX_INT:
        raise ValueError(f"{what} must be an integer within [{minimum}, 2**53], got {_shown(value)}")


def _check_number(value: object, what: str, lo: float | None = None, hi: float | None = None) -> None:
    kind = type(value)
    if kind is int:
        if not -MAX_INT <= value <= MAX_INT:  # type: ignore[operator]
            raise ValueError(f"{what} must be a finite number within +-2**53, got {_shown(value)}")
    elif kind is not float or not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError(f"{what} must be a finite number, got {_shown(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):  # type: ignore[operator]
        raise ValueError(f"{what} must be within [{lo}, {hi}], got {value!r}")


def _shown(value: object) -> str:
    """``value`` for an error message, cut short: a hostile peer's 400-digit integer is not echoed whole (and an
    int past 4,300 digits cannot be turned into text at all)."""
    if type(value) is int and not -MAX_INT <= value <= MAX_INT:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _check_str(value: object, what: str, max_chars: int | None = None) -> None:
    if type(value) is not str:
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if max_chars is not None and len(value) > max_chars:
        raise ValueError(f"{what} must have at most {max_chars} characters, got {len(value)}")


def _check_limits(max_prompt_chars: object, max_message_bytes: object) -> None:
    _check_int(max_prompt_chars, "max_prompt_chars", 1)
    _check_int(max_message_bytes, "max_message_bytes", 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """Fields every message carries."""

    run: str
    round: int
    client: str
    msg_id: str
    sent: float

    def _check_envelope(self) -> None:
        check_id(self.run, "run id")
        check_id(self.client, "client id")
        _check_int(self.round, "round")
        _check_str(self.msg_id, "msg_id")
        if not 0 < len(self.msg_id) <= 128:
            raise ValueError("msg_id must have 1-128 characters")
        _check_number(self.sent, "sent")


@dataclass(frozen=True, slots=True, kw_only=True)
class DataSpec:
    """How a client builds its private data: which task (generated, or read from a file), which seed, how many shards.

    ``seed`` is the run's seed (clients sample their batches with it); ``data_seed`` generates and shuffles the
    data (None: ``seed``). ``sources``: ``task=path`` lines naming the file each sourced task is read from (every
    client reads the same path), ``split``: the rule that cuts those files (None: ``textgrad``). The three are
    None when a sender predates them."""

    task: str
    seed: int
    num_shards: int
    train_size: int
    val_size: int
    test_size: int
    partition: str = "iid"
    data_seed: int | None = None
    sources: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        _check_str(self.task, "task")
        _check_str(self.partition, "partition")
        _check_int(self.seed, "seed")
        _check_int(self.num_shards, "num_shards", 1)
        _check_int(self.train_size, "train_size", 1)
        _check_int(self.val_size, "val_size", 1)
        _check_int(self.test_size, "test_size", 1)
        if self.data_seed is not None:
            _check_int(self.data_seed, "data_seed")
        if self.sources is not None:
            _check_str(self.sources, "sources")
        if self.split is not None:
            _check_str(self.split, "split")

    @property
    def generation_seed(self) -> int:
        """The seed the data is generated and shuffled with: ``data_seed``, else the run's seed."""
        return self.seed if self.data_seed is None else self.data_seed


@dataclass(frozen=True, slots=True, kw_only=True)
class Presence(Envelope):
    """A client (or the aggregator) is online or offline. Retained; the Last Will says offline."""

    status: PresenceStatus
    engine: str = ""

    def __post_init__(self) -> None:
        self._check_envelope()
        if self.status not in PRESENCE_STATUSES:
            raise ValueError(f"status must be one of {PRESENCE_STATUSES}, got {self.status!r}")
        _check_str(self.engine, "engine")


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalState(Envelope):
    """The federation's current prompt and round. Retained, so a late joiner sees it at once.

    ``max_prompt_chars`` and ``max_message_bytes`` announce the run's limits (the protocol's defaults when
    a sender does not say)."""

    version: int
    prompt: str
    status: GlobalStatus
    engine: str
    data: DataSpec
    rounds: int
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        self._check_envelope()
        if self.client != AGGREGATOR:
            raise ValueError(f"global state must come from {AGGREGATOR!r}")
        _check_int(self.version, "version")
        _check_str(self.prompt, "prompt")
        if self.status not in GLOBAL_STATUSES:
            raise ValueError(f"status must be one of {GLOBAL_STATUSES}, got {self.status!r}")
        _check_str(self.engine, "engine")
        _check_int(self.rounds, "rounds")
        if not isinstance(self.data, DataSpec):
            raise ValueError("data must be a DataSpec")
        _check_limits(self.max_prompt_chars, self.max_message_bytes)


@dataclass(frozen=True, slots=True, kw_only=True)
class Task(Envelope):
    """The aggregator asks one client (``client``) to optimize from ``prompt`` for ``round``, answering with
    an update of at most ``max_prompt_chars`` characters in a message of at most ``max_message_bytes``."""

    version: int
    prompt: str
    local_steps: int
    batch_size: int
    deadline_s: float
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        self._check_envelope()
        _check_int(self.version, "version")
        _check_str(self.prompt, "prompt")
        _check_int(self.local_steps, "local_steps", 1)
        _check_int(self.batch_size, "batch_size", 1)
        _check_number(self.deadline_s, "deadline_s", 0.0)
        _check_limits(self.max_prompt_chars, self.max_message_bytes)


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateStats:
    """What a client's local optimization did."""

    steps: int
    accepted_steps: int
    batch_acc_before: float
    batch_acc_after: float
    llm_calls: int
    tokens: int
    duration_s: float

    def __post_init__(self) -> None:
        _check_int(self.steps, "steps")
        _check_int(self.accepted_steps, "accepted_steps")
        _check_number(self.batch_acc_before, "batch_acc_before", 0.0, 1.0)
        _check_number(self.batch_acc_after, "batch_acc_after", 0.0, 1.0)
        _check_int(self.llm_calls, "llm_calls")
        _check_int(self.tokens, "tokens")
        _check_number(self.duration_s, "duration_s", 0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Update(Envelope):
    """A client's optimized prompt for ``round``, started from global ``base_version``. Never retained."""

    base_version: int
    prompt: str
    stats: UpdateStats

    def __post_init__(self) -> None:
        self._check_envelope()
        _check_int(self.base_version, "base_version")
        _check_str(self.prompt, "prompt")
        if not isinstance(self.stats, UpdateStats):
            raise ValueError("stats must be UpdateStats")


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure(Envelope):
    """A client could not do the task of ``round`` (its optimizer failed): its answer instead of an update.

    Sent on the client's update topic; never enters an aggregate. ``base_version`` is the task's version."""

    base_version: int
    reason: str
    error_type: str

    def __post_init__(self) -> None:
        self._check_envelope()
        _check_int(self.base_version, "base_version")
        _check_str(self.reason, "reason", MAX_DETAIL_CHARS)
        _check_str(self.error_type, "error_type", MAX_REASON_CHARS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt(Envelope):
    """The aggregator tells one client (``client``) what became of its update ``update_id`` of ``round``:
    ``accepted`` (``reason`` empty) or ``rejected`` for ``reason`` (a rejection code), ``detail`` saying more."""

    update_id: str
    outcome: ReceiptOutcome
    reason: str
    detail: str

    def __post_init__(self) -> None:
        self._check_envelope()
        _check_str(self.update_id, "update_id")
        if not 0 < len(self.update_id) <= 128:
            raise ValueError("update_id must have 1-128 characters")
        if self.outcome not in RECEIPT_OUTCOMES:
            raise ValueError(f"outcome must be one of {RECEIPT_OUTCOMES}, got {self.outcome!r}")
        _check_str(self.reason, "reason", MAX_REASON_CHARS)
        _check_str(self.detail, "detail", MAX_DETAIL_CHARS)
        if (self.outcome == "accepted") != (self.reason == ""):
            raise ValueError("reason must be empty for an accepted update and name the rejection otherwise")


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics(Envelope):
    """Named numbers a client or the aggregator reports (accuracy, tokens, ...)."""

    values: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        self._check_envelope()
        if not isinstance(self.values, tuple):
            raise ValueError("values must be a tuple of (name, number) pairs")
        for pair in self.values:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise ValueError("values must be a tuple of (name, number) pairs")
            _check_str(pair[0], "metric name")
            _check_number(pair[1], f"metric {pair[0]!r}")
        if len({name for name, _ in self.values}) != len(self.values):
            raise ValueError("metric names must be unique")


Message = Presence | GlobalState | Task | Update | Metrics | Receipt | Failure

KINDS: dict[str, type[Message]] = {
    "presence": Presence,
    "global": GlobalState,
    "task": Task,
    "update": Update,
    "metrics": Metrics,
    "receipt": Receipt,
    "failure": Failure,
}
KIND_OF: dict[type, str] = {cls: kind for kind, cls in KINDS.items()}
