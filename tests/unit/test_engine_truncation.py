"""Replies cut at max_tokens: the finish_reason is read, kept by the cache, counted, and a cut merge is not used."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fedbus.aggregator.effects import Reduce
from fedbus.aggregator.llm_merge import merge_request, merged_prompt
from fedbus.llm import Completion, EngineStatistics, Sampling, ScriptedEngine
from fedbus.llm.cache import CACHE_FILE, CachedEngine, ResponseCache
from fedbus.llm.openai_compat import _parse_reply
from fedbus.results.eventlog import EventLog
from fedbus.runtime.llm_run import LLMReducer

PROMPTS = (("client-0", "List every item."), ("client-1", "Count carefully."))


def test_the_finish_reason_is_read_from_the_reply() -> None:
    body = (b'{"choices": [{"message": {"content": "List every"}, "finish_reason": "length"}],'
            b' "usage": {"prompt_tokens": 3, "completion_tokens": 2}}')
    assert _parse_reply(body).finish_reason == "length"
    assert _parse_reply(b'{"choices": [{"message": {"content": "x"}}]}').finish_reason is None
    assert Completion(text="x", prompt_tokens=1, completion_tokens=1, finish_reason="length").truncated
    assert not Completion(text="x", prompt_tokens=1, completion_tokens=1, finish_reason="stop").truncated


def test_half_a_surrogate_pair_in_a_reply_becomes_the_replacement_character() -> None:
    """A server's JSON can escape half a surrogate pair; the reply becomes a prompt that messages, events.jsonl and
    summary.json write as UTF-8, which cannot hold one (it crashed a run at its next message). Each half becomes
    U+FFFD; a whole pair, escaped, stays the character it spells."""
    body = b'{"choices": [{"message": {"content": "ok \\ud800 then \\ud83d\\ude00 \\udfff"}}]}'
    text = _parse_reply(body).text
    assert text == "ok \ufffd then \U0001F600 \ufffd"
    assert text.encode("utf-8").decode("utf-8") == text


def test_a_cut_merge_is_not_a_prompt() -> None:
    tagged = "<MERGED_PROMPT>List every item.</MERGED_PROMPT>"
    for strategy, reply in (("summarize", "List every item and"), ("summarize_tagged", tagged)):
        request = merge_request(strategy, PROMPTS, 4000)
        assert merged_prompt(request, reply).prompt is not None
        cut = merged_prompt(request, reply, truncated=True)
        assert (cut.prompt, cut.problem) == (None, "truncated")


class _CutEngine(ScriptedEngine):
    """A scripted engine whose every reply the server cut at max_tokens."""

    async def complete(self, prompt: str, *, system: str | None = None) -> Completion:
        reply = self.reply(prompt, system=system)
        return Completion(text=reply.text, prompt_tokens=reply.prompt_tokens,
                          completion_tokens=reply.completion_tokens, finish_reason="length")


async def test_the_aggregator_falls_back_to_concat_on_a_cut_merge(tmp_path: Path) -> None:
    events = EventLog(tmp_path / "events.jsonl")
    reducer = LLMReducer(_CutEngine(["List every item and count"]), events)
    effect = Reduce(round=1, strategy="summarize", current_prompt="Answer.", prompts=PROMPTS, max_chars=4000)
    prompt = await reducer(effect)
    events.close()
    assert prompt == "List every item.\nCount carefully."  # the paper's concat, not the cut reply
    record = reducer.by_round[1]
    assert record["fallback"] == "concat (truncated)" and record["truncated"] is True
    assert '"problem":"truncated"' in (tmp_path / "events.jsonl").read_text()


async def test_a_resumed_run_recalls_the_merge_record_of_a_round_merged_but_not_closed(tmp_path: Path) -> None:
    """A run stopped between a round's merge (journaled) and its close: the resumed run redoes the evaluation,
    not the merge, and takes the merge's record (here its fallback) from events.jsonl; it was lost before, the
    round's `aggregation` None in summary.json. A closed round's record is not taken again."""
    events = EventLog(tmp_path / "events.jsonl")
    first = LLMReducer(_CutEngine(["List every item and count", "Count"]), events)
    for number in (1, 2):
        await first(Reduce(round=number, strategy="summarize", current_prompt="Answer.", prompts=PROMPTS,
                           max_chars=4000))
    events.close()
    resumed = LLMReducer(_CutEngine([]), EventLog(None))
    resumed.recall(tmp_path / "events.jsonl", closed={1})
    assert resumed.by_round == {2: first.by_round[2]} and resumed.by_round[2]["fallback"] == "concat (truncated)"


class _Counting:
    name, model, identity, sampling = "fake", "m", "fake", Sampling()

    def __init__(self, finish_reason: str | None) -> None:
        self.finish_reason = finish_reason
        self.calls = 0

    async def complete(self, prompt: str, *, system: str | None = None) -> Completion:
        self.calls += 1
        return Completion(text="cut reply", prompt_tokens=4, completion_tokens=2, finish_reason=self.finish_reason)

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(calls=self.calls)


async def test_a_cached_reply_keeps_its_finish_reason(tmp_path: Path) -> None:
    """A cut reply read back from the cache is still cut: the cache stores the finish_reason."""
    with ResponseCache(tmp_path) as cache:
        inner = _Counting("length")
        engine = CachedEngine(inner, cache)
        first = await engine.complete("merge these")
        second = await engine.complete("merge these")
        assert (first.cached, second.cached, inner.calls) == (False, True, 1)
        assert first.truncated and second.truncated and second.finish_reason == "length"
        assert engine.statistics().truncated == 2
    with ResponseCache(tmp_path) as cache:  # another process, later
        hit = await CachedEngine(_Counting("stop"), cache).complete("merge these")
        assert hit.cached and hit.finish_reason == "length"


async def test_a_cache_written_before_finish_reasons_still_opens(tmp_path: Path) -> None:
    """Old entries lack the column: the cache adds it, and reads their finish_reason as unknown (None)."""
    with sqlite3.connect(tmp_path / CACHE_FILE) as db:
        db.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, text TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, "
                   "completion_tokens INTEGER NOT NULL, engine TEXT NOT NULL, model TEXT NOT NULL, "
                   "created_at REAL NOT NULL)")
        db.execute("INSERT INTO responses VALUES ('old', 'an old reply', 3, 4, 'e', 'm', 0)")
    db.close()
    with ResponseCache(tmp_path) as cache:
        old = cache.get("old")
        assert old is not None and (old.text, old.finish_reason) == ("an old reply", None)
        cache.put("new", Completion(text="n", prompt_tokens=1, completion_tokens=1, finish_reason="length"),
                  engine="e", model="m")
        new = cache.get("new")
        assert new is not None and new.finish_reason == "length"
