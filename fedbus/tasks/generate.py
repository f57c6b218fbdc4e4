"""Train/val/test splits of a generated task, deterministic in a seed."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from types import MappingProxyType

from fedbus.tasks import arithmetic, object_counting, word_problems
from fedbus.tasks.example import Example, Splits

Generator = Callable[[random.Random], Example]

GENERATORS: Mapping[str, Generator] = MappingProxyType({
    object_counting.TASK: object_counting.generate_object_counting,
    arithmetic.TASK: arithmetic.generate_arithmetic,
    word_problems.TASK: word_problems.generate_word_problems,  # generated GSM8K-style problems, not GSM8K
})
TASK_NAMES: tuple[str, ...] = tuple(GENERATORS)

_TRIES_PER_EXAMPLE = 50  # a draw repeats an earlier question rarely; give up long before looping forever


def draw_distinct(generate: Generator, rng: random.Random, count: int) -> tuple[Example, ...]:
    """``count`` examples with pairwise different inputs, in the order drawn.

    Raises ``ValueError`` when the generator keeps repeating itself (its space is too small).
    """
    seen: set[str] = set()
    examples: list[Example] = []
    for _ in range(max(1, count) * _TRIES_PER_EXAMPLE):
        if len(examples) == count:
            break
        example = generate(rng)
        if example.input not in seen:
            seen.add(example.input)
            examples.append(example)
    if len(examples) < count:
        raise ValueError(f"could only draw {len(examples)} distinct questions, {count} asked")
    return tuple(examples)


def generate_splits(task: str, seed: int, train: int, val: int, test: int) -> Splits:
    """``train + val + test`` distinct questions of ``task``, the same ones for the same seed.

    No input occurs twice, so no question is in two splits. The task name is part of the seed,
    so two tasks with one seed do not share a random stream.
    """
    if task not in GENERATORS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_NAMES)}")
    for name, size in (("train", train), ("val", val), ("test", test)):
        if type(size) is not int or size < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {size!r}")
    if type(seed) is not int:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    examples = draw_distinct(GENERATORS[task], random.Random(f"{task}:{seed}"), train + val + test)
    return Splits(
        train=examples[:train],
        val=examples[train : train + val],
        test=examples[train + val :],
    )
