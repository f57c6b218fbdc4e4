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
