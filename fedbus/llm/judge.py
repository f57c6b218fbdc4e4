"""The LLM judge of answers (``task.grader: judge``), as the authors grade BIG-Bench Hard tasks other than object
counting (multistep arithmetic among them).

Their code (ubc-tea/FedTextGrad, ``textgrad/tasks/__init__.py``) makes TextGrad's ``MultiFieldTokenParsedEvaluation``
the loss: the question, the ground truth and the model's reasoning and prediction go to an LLM under the
instruction below, which answers 1 or 0 between ``<ACCURACY>`` tags. :func:`judge_prompt` builds that very request
(TextGrad's format string, its default system prompt for the evaluation), so a scored answer and a local step's
judgement of the same reply are one cached request. A verdict without the tags is no verdict: the answer counts as
wrong, and is counted (TextGrad's own parser raises ``IndexError`` there). Pure: no I/O but the engine's call.
"""

from __future__ import annotations

import re

from fedbus.llm.engine import ChatEngine

GRADERS = ("exact", "judge")  # exact: `Answer: <number>` equals the target (fedbus.tasks.answers.is_correct)
JUDGE_INSTRUCTION = (
    "Below is a question from a question-answering task, the ground truth answer, and reasoning with the final "
    "prediction. Is the final prediction correct, i.e. the same as the ground truth answer? Say only 1 (yes) or 0 "
    "(no). Return your response within <ACCURACY> </ACCURACY> tags. e.g.<ACCURACY> 0 </ACCURACY> or "
    "<ACCURACY> 1 </ACCURACY>")
ROLE_DESCRIPTIONS = ("Question for the task", "Ground truth answer", "Reasoning and prediction from the language model")
JUDGE_SYSTEM = "You are an evaluation system that compares two variables."  # TextGrad's MultiFieldEvaluation default
PARSE_TAGS = ("<ACCURACY>", "</ACCURACY>")

_VERDICT = re.compile(r"<ACCURACY>(.*?)</ACCURACY>", re.DOTALL)


def judge_prompt(question: str, target: str, reply: str) -> str:
    """The judge's user message: TextGrad's ``MultiFieldEvaluation`` format with the authors' instruction."""
    fields = zip(ROLE_DESCRIPTIONS, (question, target, reply), strict=True)
    return "\n".join([JUDGE_INSTRUCTION, *(f"**{role}**: {value}" for role, value in fields)])


def verdict(judgement: str) -> bool | None:
    """``True`` for a 1 between the tags, ``False`` for anything else between them, ``None`` without tags."""
    found = _VERDICT.search(judgement)
    if found is None:
        return None
    return found.group(1).strip() == "1"


async def judged_correct(judge: ChatEngine, question: str, target: str, reply: str) -> tuple[bool, bool]:
    """Ask ``judge`` whether ``reply`` answers ``question`` as ``target`` does: (correct, judge replied with tags)."""
    judgement = await judge.complete(judge_prompt(question, target, reply), system=JUDGE_SYSTEM)
    decided = verdict(judgement.text)
    return bool(decided), decided is not None


__all__ = ["GRADERS", "JUDGE_INSTRUCTION", "JUDGE_SYSTEM", "PARSE_TAGS", "ROLE_DESCRIPTIONS", "judge_prompt",
           "judged_correct", "verdict"]
