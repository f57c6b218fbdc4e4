"""The LLM judge (task.grader: judge): the authors' instruction word for word, verdicts, and judged scoring."""

from __future__ import annotations

from typing import Any

import pytest

from fedbus.errors import ScenarioError
from fedbus.llm import ScriptedEngine
from fedbus.llm.judge import JUDGE_INSTRUCTION, JUDGE_SYSTEM, judge_prompt, verdict
from fedbus.protocol.messages import DataSpec
from fedbus.runtime.llm_evaluation import LLMEvaluator
from fedbus.scenario.loader import scenario_from_mapping, scenario_to_mapping
from fedbus.tasks.federation import task_splits

AUTHORS = ("Below is a question from a question-answering task, the ground truth answer, and reasoning with the final "
           "prediction. Is the final prediction correct, i.e. the same as the ground truth answer? Say only 1 (yes) "
           "or 0 (no). Return your response within <ACCURACY> </ACCURACY> tags. e.g.<ACCURACY> 0 </ACCURACY> or "
           "<ACCURACY> 1 </ACCURACY>")  # ubc-tea/FedTextGrad, textgrad/tasks/__init__.py, the BBH branch


def test_the_instruction_is_the_authors_and_the_request_textgrads() -> None:
    assert JUDGE_INSTRUCTION == AUTHORS
    assert judge_prompt("((1 + 2) * 3) =", "9", "3 * 3 = 9. Answer: 9") == (
        f"{AUTHORS}\n**Question for the task**: ((1 + 2) * 3) =\n**Ground truth answer**: 9\n"
        "**Reasoning and prediction from the language model**: 3 * 3 = 9. Answer: 9")


@pytest.mark.parametrize(("judgement", "expected"), [
    ("<ACCURACY> 1 </ACCURACY>", True), ("Let me see. <ACCURACY>1</ACCURACY>", True),
    ("<ACCURACY> 0 </ACCURACY>", False), ("<ACCURACY> yes </ACCURACY>", False),
    ("1", None), ("<ACCURACY> 1", None),
])
def test_a_verdict_needs_its_tags(judgement: str, expected: bool | None) -> None:
    assert verdict(judgement) is expected


def scenario(grader: str, engine: Any = None) -> dict[str, Any]:
    return {"name": "judged", "rounds": 1, "engine": engine or {"name": "openai", "model": "m"},
            "task": {"name": "multistep_arithmetic_two", "grader": grader}, "clients": {"count": 1}}


def test_the_grader_is_a_task_setting() -> None:
    judged = scenario_from_mapping(scenario("judge"))
    assert judged.grader == "judge" and scenario_from_mapping(scenario_to_mapping(judged)) == judged
    assert scenario_from_mapping(scenario("exact")).grader == "exact"
    assert "grader" not in scenario_to_mapping(scenario_from_mapping(scenario("exact")))["task"]
    for bad, engine in (("oracle", None), ("judge", "surrogate")):
        with pytest.raises(ScenarioError) as caught:
            scenario_from_mapping({**scenario(bad, engine), "task": {"name": "surrogate-skills", "grader": bad}}
                                  if engine else scenario(bad))
        assert "task.grader" in [where for where, _ in caught.value.problems]


async def test_judged_scoring_asks_the_judge_about_every_answer() -> None:
    """The judge decides, whatever the Answer: line says; a verdict without tags counts wrong and is counted."""
    data = DataSpec(task="multistep_arithmetic_two", seed=3, num_shards=1, train_size=2, val_size=4, test_size=2)
    questions = [e.input for e in task_splits(data)["multistep_arithmetic_two"].val]
    answerer = ScriptedEngine(lambda prompt, system: "Answer: 0")

    def judge(prompt: str, system: str | None) -> str:
        assert system == JUDGE_SYSTEM and prompt.startswith(AUTHORS)
        if questions[0] in prompt:
            return "I cannot tell."
        return "<ACCURACY> 1 </ACCURACY>" if questions[1] in prompt else "<ACCURACY> 0 </ACCURACY>"

    judge_engine = ScriptedEngine(judge)
    evaluation = await LLMEvaluator(answerer, data, judge=judge_engine).evaluate("Solve it.", "val")
    assert (evaluation.accuracy, evaluation.questions, evaluation.unjudged) == (0.25, 4, 1)
    assert evaluation.record()["unjudged"] == 1 and len(judge_engine.requests) == 4
    assert "unjudged" not in (await LLMEvaluator(answerer, data).evaluate("Solve it.", "val")).record()
