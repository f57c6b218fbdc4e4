"""From a run's ``DataSpec`` to each client's private data and the evaluation sets.

``DataSpec.task`` names one task, or several joined by ``+`` (for example
``object_counting+multistep_arithmetic_two``); a task is generated from ``DataSpec.generation_seed``
unless ``DataSpec.sources`` names its file (read and split by :mod:`fedbus.tasks.sources`; the only
IO here). ``DataSpec.partition`` is ``iid``,
``dirichlet`` or ``dirichlet:ALPHA`` (non-IID by category; default alpha 1.0), or ``per-task``
(client ``i`` gets task ``i mod n``: the paper's heterogeneous setting). Every client and the
aggregator derive the same data from the same spec, so nothing but the spec crosses the bus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fedbus.protocol.messages import DataSpec
from fedbus.tasks.example import Example, Splits
from fedbus.tasks.generate import TASK_NAMES, generate_splits
from fedbus.tasks.partition import dirichlet_partition, iid_partition, per_task_partition
from fedbus.tasks.sources import DEFAULT_SPLIT, SOURCE_ONLY_TASKS, decode_sources, load_source

PARTITIONS = ("iid", "dirichlet", "per-task")
DEFAULT_ALPHA = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionSpec:
    kind: str
    alpha: float = DEFAULT_ALPHA


def task_names(task: str) -> tuple[str, ...]:
    """The tasks a ``DataSpec.task`` names; ``ValueError`` for an unknown one."""
    names = tuple(part.strip() for part in task.split("+"))
    known = (*TASK_NAMES, *SOURCE_ONLY_TASKS)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown task {'+'.join(unknown) or task!r}; known: {', '.join(known)} "
                         "(several joined by '+')")
    return names


def parse_partition(text: str) -> PartitionSpec:
    """``iid`` | ``dirichlet`` | ``dirichlet:0.3`` | ``per-task``; ``ValueError`` otherwise."""
    kind, _, arg = text.partition(":")
    if kind not in PARTITIONS or (arg and kind != "dirichlet"):
        raise ValueError(f"unknown partition {text!r}; known: iid, dirichlet[:ALPHA], per-task")
    if not arg:
        return PartitionSpec(kind=kind)
    try:
        alpha = float(arg)
    except ValueError:
        raise ValueError(f"partition {text!r}: ALPHA must be a number") from None
    if not alpha > 0:
        raise ValueError(f"partition {text!r}: ALPHA must be > 0")
    return PartitionSpec(kind=kind, alpha=alpha)


def task_splits(spec: DataSpec) -> dict[str, Splits]:
    """Each named task's train/val/test: read from its source file, or generated from the data seed.

    Raises ``DatasetError`` for a source file that cannot be read as its task, ``ValueError`` for a task
    that has no generator and no source (``gsm8k``)."""
    sources = decode_sources(spec.sources)
    out: dict[str, Splits] = {}
    for name in task_names(spec.task):
        if name in sources:
            out[name] = load_source(name, sources[name], spec.split or DEFAULT_SPLIT)
        elif name in SOURCE_ONLY_TASKS:
            raise ValueError(f"task {name} has no generator: give its data file as task.source")
        else:
            out[name] = generate_splits(name, spec.generation_seed, spec.train_size, spec.val_size, spec.test_size)
    return out


def shard_tasks(spec: DataSpec, shard: int) -> tuple[str, ...]:
    """The tasks whose test sets judge client ``shard``: its own task under ``per-task``, else all of them."""
    names = task_names(spec.task)
    if parse_partition(spec.partition).kind == "per-task":
        return (names[shard % len(names)],)
    return names


def client_mean_accuracy(spec: DataSpec, per_task: dict[str, float], questions: dict[str, int]) -> float:
    """The mean over the run's clients of each one's accuracy on its own test set (a client judged on several
    tasks scores their pooled questions), from each task's accuracy and number of test questions."""
    scores = []
    for shard in range(max(spec.num_shards, 1)):
        names = shard_tasks(spec, shard)
        asked = sum(questions.get(n, 0) for n in names)
        right = sum(per_task.get(n, 0.0) * questions.get(n, 0) for n in names)
        scores.append(right / asked if asked else 0.0)
    return sum(scores) / len(scores)


def client_data(spec: DataSpec, shard: int) -> Splits:
    """Client ``shard``'s data: its part of the training set, and the validation and test sets it is judged on."""
    if not 0 <= shard < spec.num_shards:
        raise ValueError(f"shard {shard} is outside 0..{spec.num_shards - 1}")
    tasks = task_splits(spec)
    partition = parse_partition(spec.partition)
    if partition.kind == "per-task":
        return per_task_partition(list(tasks.values()), max(spec.num_shards, len(tasks)))[shard]
    train: tuple[Example, ...] = tuple(e for s in tasks.values() for e in s.train)
    val = tuple(e for s in tasks.values() for e in s.val)
    test = tuple(e for s in tasks.values() for e in s.test)
    rng = random.Random(f"partition/{spec.generation_seed}/{spec.task}/{spec.partition}")
    if partition.kind == "iid":
        parts = iid_partition(train, spec.num_shards, rng)
    else:
        parts = dirichlet_partition(train, spec.num_shards, rng, partition.alpha)
    return Splits(train=parts[shard], val=val, test=test)
