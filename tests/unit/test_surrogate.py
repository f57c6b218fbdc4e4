"""The surrogate optimizer and its task (fedbus/surrogate/): what the docstrings and README promise.

Not an LLM: a seeded model whose numbers must come from the seed alone and move in the documented
direction (more covered skills help, an over-long or hijacked prompt hurts, an edit is kept only if
batch accuracy does not drop).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.client.optimizer import SurrogateOptimizer
from fedbus.errors import EngineError
from fedbus.faults.behaviour import HIJACKS
from fedbus.protocol.messages import DataSpec
from fedbus.surrogate import model, task
from fedbus.surrogate.evaluation import SurrogateEvaluator
from fedbus.surrogate.model import CONTEXT_BUDGET
from fedbus.surrogate.task import SKILL_NAMES, SKILLS, Example

ALL_SKILLS = " ".join(s.wordings[0] for s in SKILLS)
WORDINGS = {w: s.name for s in SKILLS for w in s.wordings}
BARE = "You will answer a reasoning question."


def spec(*, seed: int = 3, partition: str = "iid", shards: int = 4, train: int = 120, val: int = 300,
         test: int = 60) -> DataSpec:
    return DataSpec(task="surrogate-skills", seed=seed, num_shards=shards, train_size=train, val_size=val,
                    test_size=test, partition=partition)


def example(*skills: str) -> Example:
    return Example(uid="x", question="?", skills=frozenset(skills))


def appended_sentences(before: str, after: str) -> list[str]:
    """The wordings an optimizer appended to ``before`` to get ``after`` (each one skill sentence)."""
    assert after.startswith(before.rstrip())
    rest = after[len(before.rstrip()):]
    found = []
    while rest:
        match = next((w for w in WORDINGS if rest.startswith(f" {w}")), None)
        assert match is not None, f"not a skill sentence: {rest!r}"
        found.append(match)
        rest = rest[len(match) + 1:]
    return found


# ------------------------------------------------------------------ the task


def test_the_data_set_is_a_function_of_the_spec() -> None:
    """Two generations from one spec are equal; the sizes are the spec's."""
    first, second = task.generate(spec()), task.generate(spec())
    assert first == second
    assert (len(first.train), len(first.val), len(first.test)) == (120, 300, 60)


def test_another_seed_gives_other_questions() -> None:
    """The seed, not a global random source, decides the questions."""
    assert task.generate(spec(seed=3)).train != task.generate(spec(seed=4)).train


def test_every_question_needs_one_to_three_known_skills() -> None:
    """Each generated example needs 1-3 of the eight named skills."""
    data = task.generate(spec())
    for e in data.train + data.val + data.test:
        assert 1 <= len(e.skills) <= 3
        assert e.skills <= set(SKILL_NAMES)


def test_iid_shards_split_the_training_set_without_overlap() -> None:
    """'iid': the shards are disjoint, near-equal, and together are the whole training set."""
    s = spec(partition="iid", shards=3, train=10)
    data = task.generate(s)
    shards = [task.shard(s, data, i) for i in range(3)]
    assert sorted(len(x) for x in shards) == [3, 3, 4]
    uids = [e.uid for x in shards for e in x]
    assert len(uids) == len(set(uids)) == 10


def test_by_skill_shards_favour_their_two_skills() -> None:
    """'by-skill': shard i holds examples that need skill i or i+1 (mod 8), about train/num_shards of them."""
    s = spec(partition="by-skill", shards=4, train=200)
    data = task.generate(s)
    for i in range(4):
        favoured = {SKILL_NAMES[i % 8], SKILL_NAMES[(i + 1) % 8]}
        mine = task.shard(s, data, i)
        assert len(mine) == 50
        assert all(e.skills & favoured for e in mine)


@pytest.mark.parametrize("index", [-1, 4])
def test_a_shard_index_outside_the_shards_is_refused(index: int) -> None:
    """Asking for a shard that does not exist is an error, not an empty or wrapped shard."""
    s = spec(shards=4)
    with pytest.raises(ValueError, match="shard index"):
        task.shard(s, task.generate(s), index)


# ------------------------------------------------------------------ answering


