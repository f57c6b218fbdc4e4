"""Instruction retention judged by an LLM (fedbus/runtime/retention.py), against a scripted judge."""

from __future__ import annotations

from fedbus.aggregator.effects import Accepted, RoundResult
from fedbus.llm.engine import ScriptedEngine
from fedbus.protocol.messages import UpdateStats
from fedbus.runtime.retention import (
    RetentionJudge,
    added_instructions,
    present,
    retention_request,
    tally,
)

STATS = UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=1.0, llm_calls=2, tokens=5,
                    duration_s=0.1)
BASE = "Answer the question. End with 'Answer: $VALUE'."


def update(client: str, prompt: str, base_version: int = 0) -> Accepted:
    return Accepted(client=client, msg_id=f"{client}-1", round=1, base_version=base_version, prompt=prompt,
                    stats=STATS, at=1.0)


def result(prompt: str, *accepted: Accepted, version_after: int = 1) -> RoundResult:
    return RoundResult(round=version_after, status="aggregated", version_before=version_after - 1,
                       version_after=version_after, selected=tuple(a.client for a in accepted), accepted=accepted,
                       rejected=(), dropped=(), missing=(), opened_at=0.0, closed_at=1.0, prompt=prompt,
                       close_reason="all-answered")


def test_a_clients_instructions_are_the_sentences_its_base_prompt_lacked() -> None:
    assert added_instructions(BASE, BASE + " List every item. Count twice. List every item.") == [
        "List every item.", "Count twice."]
    assert added_instructions(BASE, BASE) == []
    assert len(added_instructions("", " ".join(f"Rule {i}." for i in range(50)))) == 20  # at most 20 a client


def test_the_verdict_is_read_from_its_tags_only() -> None:
    assert present("<PRESENT>yes</PRESENT>") is True
    assert present("Sure. <PRESENT> No </PRESENT>") is False
    assert present("yes") is None and present("<PRESENT>maybe</PRESENT>") is None


def test_the_tally_counts_each_clients_instructions_and_leaves_unjudged_out_of_the_share() -> None:
    record = tally({"a": ["x", "y"], "b": ["y", "z"]}, {"x": True, "y": False, "z": None}, "judge-model")
    assert record == {"instructions": 3, "judged": 2, "kept": 1, "share": 0.5, "unjudged": 1, "model": "judge-model",
                      "by_client": {"a": {"instructions": 2, "kept": 1}, "b": {"instructions": 2, "kept": 0}}}


async def test_the_judge_is_asked_once_per_instruction_with_the_global_prompt() -> None:
    """Two clients add three distinct instructions (one in common); the merge kept two of them in other words."""
    asked: list[str] = []

    def judge(prompt: str, _system: str | None) -> str:
        asked.append(prompt)
        instruction = prompt.split("<INSTRUCTION>\n", 1)[1].split("\n</INSTRUCTION>", 1)[0]
        return "<PRESENT>no</PRESENT>" if instruction == "Count twice." else "<PRESENT>yes</PRESENT>"

    merged = "Name each item, then count them. Check the sum."
    judged = await RetentionJudge(ScriptedEngine(judge, model="judge-model"), BASE)(result(
        merged, update("a", BASE + " List every item. Count twice."), update("b", BASE + " List every item. Verify.")))
    assert judged is not None
    assert len(asked) == 3 and all(retention_request(merged, "").split("<INSTRUCTION>")[0] in q for q in asked)
    assert (judged["instructions"], judged["kept"], judged["share"]) == (3, 2, 0.6667)
    assert judged["by_client"] == {"a": {"instructions": 2, "kept": 1}, "b": {"instructions": 2, "kept": 2}}


async def test_later_rounds_measure_against_the_global_prompt_each_update_started_from() -> None:
    judge = RetentionJudge(ScriptedEngine(lambda _p, _s: "<PRESENT>yes</PRESENT>"), BASE)
    first = BASE + " List every item."
    await judge(result(first, update("a", first)))
    judged = await judge(result(first + " Count twice.", update("a", first + " Count twice.", base_version=1),
                                version_after=2))
    assert judged is not None and judged["instructions"] == 1  # "List every item." was already in version 1


async def test_a_judge_that_fails_leaves_its_instructions_unjudged_and_the_run_goes_on() -> None:
    from fedbus.errors import EngineError

    def judge(prompt: str, _system: str | None) -> str:
        if "Count twice." in prompt.split("<INSTRUCTION>", 1)[1]:
            raise EngineError("scripted: the judge's server is down")
        return "<PRESENT>yes</PRESENT>"

    judged = await RetentionJudge(ScriptedEngine(judge), BASE)(
        result("Merged.", update("a", BASE + " List every item. Count twice.")))
    assert judged is not None and (judged["judged"], judged["kept"], judged["unjudged"]) == (1, 1, 1)


async def test_an_update_on_a_prompt_the_judge_never_saw_is_named_not_judged() -> None:
    """After a resume the judge knows the rounds it is told of (remember); an update on another base is listed."""
    judge = RetentionJudge(ScriptedEngine(lambda _p, _s: "<PRESENT>yes</PRESENT>"), BASE)
    second = result(BASE + " Count twice.", update("a", BASE + " Count twice.", base_version=1),
                    update("b", BASE + " Verify.", base_version=2), version_after=3)
    judge.remember([result(BASE, update("x", BASE), version_after=1)])
    judged = await judge(second)
    assert judged is not None and judged["unknown_base"] == ["b"] and judged["instructions"] == 1
