"""Instruction retention judged by an LLM (``aggregation.judge_retention``): did the content of each instruction a
client added survive into the global prompt, in any wording?

``sentence_overlap`` is lexical: a faithful paraphrase scores low. Here the judge role reads the global prompt and
one instruction at a time and answers between ``<PRESENT>`` tags. A client's instructions are the sentences of its
update that were not in the global prompt it started from (its ``base_version``), at most
``MAX_PER_CLIENT`` of them; one instruction sent by several clients is judged once and counts for each. A reply
without the tags, or a call that failed after its retries, is no verdict and is counted as ``unjudged``. The
prompt is fedbus's own (the paper judged no retention); its calls go through the response cache like any other,
all of a round's at once (the engine's concurrency limits them). The pure parts (which instructions, the
request, the verdict) are functions; :class:`RetentionJudge` carries the calls out.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

from fedbus.aggregator.effects import Accepted, RoundResult
from fedbus.aggregator.strategies import sentences
from fedbus.errors import EngineError
from fedbus.llm.engine import ChatEngine

MAX_PER_CLIENT = 20
SYSTEM = ("You check whether instructions survived when several system prompts were merged into one. You never "
          "answer the task the prompts are about.")
TEMPLATE = """Below is a system prompt, then one instruction.

<PROMPT>
{prompt}
</PROMPT>

<INSTRUCTION>
{instruction}
</INSTRUCTION>

Is the content of the instruction present in the system prompt, in any wording? Reply with <PRESENT>yes</PRESENT> \
or <PRESENT>no</PRESENT> and nothing else."""
_VERDICT = re.compile(r"<PRESENT>\s*(yes|no)\s*</PRESENT>", re.IGNORECASE)


def added_instructions(base: str, update: str, limit: int = MAX_PER_CLIENT) -> list[str]:
    """The sentences of ``update`` that ``base`` does not have, in order, each once, at most ``limit``."""
    known = set(sentences(base))
    out: dict[str, None] = {}
    for sentence in sentences(update):
        if sentence not in known:
            out.setdefault(sentence, None)
    return list(out)[:limit]


def retention_request(prompt: str, instruction: str) -> str:
    return TEMPLATE.format(prompt=prompt, instruction=instruction)


def present(reply: str) -> bool | None:
    """``True`` for yes, ``False`` for no, ``None`` when the reply has no verdict between the tags."""
    found = _VERDICT.search(reply)
    return None if found is None else found.group(1).lower() == "yes"


def tally(by_client: dict[str, list[str]], verdicts: dict[str, bool | None], model: str) -> dict[str, Any]:
    """The round's record from each client's instructions and the verdict on each instruction."""
    judged = {i: v for i, v in verdicts.items() if v is not None}
    kept = sum(judged.values())
    return {"instructions": len(verdicts), "judged": len(judged), "kept": kept,
            "share": round(kept / len(judged), 4) if judged else None,
            "unjudged": len(verdicts) - len(judged), "model": model,
            "by_client": {c: {"instructions": len(ins), "kept": sum(verdicts.get(i) is True for i in ins)}
                          for c, ins in sorted(by_client.items())}}


class RetentionJudge:
    """Judges each aggregated round's global prompt against the instructions its updates added."""

    def __init__(self, judge: ChatEngine, initial_prompt: str) -> None:
        self._judge = judge
        self._by_version: dict[int, str] = {0: initial_prompt}

    async def __call__(self, result: RoundResult) -> dict[str, Any] | None:
        self._by_version[result.version_after] = result.prompt
        if result.status != "aggregated" or not result.accepted:
            return None
        known = [a for a in result.accepted if a.base_version in self._by_version]
        by_client = {a.client: self._instructions(a) for a in known}
        distinct = list(dict.fromkeys(i for ins in by_client.values() for i in ins))
        answers = await asyncio.gather(*(self._verdict(result.prompt, i) for i in distinct))  # the engine limits
        record = tally(by_client, dict(zip(distinct, answers, strict=True)), self._judge.model)
        unknown = sorted(a.client for a in result.accepted if a.base_version not in self._by_version)
        if unknown:  # e.g. based on a version from before a resume: nothing to compare against
            record["unknown_base"] = unknown
        return record

    def remember(self, rounds: Sequence[RoundResult]) -> None:
        """The global prompts of rounds closed before (a resumed run's), for updates based on them."""
        for result in rounds:
            self._by_version[result.version_after] = result.prompt

    async def _verdict(self, prompt: str, instruction: str) -> bool | None:
        """The judge's verdict; a call that failed after its retries is no verdict (the run goes on)."""
        try:
            reply = await self._judge.complete(retention_request(prompt, instruction), system=SYSTEM)
        except EngineError:
            return None
        return present(reply.text)

    def _instructions(self, update: Accepted) -> list[str]:
        return added_instructions(self._by_version[update.base_version], update.prompt)


__all__ = ["MAX_PER_CLIENT", "SYSTEM", "RetentionJudge", "added_instructions", "present", "retention_request",
           "tally"]
