"""The run's scoring on an LLM, graded as ``task.grader`` says: exactly, or by the authors' LLM judge.

With ``grader: judge`` the judge role's engine grades every scored answer (:mod:`fedbus.llm.judge`), as it grades
the clients' batches in their local steps; its verdicts go through the response cache like any call.
"""

from __future__ import annotations

from fedbus.llm.roles import Engines
from fedbus.protocol.messages import DataSpec
from fedbus.runtime.llm_evaluation import LLMEvaluator
from fedbus.runtime.llm_run import LLMReducer
from fedbus.runtime.scoring import LLMScoring


class JudgedScoring(LLMScoring):
    """:class:`LLMScoring` whose evaluator asks the judge whether each answer is right."""

    def __init__(self, engines: Engines, data: DataSpec, reducer: LLMReducer) -> None:
        super().__init__(engines.evaluator, data, reducer)
        self._evaluator = LLMEvaluator(engines.evaluator, data, judge=engines.judge)


def llm_scoring(engines: Engines, data: DataSpec, reducer: LLMReducer, grader: str = "exact") -> LLMScoring:
    """The scoring of a run on ``engines``: the evaluator role answers; ``grader`` decides who grades."""
    if grader == "judge":
        return JudgedScoring(engines, data, reducer)
    return LLMScoring(engines.evaluator, data, reducer)
