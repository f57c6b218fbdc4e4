"""FedTextGrad's local step through real textgrad, with a scripted engine (as textgrad's own tests do)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from fedbus.errors import EngineError
from fedbus.llm.textgrad_engine import StepOutcome, local_step
from fedbus.tasks.answers import is_correct

if importlib.util.find_spec("textgrad") is None:  # not importorskip: importing it here would skip our containment
    pytest.skip("textgrad is not installed (pip install fedbus[llm])", allow_module_level=True)

pytestmark = pytest.mark.slow  # textgrad's import alone takes 5 s or more, paid by whichever test comes first

QUESTION = "I have a cat, a dog, and a fish. How many animals do I have?"
BATCH = [(QUESTION, "3"), ("I have a piano and a flute. How many musical instruments do I have?", "2")]
BETTER = "List every item, then count the ones in the asked category. Answer: $VALUE"


def scripted(optimizer_reply: str, new_prompt_answers: str = "right",
             better: str = BETTER) -> Callable[[str, str | None], str]:
    """Wrong answers under the old prompt; the optimizer says ``optimizer_reply``; the new prompt answers as told."""
    def chat(prompt: str, system: str | None) -> str:
        if prompt.startswith("Here is the role of the variable you will improve"):
            return optimizer_reply
        if prompt.startswith("You will give feedback"):
            return "The answer is wrong: the prompt should ask the model to list every item before counting."
        target = "3" if "cat" in prompt else "2"
        if system == better.strip():
            return f"Answer: {target}" if new_prompt_answers == "right" else "Answer: 99"
        return "Answer: 7"
    return chat


def step(chat: Callable[[str, str | None], str], tmp_path: Path, strict: bool = False,
         batch: list[tuple[str, str]] = BATCH) -> StepOutcome:
    return local_step("Answer the question.", batch, chat, is_correct, strict=strict, log_dir=tmp_path / "run")


def test_an_improving_step_is_kept(tmp_path: Path) -> None:
    out = step(scripted(f"<IMPROVED_VARIABLE>{BETTER}</IMPROVED_VARIABLE>"), tmp_path)
    assert (out.prompt, out.accepted, out.reason) == (BETTER, True, "improved")
    assert (out.acc_before, out.acc_after) == (0.0, 1.0)
    assert out.llm_calls == 4 * len(BATCH) + 1  # forward, two feedback calls per example, the update, re-check
    assert (tmp_path / "run" / "textgrad.jsonl").exists(), "textgrad's log goes into the run directory"


def test_a_reply_without_tags_keeps_the_old_prompt(tmp_path: Path) -> None:
    out = step(scripted(f"Here is a better prompt: {BETTER}"), tmp_path)
    assert (out.prompt, out.accepted, out.reason) == ("Answer the question.", False, "optimizer-missing-tags")


def test_an_empty_reply_keeps_the_old_prompt(tmp_path: Path) -> None:
    out = step(scripted(""), tmp_path)
    assert (out.prompt, out.reason) == ("Answer the question.", "optimizer-empty-reply")


def test_an_engine_error_keeps_the_old_prompt(tmp_path: Path) -> None:
    def chat(prompt: str, system: str | None) -> str:
        if prompt.startswith("You will give feedback"):
            raise EngineError("server said 500 three times")
        return "Answer: 7"
    out = step(chat, tmp_path)
    assert out.prompt == "Answer the question." and out.reason.startswith("engine-error: server said 500")


def test_a_step_that_lowers_accuracy_is_reverted(tmp_path: Path) -> None:
    def chat(prompt: str, system: str | None) -> str:
        if prompt.startswith("Here is the role"):
            return f"<IMPROVED_VARIABLE>{BETTER}</IMPROVED_VARIABLE>"
        if prompt.startswith("You will give feedback"):
            return "Be more careful."
        if system == BETTER:
            return "Answer: 0"
        return "Answer: 3" if "cat" in prompt else "Answer: 5"  # one right before
    out = step(chat, tmp_path)
    assert (out.prompt, out.accepted, out.reason) == ("Answer the question.", False, "reverted-accuracy-dropped")
    assert (out.acc_before, out.acc_after) == (0.5, 0.0)


def test_strict_mode_wants_an_improvement(tmp_path: Path) -> None:
    chat = scripted(f"<IMPROVED_VARIABLE>{BETTER}</IMPROVED_VARIABLE>", new_prompt_answers="wrong")
    assert step(chat, tmp_path).reason == "no-drop"  # 0.0 -> 0.0 is kept by default
    out = step(chat, tmp_path, strict=True)
    assert (out.accepted, out.reason) == (False, "reverted-no-improvement")


def test_a_perfect_batch_needs_no_step(tmp_path: Path) -> None:
    out = step(lambda prompt, system: "Answer: 3", tmp_path, batch=[(QUESTION, "3")])
    assert (out.reason, out.llm_calls, out.acc_before) == ("perfect-batch", 1, 1.0)


def test_concurrent_steps_in_threads_keep_their_own_engines(tmp_path: Path) -> None:
    """Four clients step at once in threads; each engine improves only its own client's prompt."""
    results: dict[int, StepOutcome] = {}

    def run(i: int) -> None:
        mine = f"Client {i}: list every item, then count. Answer: $VALUE"
        chat = scripted(f"<IMPROVED_VARIABLE>{mine}</IMPROVED_VARIABLE>", better=mine)
        results[i] = step(chat, tmp_path / f"t{i}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: r.prompt for i, r in results.items()} == {
        i: f"Client {i}: list every item, then count. Answer: $VALUE" for i in range(4)}
    assert all(r.reason == "improved" and r.llm_calls == 4 * len(BATCH) + 1 for r in results.values())


