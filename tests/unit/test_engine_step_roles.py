"""A TextGrad local step with an engine per role, and stepping on a perfect batch (the authors' choice)."""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from fedbus.llm.judge import JUDGE_SYSTEM, judge_prompt
from fedbus.llm.textgrad_engine import StepChats, local_step
from fedbus.tasks.answers import is_correct

if importlib.util.find_spec("textgrad") is None:  # not importorskip: importing it here would skip our containment
    pytest.skip("textgrad is not installed (pip install fedbus[llm])", allow_module_level=True)

pytestmark = pytest.mark.slow  # textgrad's import alone takes seconds

BATCH = [("I have a cat, a dog, and a fish. How many animals do I have?", "3"),
         ("I have a piano and a flute. How many musical instruments do I have?", "2"),
         ("I have an apple. How many fruits do I have?", "1")]
BETTER = "List every item, then count. Answer: $VALUE"
Chat = Callable[[str, str | None], str]


def role_chats(asked: Counter[str], *, right_from_start: bool = False) -> StepChats:
    """Each role's chat, counting what it was asked; the forward model is right under BETTER (or always)."""
    def forward(prompt: str, system: str | None) -> str:
        asked["forward"] += 1
        assert not prompt.startswith(("You will give feedback", "Here is the role")), "a role's call went forward"
        target = dict(BATCH)[prompt]
        return f"Answer: {target}" if right_from_start or system == BETTER else "Answer: 7"

    def backward(prompt: str, system: str | None) -> str:
        asked["backward"] += 1
        assert prompt.startswith("You will give feedback"), prompt[:80]
        return "The prompt should ask the model to list every item before counting."

    def optimizer(prompt: str, system: str | None) -> str:
        asked["optimizer"] += 1
        assert prompt.startswith("Here is the role of the variable you will improve"), prompt[:80]
        return f"<IMPROVED_VARIABLE>{BETTER}</IMPROVED_VARIABLE>"

    return StepChats(forward=forward, backward=backward, optimizer=optimizer)


def test_each_role_of_a_step_goes_to_its_own_engine(tmp_path: Path) -> None:
    """Forward (and the re-check) B + B, feedback 2B, the update 1: each on its role's chat."""
    asked: Counter[str] = Counter()
    out = local_step("Answer the question.", BATCH, role_chats(asked), is_correct, log_dir=tmp_path)
    assert (out.prompt, out.reason) == (BETTER, "improved")
    b = len(BATCH)
    assert asked == Counter(forward=2 * b, backward=2 * b, optimizer=1)
    assert out.llm_calls == 4 * b + 1


@pytest.mark.parametrize("step_anyway", [False, True])
def test_a_perfect_batch_is_skipped_unless_asked(tmp_path: Path, step_anyway: bool) -> None:
    """Skipping saves 3B+1 calls (2B feedback, 1 update, B re-check); stepping keeps a no-worse prompt."""
    asked: Counter[str] = Counter()
    out = local_step("Answer the question.", BATCH, role_chats(asked, right_from_start=True), is_correct,
                     step_on_perfect_batch=step_anyway, log_dir=tmp_path)
    b = len(BATCH)
    if step_anyway:
        assert (out.prompt, out.accepted, out.reason, out.acc_after) == (BETTER, True, "no-drop", 1.0)
        assert out.llm_calls == 4 * b + 1 and asked["optimizer"] == 1
    else:
        assert (out.prompt, out.accepted, out.reason) == ("Answer the question.", False, "perfect-batch")
        assert out.llm_calls == b and asked == Counter(forward=b)


def test_a_judged_step_grades_and_learns_from_the_authors_judge(tmp_path: Path) -> None:
    """task.grader: judge: the LLM judge is the loss and the grade (B more calls forward, B more in the re-check);
    its request is the one fedbus's scoring sends, so both share the response cache."""
    asked: Counter[str] = Counter()
    judged: list[tuple[str, str | None]] = []
    plain = role_chats(asked)

    def judge(prompt: str, system: str | None) -> str:
        judged.append((prompt, system))
        right = prompt.rsplit("**Reasoning and prediction from the language model**: ", 1)[1] != "Answer: 7"
        return f"<ACCURACY> {int(right)} </ACCURACY>"

    chats = StepChats(forward=plain.forward, backward=plain.backward, optimizer=plain.optimizer, judge=judge)
    out = local_step("Answer the question.", BATCH, chats, lambda reply, target: False, log_dir=tmp_path)
    b = len(BATCH)
    assert (out.prompt, out.reason, out.acc_before, out.acc_after) == (BETTER, "improved", 0.0, 1.0)
    assert out.llm_calls == 6 * b + 1 and len(judged) == 2 * b
    question, target = BATCH[0]
    assert (judge_prompt(question, target, "Answer: 7"), JUDGE_SYSTEM) in judged  # textgrad's call, built by fedbus
    assert (judge_prompt(question, target, f"Answer: {target}"), JUDGE_SYSTEM) in judged  # the re-check's


@pytest.mark.parametrize("validation_revert", [False, True])
async def test_validation_revert_undoes_a_step_the_batch_liked_and_the_validation_set_did_not(
        tmp_path: Path, validation_revert: bool) -> None:
    """clients.validation_revert (TextGrad's run_validation_revert): the new prompt fixes the batch but breaks the
    validation questions, so the step is kept by the batch rule and reverted by the validation set."""
    from fedbus.client.textgrad_optimizer import TextGradOptimizer
    from fedbus.llm.engine import ScriptedEngine
    from fedbus.protocol.messages import DataSpec
    from fedbus.tasks.federation import task_splits

    spec = DataSpec(task="object_counting", seed=3, num_shards=1, train_size=4, val_size=3, test_size=2)
    [splits] = task_splits(spec).values()
    train, val = {e.input: e.target for e in splits.train}, {e.input: e.target for e in splits.val}

    def model(prompt: str, system: str | None) -> str:
        if prompt.startswith("You will give feedback"):
            return "The prompt should ask the model to list every item before counting."
        if prompt.startswith("Here is the role of the variable you will improve"):
            return f"<IMPROVED_VARIABLE>{BETTER}</IMPROVED_VARIABLE>"
        if prompt in train:  # BETTER fixes the training questions ...
            return f"Answer: {train[prompt]}" if system == BETTER else "Answer: -1"
        return f"Answer: {val[prompt]}" if system != BETTER else "Answer: -1"  # ... and breaks the validation ones

    optimizer = TextGradOptimizer(ScriptedEngine(model), spec, 0, "client-0", log_dir=tmp_path,
                                  validation_revert=validation_revert)
    out = await optimizer.optimize("Answer the question.", round=1, steps=1, batch_size=2)
    if validation_revert:
        assert (out.prompt, out.step_reasons) == ("Answer the question.", ("reverted-validation: 0.000 < 1.000",))
        assert out.llm_calls == 4 * 2 + 1 + 2 * len(val)  # the step, then each prompt on the validation set
    else:
        assert (out.prompt, out.step_reasons) == (BETTER, ("improved",))