def test_a_prompt_covers_a_skill_with_any_of_its_wordings_in_any_case() -> None:
    """Coverage is 'contains one of the skill's sentences', case-insensitively."""
    for skill in SKILLS:
        for wording in skill.wordings:
            assert model.covered_skills(f"Intro. {wording.upper()} Outro.") == {skill.name}
    assert model.covered_skills(BARE) == frozenset()
    assert model.covered_skills(ALL_SKILLS) == set(SKILL_NAMES)


@pytest.mark.parametrize(("chars", "factor"), [
    (0, 1.0), (CONTEXT_BUDGET, 1.0), (CONTEXT_BUDGET * 2, 0.7), (CONTEXT_BUDGET * 3, 0.4), (CONTEXT_BUDGET * 10, 0.4),
])
def test_the_length_factor_falls_linearly_past_the_budget_to_a_floor(chars: int, factor: float) -> None:
    """1 up to the context budget, then linearly down to 0.4 at three times it, and never below."""
    assert model.length_factor("x" * chars) == pytest.approx(factor)


def test_a_hijacking_instruction_halves_the_prompt_factor() -> None:
    """A prompt carrying a known hijack answers half as well as the same prompt without it."""
    assert model.prompt_factor(BARE) == 1.0
    assert model.prompt_factor(f"{BARE} {HIJACKS[0]}") == pytest.approx(0.5)


def test_p_correct_is_point_two_plus_point_seven_times_coverage() -> None:
    """P(correct) = (0.2 + 0.7 * coverage) * prompt factor, coverage over the example's own skills."""
    needs_two = example("enumerate", "number-words")
    enumerate_only = SKILLS[0].wordings[0]
    assert model.p_correct(BARE, needs_two) == pytest.approx(0.2)
    assert model.p_correct(enumerate_only, needs_two) == pytest.approx(0.55)
    assert model.p_correct(ALL_SKILLS, needs_two) == pytest.approx(0.9)
    too_long = ALL_SKILLS + " " + "x" * (3 * CONTEXT_BUDGET)
    assert model.p_correct(too_long, needs_two) == pytest.approx(0.9 * 0.4)


def test_accuracy_is_a_function_of_prompt_examples_and_seed() -> None:
    """The same prompt, examples and seed give the same accuracy; no examples give 0."""
    val = task.generate(spec()).val
    assert model.accuracy(BARE, val, random.Random(5)) == model.accuracy(BARE, val, random.Random(5))
    assert model.accuracy(BARE, (), random.Random(5)) == 0.0


def test_accuracy_moves_in_the_documented_direction() -> None:
    """Covering every skill beats covering none; drowning the prompt or hijacking it loses accuracy."""
    val = task.generate(spec(val=400)).val

    def acc(prompt: str) -> float:
        return model.accuracy(prompt, val, random.Random(1))

    bare, full = acc(BARE), acc(ALL_SKILLS)
    assert bare < 0.3
    assert full > 0.8
    assert acc(ALL_SKILLS + " pad" * CONTEXT_BUDGET) < full - 0.3
    assert acc(f"{ALL_SKILLS} {HIJACKS[0]}") < full - 0.3


# ------------------------------------------------------------------ optimizing


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), start=st.sampled_from([BARE, SKILLS[0].wordings[0], ALL_SKILLS]))
def test_a_step_keeps_an_edit_only_if_batch_accuracy_did_not_drop(seed: int, start: str) -> None:
    """One step appends one skill sentence and keeps it only if batch accuracy did not fall; otherwise nothing
    changes. Cost: 2n+1 calls without an edit, 4n+2 with one."""
    batch = task.generate(spec()).train[:4]
    prompt, kept, before, after, cost = model.local_step(start, batch, random.Random(seed))
    if kept:
        assert after >= before
        assert len(appended_sentences(start, prompt)) == 1
        assert cost.llm_calls == 4 * len(batch) + 2
    else:
        assert prompt == start
        assert after == before
        assert cost.llm_calls in (2 * len(batch) + 1, 4 * len(batch) + 2)
    assert cost.tokens > 0


def test_a_step_with_a_perfect_batch_edits_nothing() -> None:
    """No wrong answers, no critique: the prompt stays and only answering is paid for."""
    batch = task.generate(spec()).train[:3]

    class AlwaysRight(random.Random):
        def random(self) -> float:
            return 0.0  # every draw under p_correct: every answer right

    prompt, kept, before, after, cost = model.local_step(BARE, batch, AlwaysRight(0))
    assert (prompt, kept, before, after) == (BARE, False, 1.0, 1.0)
    assert cost.llm_calls == 2 * len(batch) + 1