def test_importing_textgrad_here_writes_nothing_into_the_working_directory(tmp_path: Path) -> None:
    code = ("from pathlib import Path; from fedbus.llm.textgrad_engine import load_textgrad; "
            f"load_textgrad(Path({str(tmp_path / 'run')!r}))")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True,
                   env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2]), "HOME": str(tmp_path)})
    assert not (tmp_path / "logs").exists()
    assert any((tmp_path / "run").iterdir())


def test_an_empty_batch_is_refused(tmp_path: Path) -> None:
    """An empty batch is the caller's bug, not an optimizer outcome."""
    with pytest.raises(ValueError, match="at least one"):
        step(scripted("x"), tmp_path, batch=[])


def test_an_index_error_in_the_callers_checker_is_not_blamed_on_the_model(tmp_path: Path) -> None:
    """Only the optimizer's tag parsing turns an IndexError into an outcome."""
    def broken(response: str, target: str) -> bool:
        raise IndexError("a bug in the checker")
    with pytest.raises(IndexError):
        local_step("Answer the question.", BATCH, scripted("x"), broken, log_dir=tmp_path / "run")


def test_a_global_backward_engine_is_refused_in_words(tmp_path: Path) -> None:
    """textgrad's singleton would make backward(engine) raise a bare Exception; we say why instead."""
    from textgrad.config import SingletonBackwardEngine

    singleton = SingletonBackwardEngine()
    singleton.engine = object()  # as textgrad.set_backward_engine would
    try:
        with pytest.raises(EngineError, match="global backward engine"):
            step(scripted("x"), tmp_path)
    finally:
        singleton.engine = None


def optimizer_prompts(tmp_path: Path, steps: int, feedback: Callable[[str], str]) -> list[str]:
    """The optimizer's prompt of each of ``steps`` identical steps, the feedback to each question from
    ``feedback(prompt)``."""
    seen: list[str] = []

    def chat(prompt: str, system: str | None) -> str:
        if prompt.startswith("Here is the role of the variable you will improve"):
            seen.append(prompt)
            return f"<IMPROVED_VARIABLE>{BETTER}</IMPROVED_VARIABLE>"
        if prompt.startswith("You will give feedback"):
            return feedback(prompt)
        return "Answer: 7"

    for i in range(steps):
        step(chat, tmp_path / f"r{i}")
    return seen


def test_the_optimizer_sees_the_feedback_in_a_repeatable_order(tmp_path: Path) -> None:
    """textgrad keeps gradients in an id-hashed set; the step orders them, so reruns hit the response cache."""
    seen = optimizer_prompts(tmp_path, 5, lambda prompt: "Zebra feedback: count the animals." if "cat" in prompt
                             else "Alpha feedback: count instruments.")
    assert len(set(seen)) == 1, "the optimizer's prompt changed between identical steps"
    assert seen[0].index("Alpha feedback") < seen[0].index("Zebra feedback")


def test_the_same_feedback_for_two_questions_still_comes_in_a_repeatable_order(tmp_path: Path) -> None:
    """Identical feedback texts tie on the feedback: they are ordered by what they criticize, else the set's id
    hashing decided (5 different optimizer prompts in 6 identical runs, each a response-cache miss)."""
    seen = optimizer_prompts(tmp_path, 8, lambda _prompt: "Enumerate each item before counting.")
    assert len(set(seen)) == 1, "the optimizer's prompt changed between identical steps"
    assert seen[0].index("piano") > seen[0].index("cat")  # 'I have a cat' sorts before 'I have a piano'
