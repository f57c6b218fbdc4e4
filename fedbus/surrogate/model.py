"""The surrogate optimizer: a seeded model of how TextGrad's updates change a prompt.

The model, in full:

- **Answering.** An example is answered correctly with probability
  ``0.2 + 0.7 * coverage``, where ``coverage`` is the share of the example's skills the prompt
  covers, times a length factor: a prompt longer than ``CONTEXT_BUDGET`` characters loses
  accuracy linearly (down to 40% of it at three times the budget), standing in for a small
  model that drowns in a long system prompt; a prompt carrying one of the known hijacking or
  off-task instructions (:mod:`fedbus.faults.behaviour`) answers half as well.
- **One local step** (FedTextGrad's): answer a batch; for each wrong answer the 'loss' names
  one skill the example needs and the prompt lacks (with probability ``MISLEAD`` a random skill
  instead: critiques are sometimes wrong); the 'optimizer' appends one sentence for the most
  named skill in one of its wordings; the batch is answered again and the edit is kept only if
  batch accuracy did not drop. With a prompt budget (``max_chars``, the run's ``max_prompt_chars``)
  an edit that would make the prompt longer is dropped unevaluated: the step keeps the prompt.
- **Cost.** Each answer, each evaluation, the backward pass and the step count as one LLM call;
  tokens are estimated as characters / 4 of what each call would send and receive.

It is **not** a language model and its numbers are not benchmark results: it exists so that
federations of hundreds of clients run offline in seconds, with the dynamics (skills spread over
clients, prompts that grow under concatenation) that make aggregation interesting.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from fedbus.faults import behaviour
from fedbus.surrogate.task import SKILLS, Example

CONTEXT_BUDGET = 900
HIJACK_FACTOR = 0.5
MISLEAD = 0.1
_ANSWER_CHARS = 240
_QUESTION_CHARS = 160


@dataclass(frozen=True, slots=True, kw_only=True)
class StepCost:
    """LLM calls and estimated tokens spent."""

    llm_calls: int = 0
    tokens: int = 0

    def __add__(self, other: StepCost) -> StepCost:
        return StepCost(llm_calls=self.llm_calls + other.llm_calls, tokens=self.tokens + other.tokens)


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalResult:
    """What ``optimize`` did."""

    prompt: str
    steps: int
    accepted_steps: int
    batch_acc_before: float
    batch_acc_after: float
    cost: StepCost


@functools.lru_cache(maxsize=1024)  # a round's clients start from one prompt, and their edits repeat
def covered_skills(prompt: str) -> frozenset[str]:
    """The skills whose instruction sentences appear in ``prompt``."""
    text = prompt.lower()
    return frozenset(s.name for s in SKILLS if any(w.lower() in text for w in s.wordings))


def length_factor(prompt: str) -> float:
    """1.0 up to the context budget, falling linearly to 0.4 at three times the budget."""
    over = max(0, len(prompt) - CONTEXT_BUDGET)
    return max(0.4, 1.0 - 0.3 * over / CONTEXT_BUDGET)


def prompt_factor(prompt: str) -> float:
    """The length factor, halved when the prompt carries a known hijacking or off-task instruction."""
    return length_factor(prompt) * (HIJACK_FACTOR if behaviour.is_hijack(prompt) else 1.0)


def p_correct(prompt: str, example: Example, covered: frozenset[str] | None = None) -> float:
    """Probability that ``prompt`` makes the model answer ``example`` correctly."""
    have = covered_skills(prompt) if covered is None else covered
    coverage = len(example.skills & have) / len(example.skills)
    return (0.2 + 0.7 * coverage) * prompt_factor(prompt)


def _answer(prompt: str, batch: Sequence[Example], rng: random.Random) -> list[bool]:
    have = covered_skills(prompt)
    factor = prompt_factor(prompt)
    return [rng.random() < (0.2 + 0.7 * len(e.skills & have) / len(e.skills)) * factor for e in batch]


def _cost(prompt: str, calls: int) -> StepCost:
    return StepCost(llm_calls=calls, tokens=calls * (len(prompt) + _QUESTION_CHARS + _ANSWER_CHARS) // 4)


def accuracy(prompt: str, examples: Sequence[Example], rng: random.Random) -> float:
    """Share of ``examples`` answered correctly in one seeded draw."""
    if not examples:
        return 0.0
    return sum(_answer(prompt, examples, rng)) / len(examples)


def _critique(prompt: str, batch: Sequence[Example], correct: Sequence[bool], rng: random.Random) -> str | None:
    have = covered_skills(prompt)
    named: Counter[str] = Counter()
    for example, ok in zip(batch, correct, strict=True):
        if ok:
            continue
        if rng.random() < MISLEAD:
            named[rng.choice(SKILLS).name] += 1
            continue
        missing = sorted(example.skills - have)
        if missing:
            named[rng.choice(missing)] += 1
    if not named:
        return None
    top = max(named.values())
    return rng.choice(sorted(n for n, c in named.items() if c == top))


def local_step(prompt: str, batch: Sequence[Example], rng: random.Random, *,
               max_chars: int | None = None) -> tuple[str, bool, float, float, StepCost]:
    """One FedTextGrad step on ``batch``: (prompt after, kept?, acc before, acc after, cost). An edit that would
    make the prompt longer than ``max_chars`` is not kept (nor evaluated: only the step's call is paid)."""
    n = len(batch)
    before = _answer(prompt, batch, rng)
    cost = _cost(prompt, 2 * n + 1)  # answers, evaluations, backward
    acc_before = sum(before) / n
    skill = _critique(prompt, batch, before, rng)
    if skill is None:
        return prompt, False, acc_before, acc_before, cost
    wording = rng.choice(next(s for s in SKILLS if s.name == skill).wordings)
    candidate = f"{prompt.rstrip()} {wording}"
    if max_chars is not None and len(candidate) > max_chars:
        return prompt, False, acc_before, acc_before, cost + _cost(candidate, 1)
    after = _answer(candidate, batch, rng)
    cost = cost + _cost(candidate, 1 + 2 * n)  # step, then answers and evaluations again
    acc_after = sum(after) / n
    if acc_after >= acc_before:
        return candidate, True, acc_before, acc_after, cost
    return prompt, False, acc_before, acc_before, cost


def optimize(prompt: str, shard: Sequence[Example], steps: int, batch_size: int, rng: random.Random, *,
             max_chars: int | None = None) -> LocalResult:
    """``steps`` local steps on batches drawn from ``shard``, keeping no edit past ``max_chars`` characters."""
    if not shard:
        raise ValueError("empty shard")
    current = prompt
    accepted = 0
    first_acc: float | None = None
    last_acc = 0.0
    total = StepCost()
    for _ in range(steps):
        batch = rng.sample(list(shard), min(batch_size, len(shard)))
        current, kept, acc_before, acc_after, cost = local_step(current, batch, rng, max_chars=max_chars)
        accepted += kept
        total = total + cost
        first_acc = acc_before if first_acc is None else first_acc
        last_acc = acc_after
    return LocalResult(prompt=current, steps=steps, accepted_steps=accepted,
                       batch_acc_before=first_acc or 0.0, batch_acc_after=last_acc, cost=total)