def test_optimize_replays_from_the_seed() -> None:
    """The same prompt, shard, steps and seed give the same local result, cost included."""
    shard = task.generate(spec()).train[:40]
    first = model.optimize(BARE, shard, 4, 3, random.Random("s/1"))
    second = model.optimize(BARE, shard, 4, 3, random.Random("s/1"))
    assert first == second
    others = [model.optimize(BARE, shard, 4, 3, random.Random(f"s/{i}")) for i in range(2, 8)]
    assert any(o.prompt != first.prompt for o in others), "the seed changes nothing"


def test_optimize_appends_one_skill_sentence_per_accepted_step() -> None:
    """The optimized prompt is the start plus exactly ``accepted_steps`` skill sentences; coverage never shrinks."""
    shard = task.generate(spec()).train[:40]
    for seed in range(10):
        result = model.optimize(BARE, shard, 5, 3, random.Random(seed))
        assert result.steps == 5
        assert 0 <= result.accepted_steps <= 5
        assert len(appended_sentences(BARE, result.prompt)) == result.accepted_steps
        assert model.covered_skills(BARE) <= model.covered_skills(result.prompt)
        assert 0.0 <= result.batch_acc_before <= 1.0 and 0.0 <= result.batch_acc_after <= 1.0
        assert result.cost.llm_calls >= 5 * (2 * 3 + 1)


def test_optimizing_from_a_bare_prompt_improves_validation_accuracy() -> None:
    """Local steps add the skills the data needs, so the optimized prompt scores better than where it started."""
    data = task.generate(spec(train=120, val=400))
    result = model.optimize(BARE, data.train, 8, 4, random.Random(7))
    assert result.accepted_steps >= 3
    assert model.accuracy(result.prompt, data.val, random.Random(0)) > model.accuracy(BARE, data.val,
                                                                                       random.Random(0)) + 0.2


def test_optimize_refuses_an_empty_shard() -> None:
    """A client with no data cannot take a step: a clear error, not a ZeroDivisionError."""
    with pytest.raises(ValueError, match="empty shard"):
        model.optimize(BARE, (), 1, 3, random.Random(0))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), room=st.integers(0, 120))
def test_a_step_keeps_no_edit_past_the_prompt_budget(seed: int, room: int) -> None:
    """With max_chars, an edit that would make the prompt longer is dropped unevaluated (one more call paid for
    the step); the prompt never grows past the budget."""
    batch = task.generate(spec()).train[:4]
    budget = len(BARE) + room
    prompt, kept, before, after, cost = model.local_step(BARE, batch, random.Random(seed), max_chars=budget)
    assert len(prompt) <= budget
    if not kept:
        assert (prompt, after) == (BARE, before)
        assert cost.llm_calls in (2 * len(batch) + 1, 2 * len(batch) + 2, 4 * len(batch) + 2)
    free = model.local_step(BARE, batch, random.Random(seed))
    if free[1] and len(free[0]) <= budget:  # an edit within the budget is taken as without one
        assert (prompt, kept, before, after, cost) == free


def test_optimize_stays_within_the_budget_and_replays_unbudgeted_when_it_fits() -> None:
    """model.optimize with max_chars never returns a longer prompt; with a budget it never reaches, it is the
    unbudgeted result (same draws)."""
    shard = task.generate(spec()).train[:40]
    for seed in range(10):
        free = model.optimize(BARE, shard, 5, 3, random.Random(seed))
        assert model.optimize(BARE, shard, 5, 3, random.Random(seed), max_chars=len(free.prompt)) == free
        tight = model.optimize(BARE, shard, 5, 3, random.Random(seed), max_chars=len(BARE) + 40)
        assert len(tight.prompt) <= len(BARE) + 40 and tight.steps == 5
    none = model.optimize(BARE, shard, 5, 3, random.Random(0), max_chars=len(BARE))
    assert (none.prompt, none.accepted_steps) == (BARE, 0)


