"""The surrogate task 'surrogate-skills': generated questions that each need a few skills.

Modelled on BIG-Bench Hard object counting. A question needs one to three *skills* (count
every item, turn number words into digits, ignore distractors, ...). A prompt *covers* a skill
when it contains one of the skill's instruction sentences. Nothing here calls an LLM: this is
a seeded model used by the surrogate optimizer, not a benchmark.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from fedbus.protocol.messages import DataSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class Skill:
    """One thing a prompt can teach, in several wordings an optimizer might write."""

    name: str
    wordings: tuple[str, ...]


SKILLS: tuple[Skill, ...] = (
    Skill(name="enumerate", wordings=(
        "List every item mentioned in the question before counting.",
        "First write down each item in the question, one per line.",
        "Start by enumerating all the objects the question names.")),
    Skill(name="number-words", wordings=(
        "Convert number words such as 'two' or 'three' into digits before adding.",
        "Treat words like 'a', 'an', 'two' and 'five' as quantities and write them as numbers.",
        "Read each quantity word carefully and turn it into a digit.")),
    Skill(name="category", wordings=(
        "Count only the items that belong to the category the question asks about.",
        "Check that each item really belongs to the requested category.",
        "Decide for each item whether it is in the asked category before counting it.")),
    Skill(name="distractors", wordings=(
        "Ignore items from other categories; they are distractors.",
        "Do not count distractor items that are outside the requested category.",
        "Leave out any object that does not match what is being counted.")),
    Skill(name="stepwise-sum", wordings=(
        "Add the counts step by step and keep a running total.",
        "Sum the quantities one at a time, showing the running total.",
        "Accumulate the total incrementally rather than all at once.")),
    Skill(name="double-check", wordings=(
        "Double-check the total against the list before answering.",
        "Verify the final count by recounting the listed items.",
        "Before answering, recount to confirm the total.")),
    Skill(name="answer-format", wordings=(
        "The last line of your answer must be 'Answer: <number>' with digits only.",
        "Finish with a single line 'Answer: N' where N is the number.",
        "Always end with 'Answer:' followed by the numeric result.")),
    Skill(name="plurals", wordings=(
        "A plural noun without a number word still means at least two items only when stated; do not guess.",
        "Do not assume a quantity that the question does not state.",
        "Only use quantities that are written in the question.")),
)
SKILL_NAMES: tuple[str, ...] = tuple(s.name for s in SKILLS)
_CATEGORIES = ("fruits", "vegetables", "animals", "musical instruments", "objects")


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    """One generated question and the skills answering it needs."""

    uid: str
    question: str
    skills: frozenset[str]


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Dataset:
    """Train (all shards together), validation and test splits. Compared and hashed by identity (O(1), for the
    partition's caches): :func:`generate` returns the one object per spec."""

    train: tuple[Example, ...]
    val: tuple[Example, ...]
    test: tuple[Example, ...]


def _example(rng: random.Random, uid: str, weights: list[float]) -> Example:
    k = rng.choices((1, 2, 3), weights=(3, 4, 2))[0]
    names: set[str] = set()
    while len(names) < k:
        names.add(rng.choices(SKILL_NAMES, weights=weights)[0])
    category = rng.choice(_CATEGORIES)
    count = rng.randint(2, 12)
    question = f"[surrogate] How many {category} do I have? ({count} items; needs {', '.join(sorted(names))})"
    return Example(uid=uid, question=question, skills=frozenset(names))


# From this many shards on, the training split is generated shard by shard (:func:`shard`): a federation of a
# million clients needs two million examples, which take minutes to generate in one sequence.
PER_SHARD_FROM = 10_000


def per_shard(spec: DataSpec) -> bool:
    """Whether ``spec``'s training examples are generated shard by shard rather than as one pool."""
    return spec.num_shards >= PER_SHARD_FROM


@functools.lru_cache(maxsize=4)
def generate(spec: DataSpec) -> Dataset:
    """The whole data set a scenario describes, the same for every caller with the same spec: built once per
    process and shared (it is frozen), not once per client; each build costs ~50 ms of CPU, and a worker
    process's clients building theirs on their first task stalled its event loop past round deadlines.
    With :func:`per_shard` the training split is empty here: each shard is generated on its own."""
    rng = random.Random(f"surrogate-skills/{spec.generation_seed}")
    uniform = [1.0] * len(SKILLS)
    train = () if per_shard(spec) else tuple(_example(rng, f"train-{i}", uniform) for i in range(spec.train_size))
    val = tuple(_example(rng, f"val-{i}", uniform) for i in range(spec.val_size))
    test = tuple(_example(rng, f"test-{i}", uniform) for i in range(spec.test_size))
    return Dataset(train=train, val=val, test=test)


def shard(spec: DataSpec, dataset: Dataset, index: int) -> tuple[Example, ...]:
    """Client ``index``'s private training examples.

    'iid': a seeded shuffle cut into ``num_shards`` near-equal parts. 'by-skill': shard ``i``
    prefers examples needing skills ``i`` and ``i+1`` (mod 8), so clients learn different skills.
    """
    if not 0 <= index < spec.num_shards:
        raise ValueError(f"shard index {index} outside 0..{spec.num_shards - 1}")
    if per_shard(spec):
        return _generated_shard(spec, index)
    order = _shuffled(spec, dataset)
    if spec.partition == "by-skill":
        mine = _favouring(spec, dataset, index % len(SKILLS))
        size = max(1, len(order) // spec.num_shards)
        return mine[:size] if mine else order[:size]
    return order[index :: spec.num_shards] or order[:1]


def _generated_shard(spec: DataSpec, index: int) -> tuple[Example, ...]:
    """Shard ``index`` generated on its own, from a generator seeded by the data seed and the index: its share of
    ``train_size`` (near-equal shares, at least one example). 'iid': examples drawn as for the pool; 'by-skill':
    only examples that need skill ``index`` or the next one (mod 8), as the pooled partition prefers."""
    size = max(1, spec.train_size // spec.num_shards + (index < spec.train_size % spec.num_shards))
    rng = random.Random(f"surrogate-skills/{spec.generation_seed}/shard/{index}")
    uniform = [1.0] * len(SKILLS)
    favoured = {SKILL_NAMES[index % len(SKILLS)], SKILL_NAMES[(index + 1) % len(SKILLS)]}
    out: list[Example] = []
    draws = 0
    while len(out) < size:
        example = _example(rng, f"train-{index}-{draws}", uniform)
        draws += 1
        if spec.partition != "by-skill" or example.skills & favoured:
            out.append(example)
    return tuple(out)


# The partition's work is done once per data set, not once per client: a client's shard then costs its own
# size (an O(train_size) shuffle per client made 1,000 clients' first tasks cost seconds of CPU).
@functools.lru_cache(maxsize=4)
def _shuffled(spec: DataSpec, dataset: Dataset) -> tuple[Example, ...]:
    rng = random.Random(f"partition/{spec.generation_seed}/{spec.partition}")
    order = list(dataset.train)
    rng.shuffle(order)
    return tuple(order)


@functools.lru_cache(maxsize=4 * len(SKILLS))
def _favouring(spec: DataSpec, dataset: Dataset, first_skill: int) -> tuple[Example, ...]:
    """The shuffled examples needing skill ``first_skill`` or the next one (mod 8): by-skill shard candidates."""
    favoured = {SKILL_NAMES[first_skill], SKILL_NAMES[(first_skill + 1) % len(SKILLS)]}
    return tuple(e for e in _shuffled(spec, dataset) if e.skills & favoured)