def test_the_client_optimizer_passes_the_budget_on() -> None:
    """SurrogateOptimizer.optimize_now(max_chars=...) keeps the outcome within it."""
    alice = SurrogateOptimizer(spec(shards=2), 0, "alice")
    assert alice.optimize_now(BARE, round=1, steps=6, batch_size=3, max_chars=len(BARE)).prompt == BARE
    free = alice.optimize_now(BARE, round=1, steps=6, batch_size=3)
    assert alice.optimize_now(BARE, round=1, steps=6, batch_size=3, max_chars=None) == free


# ------------------------------------------------------------------ seeded per client and round


def test_the_client_optimizer_is_seeded_by_scenario_seed_client_and_round() -> None:
    """Same (seed, client, round): same outcome; another round or client: its own draw."""
    s = spec(shards=2)
    alice = SurrogateOptimizer(s, 0, "alice")
    again = SurrogateOptimizer(s, 0, "alice")
    one = alice.optimize_now(BARE, round=1, steps=3, batch_size=3)
    assert again.optimize_now(BARE, round=1, steps=3, batch_size=3) == one
    assert alice.optimize_now(BARE, round=1, steps=3, batch_size=3) == one, "calling it twice changes nothing"
    by_round = {alice.optimize_now(BARE, round=r, steps=3, batch_size=3) for r in range(1, 8)}
    by_client = {SurrogateOptimizer(s, 0, f"bob-{i}").optimize_now(BARE, round=1, steps=3, batch_size=3)
                 for i in range(7)}
    assert len(by_round) > 1, "the round does not reach the seed"
    assert len(by_client) > 1, "the client id does not reach the seed"


def test_the_surrogate_optimizer_only_knows_its_own_task() -> None:
    """Another task name is an engine error, not a silently wrong data set."""
    other = DataSpec(task="object_counting", seed=1, num_shards=1, train_size=4, val_size=4, test_size=4)
    with pytest.raises(EngineError, match="surrogate-skills"):
        SurrogateOptimizer(other, 0, "c")


def test_the_evaluator_draws_once_per_seed_split_and_round() -> None:
    """Server-side accuracy replays for the same (prompt, split, round) and is a share of the split."""
    evaluator = SurrogateEvaluator(spec(val=50, test=40))
    val = evaluator.accuracy_now(ALL_SKILLS, "val", 2)
    assert val == SurrogateEvaluator(spec(val=50, test=40)).accuracy_now(ALL_SKILLS, "val", 2)
    assert (val * 50) == pytest.approx(round(val * 50))
    test = evaluator.accuracy_now(ALL_SKILLS, "test", 2)
    assert (test * 40) == pytest.approx(round(test * 40))
    assert evaluator.accuracy_now(ALL_SKILLS, "val", 3) != val or evaluator.accuracy_now(ALL_SKILLS, "val", 4) != val
    with pytest.raises(EngineError, match="unknown split"):
        evaluator.accuracy_now(ALL_SKILLS, "train", 1)


def test_the_data_set_is_built_once_per_process() -> None:
    """Every client of a process shares one generated data set (it is frozen): a worker process's 100 clients each
    building their own (~50 ms of CPU) on their first task stalled its event loop past the round deadline."""
    assert task.generate(spec(seed=3)) is task.generate(spec(seed=3))
    assert task.generate(spec(seed=3)) != task.generate(spec(seed=4))


def _shard_by_scanning(spec: DataSpec, index: int) -> tuple[Example, ...]:
    """The partition as it was written before its work was cached per data set: one shuffle per client."""
    rng = random.Random(f"partition/{spec.seed}/{spec.partition}")
    order = list(task.generate(spec).train)
    rng.shuffle(order)
    if spec.partition == "by-skill":
        favoured = {SKILL_NAMES[index % len(SKILLS)], SKILL_NAMES[(index + 1) % len(SKILLS)]}
        mine = [e for e in order if e.skills & favoured]
        size = max(1, len(order) // spec.num_shards)
        return tuple(mine[:size]) if mine else tuple(order[:size])
    return tuple(order[index :: spec.num_shards]) or tuple(order[:1])


@pytest.mark.parametrize("partition", ["iid", "by-skill"])
def test_cached_shards_are_the_shards_one_shuffle_per_client_gave(partition: str) -> None:
    spec = DataSpec(task="surrogate-skills", seed=11, num_shards=13, train_size=300, val_size=5, test_size=5,
                    partition=partition)
    for index in range(spec.num_shards):
        assert task.shard(spec, task.generate(spec), index) == _shard_by_scanning(spec, index)
