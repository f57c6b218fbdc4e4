"""The codec: every message kind round-trips; everything else is rejected with one error type and a reason."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbus.errors import LocalProtocolError, RemoteProtocolError
from fedbus.protocol.codec import Limits, MessageRejected, MessageTooLarge, decode, encode, write_json
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PROMPT_CHARS,
    KINDS,
    MAX_DETAIL_CHARS,
    MAX_REASON_CHARS,
    DataSpec,
    Failure,
    GlobalState,
    Message,
    Metrics,
    Presence,
    Receipt,
    Task,
    Update,
    UpdateStats,
)

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
counts = st.integers(0, 2**53)
finite = st.floats(allow_nan=False, allow_infinity=False)
nonneg = st.floats(0.0, 1e9, allow_nan=False)
text = st.text(max_size=300)


def envelope(client: st.SearchStrategy[str] = ids) -> dict[str, st.SearchStrategy[object]]:
    return {"run": ids, "round": counts, "client": client, "msg_id": st.text(min_size=1, max_size=128),
            "sent": finite}


data_specs = st.builds(DataSpec, task=text, seed=counts, num_shards=st.integers(1, 1000),
                       train_size=st.integers(1, 10**6), val_size=st.integers(1, 10**6),
                       test_size=st.integers(1, 10**6), partition=text)
limits = {"max_prompt_chars": st.integers(1, 10**7), "max_message_bytes": st.integers(1, 10**9)}
receipts = st.one_of(
    st.builds(Receipt, update_id=st.text(min_size=1, max_size=128), outcome=st.just("accepted"), reason=st.just(""),
              detail=st.text(max_size=MAX_DETAIL_CHARS), **envelope()),
    st.builds(Receipt, update_id=st.text(min_size=1, max_size=128), outcome=st.just("rejected"),
              reason=st.text(min_size=1, max_size=MAX_REASON_CHARS), detail=st.text(max_size=MAX_DETAIL_CHARS),
              **envelope()))
stats = st.builds(UpdateStats, steps=counts, accepted_steps=counts, batch_acc_before=st.floats(0, 1),
                  batch_acc_after=st.floats(0, 1), llm_calls=counts, tokens=counts, duration_s=nonneg)
BY_KIND: dict[str, st.SearchStrategy[Message]] = {
    "presence": st.builds(Presence, status=st.sampled_from(["online", "offline"]), engine=text, **envelope()),
    "global": st.builds(GlobalState, version=counts, prompt=text,
                        status=st.sampled_from(["waiting", "running", "finished"]), engine=text, data=data_specs,
                        rounds=counts, **limits, **envelope(st.just(AGGREGATOR))),
    "task": st.builds(Task, version=counts, prompt=text, local_steps=st.integers(1, 100),
                      batch_size=st.integers(1, 100), deadline_s=nonneg, **limits, **envelope()),
    "update": st.builds(Update, base_version=counts, prompt=text, stats=stats, **envelope()),
    "metrics": st.builds(Metrics, values=st.dictionaries(text, finite, max_size=5).map(lambda d: tuple(d.items())),
                         **envelope()),
    "receipt": receipts,
    "failure": st.builds(Failure, base_version=counts, reason=st.text(max_size=MAX_DETAIL_CHARS),
                         error_type=st.text(max_size=MAX_REASON_CHARS), **envelope()),
}
messages: st.SearchStrategy[Message] = st.one_of(*BY_KIND.values())


def test_every_kind_has_a_strategy() -> None:
    assert set(BY_KIND) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
@given(data=st.data())
def test_every_message_kind_round_trips(kind: str, data: st.DataObject) -> None:
    """Every kind decodes to an equal message of the same class, and its envelope names the kind."""
    message = data.draw(BY_KIND[kind])
    decoded = decode(encode(message))
    assert decoded == message and type(decoded) is KINDS[kind]
    assert json.loads(encode(message))["kind"] == kind


@given(messages)
def test_encoding_is_compact_utf8_json_with_the_envelope(message: Message) -> None:
    document = json.loads(encode(message).decode("utf-8"))
    assert document["v"] == 1
    assert KINDS[document["kind"]] is type(message)
    assert (document["run"], document["client"], document["id"]) == (message.run, message.client, message.msg_id)


def sample_update(**overrides: object) -> dict[str, object]:
    document = json.loads(encode(Update(
        run="r1", round=2, client="c1", msg_id="c1-1", sent=1.5, base_version=1, prompt="Think.",
        stats=UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.5, batch_acc_after=1.0, llm_calls=3,
                          tokens=40, duration_s=0.2))))
    document.update(overrides)
    return document


def rejected(payload: bytes, limits: Limits | None = None) -> str:
    with pytest.raises(MessageRejected) as info:
        decode(payload, limits or Limits())
    assert isinstance(info.value, RemoteProtocolError)
    return info.value.reason


def raw(document: object) -> bytes:
    return json.dumps(document).encode()


def test_a_valid_update_decodes() -> None:
    assert isinstance(decode(raw(sample_update())), Update)


def test_the_same_bytes_decode_once_and_the_limits_still_apply_to_every_copy() -> None:
    document = sample_update()
    document["body"]["prompt"] = "x" * 5000
    payload = raw(document)
    first = decode(payload)
    assert decode(bytes(bytearray(payload))) is first  # a broadcast's copies share one frozen message
    assert rejected(payload, Limits(max_bytes=4096)) == "oversized"  # remembered under other limits only
    assert decode(bytearray(payload)) is first


def test_oversized_payload_is_rejected_before_parsing() -> None:
    assert rejected(b"{" * 1000, Limits(max_bytes=999)) == "oversized"
    assert rejected(raw(sample_update(body={"prompt": "x" * 5000})), Limits(max_bytes=4096)) == "oversized"


@pytest.mark.parametrize("depth", [9, 50, 100_000])
def test_deep_nesting_is_rejected(depth: int) -> None:
    nested = "[" * depth + "]" * depth
    payload = json.dumps(sample_update()).replace('"stats":', f'"junk":{nested},"stats":').encode()
    assert rejected(payload, Limits(max_bytes=10**6)) == "too-deep"


def test_nesting_within_the_limit_is_accepted() -> None:
    payload = json.dumps(sample_update()).replace('"stats":', '"junk":[[[]]],"stats":').encode()
    assert isinstance(decode(payload), Update)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_rejected(constant: str) -> None:
    payload = json.dumps(sample_update()).replace('"sent": 1.5', f'"sent": {constant}').encode()
    assert rejected(payload) == "non-finite"


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff\xfe", "not-json"),
    (b"not json", "not-json"),
    (b"", "not-json"),
    (b"[1, 2]", "bad-envelope"),
    (b'"update"', "bad-envelope"),
    (raw(sample_update(v=2)), "bad-version"),
    (raw(sample_update(v=True)), "bad-version"),
    (raw(sample_update(v=1.0)), "bad-version"),
    (raw(sample_update(v="1")), "bad-version"),
    (raw(sample_update(kind="gossip")), "unknown-kind"),
    (raw(sample_update(kind=["update"])), "unknown-kind"),
    (raw(sample_update(kind={"a": 1})), "unknown-kind"),
    (raw(sample_update(body=[])), "bad-envelope"),
    (raw(sample_update(round=-1)), "bad-field"),
    (raw(sample_update(round=True)), "bad-field"),
    (raw(sample_update(client="../etc")), "bad-field"),
    (raw(sample_update(client="c1\n")), "bad-field"),
    (raw(sample_update(client="c1/x")), "bad-field"),
    (raw(sample_update(client="+")), "bad-field"),
    (raw(sample_update(id="")), "bad-field"),
    (raw(sample_update(sent="yesterday")), "bad-field"),
    (raw(sample_update(sent=10**400)), "bad-field"),  # math.isfinite() raised OverflowError: a crashed aggregator
    (raw(sample_update(sent=-(10**400))), "bad-field"),
    (raw(sample_update(round=2**64)), "bad-field"),
    (raw(sample_update(body={"prompt": "p", "base_version": 10**400, "stats": {}})), "bad-field"),
    (raw(sample_update(body={"prompt": "p", "base_version": 0})), "bad-field"),
    (raw(sample_update(body={"prompt": 3, "base_version": 0, "stats": {}})), "bad-field"),
])
def test_malformed_documents_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    assert rejected(payload) == reason


def test_wrong_field_types_in_stats_are_rejected() -> None:
    document = sample_update()
    document["body"]["stats"]["batch_acc_after"] = 1.5  # type: ignore[index]
    assert rejected(raw(document)) == "bad-field"


def test_global_state_must_come_from_the_aggregator() -> None:
    document = json.loads(encode(GlobalState(
        run="r1", round=0, client=AGGREGATOR, msg_id="a-1", sent=0.0, version=0, prompt="p", status="waiting",
        engine="surrogate", rounds=3, data=DataSpec(task="t", seed=1, num_shards=1, train_size=1, val_size=1,
                                                   test_size=1))))
    document["client"] = "c1"
    assert rejected(raw(document)) == "bad-field"


@pytest.mark.parametrize("where", ["id", "prompt", "key", "upper-case"])
def test_half_a_surrogate_pair_is_not_text(where: str) -> None:
    """JSON can escape half a surrogate pair, but no UTF-8 log or file can hold one: an aggregator that took such a
    message id crashed writing its event log. Any string (or key) holding one is not-json; an escaped whole pair
    and raw UTF-8 are the text they spell."""
    lone = "x\ud800"
    document = sample_update(**{"id": lone} if where == "id" else {})
    if where == "prompt":
        document["body"]["prompt"] = lone  # type: ignore[index]
    if where == "key":
        document["body"]["stats"][lone] = 1  # type: ignore[index]
    payload = raw(document)
    if where == "upper-case":  # JSON's hex digits may be either case
        payload = raw(sample_update(id="x\udc00")).replace(b"\\udc00", b"\\uDC00")
        assert b"\\uDC00" in payload
    assert b"\\ud" in payload.lower() and rejected(payload) == "not-json"
    pair = sample_update()
    pair["body"]["prompt"] = "Smile \U0001F600, caf\u00e9."  # type: ignore[index]
    escaped, plain = raw(pair), json.dumps(pair, ensure_ascii=False).encode()
    assert b"\\ud83d\\ude00" in escaped
    message = decode(escaped)
    assert message == decode(plain) and isinstance(message, Update) and message.prompt == "Smile \U0001F600, caf\u00e9."


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_message_rejected(payload: bytes) -> None:
    reasons = {"oversized", "not-json", "non-finite", "too-deep", "bad-envelope", "bad-version", "unknown-kind",
               "bad-field"}
    try:
        message = decode(payload)
    except MessageRejected as exc:
        reason: str | None = exc.reason
    else:  # bytes that happen to be a valid message are fine too: then they are one
        reason = None
        assert decode(encode(message)) == message
    assert reason is None or reason in reasons


# any code point, surrogates too: JSON escapes can spell half a pair, which once got past decode and crashed encode
any_text = st.text(st.characters(exclude_categories=()) | st.characters(categories=["Cs"]), max_size=10)
huge = st.sampled_from([10**400, -(10**400), 2**64, 2**53 + 1])  # past any float: OverflowError in isfinite()
json_values = st.recursive(st.none() | st.booleans() | st.integers() | huge | finite | any_text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner,
                                                                                         max_size=3), max_leaves=20)


@given(st.dictionaries(st.sampled_from(["v", "kind", "run", "round", "client", "id", "sent", "body"]), json_values))
def test_arbitrary_json_objects_never_raise_anything_but_message_rejected(document: dict[str, object]) -> None:
    try:
        message = decode(raw(document))
    except MessageRejected as exc:
        reason = exc.reason
    else:
        reason = "decoded" if decode(encode(message)) == message else ""
    assert reason


def _string_slots(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _string_slots(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _string_slots(v, (*path, i))]
    return []


@given(messages, st.data())
def test_what_decode_takes_encode_writes_whatever_a_string_holds(message: Message, data: st.DataObject) -> None:
    """Any string of a valid message replaced by one holding half a surrogate pair (JSON's escapes spell them),
    among any other code points: the codec rejects the message, or what it decoded encodes again to an equal
    message. An id with half a pair once decoded, and the aggregator crashed writing it."""
    document = json.loads(encode(message))
    slots = [path for path in _string_slots(document) if path != ("kind",)]
    path = data.draw(st.sampled_from(slots), label="string")
    parent: Any = document
    for key in path[:-1]:
        parent = parent[key]
    half = st.characters(categories=["Cs"])
    parent[path[-1]] = data.draw(st.tuples(any_text, half, any_text).map("".join), label="new value")
    try:
        decoded = decode(raw(document))
    except MessageRejected:
        return
    assert decode(encode(decoded)) == decoded


def test_encoding_a_non_message_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        encode("not a message")  # type: ignore[arg-type]


def test_duplicate_metric_names_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="unique"):
        Metrics(run="r", round=0, client="c", msg_id="m", sent=0.0, values=(("acc", 0.5), ("acc", 0.6)))


def test_encode_refuses_a_message_over_the_size_limit() -> None:
    """The sender checks max_bytes too: one byte over is MessageTooLarge naming both sizes; at the limit it passes."""
    message = Update(run="r", round=1, client="c", msg_id="c-1", sent=0.0, base_version=0, prompt="x" * 500,
                     stats=UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=1.0,
                                       llm_calls=1, tokens=1, duration_s=0.1))
    size = len(encode(message))
    assert encode(message, Limits(max_bytes=size)) == encode(message)
    with pytest.raises(MessageTooLarge, match=f"update of {size} bytes exceeds the run's max_message_bytes "
                                              f"\\({size - 1}\\)"):
        encode(message, Limits(max_bytes=size - 1))


def sample_task() -> dict[str, object]:
    document: dict[str, object] = json.loads(encode(Task(
        run="r1", round=1, client="c1", msg_id="a-2", sent=0.0, version=0, prompt="p", local_steps=1, batch_size=1,
        deadline_s=5.0, max_prompt_chars=1200, max_message_bytes=9000)))
    return document


def test_tasks_and_globals_carry_the_runs_limits() -> None:
    """A task says the run's max_prompt_chars and max_message_bytes in its body, and they decode back."""
    document = sample_task()
    assert document["body"]["max_prompt_chars"] == 1200 and document["body"]["max_message_bytes"] == 9000  # type: ignore[index]
    task = decode(raw(document))
    assert isinstance(task, Task) and (task.max_prompt_chars, task.max_message_bytes) == (1200, 9000)


def test_a_task_or_global_without_limits_gets_the_protocols_defaults() -> None:
    """An aggregator older than the limit fields: its task decodes with the defaults (20,000 chars, 256 KiB)."""
    document = sample_task()
    body = document["body"]
    assert isinstance(body, dict)
    del body["max_prompt_chars"], body["max_message_bytes"]
    task = decode(raw(document))
    assert isinstance(task, Task)
    assert (task.max_prompt_chars, task.max_message_bytes) == (DEFAULT_MAX_PROMPT_CHARS, DEFAULT_MAX_MESSAGE_BYTES)
    assert (DEFAULT_MAX_PROMPT_CHARS, DEFAULT_MAX_MESSAGE_BYTES) == (20_000, 262_144)
    state = json.loads(encode(GlobalState(
        run="r1", round=0, client=AGGREGATOR, msg_id="a-1", sent=0.0, version=0, prompt="p", status="waiting",
        engine="surrogate", rounds=3, data=DataSpec(task="t", seed=1, num_shards=1, train_size=1, val_size=1,
                                                   test_size=1))))
    del state["body"]["max_prompt_chars"], state["body"]["max_message_bytes"]
    decoded = decode(raw(state))
    assert isinstance(decoded, GlobalState) and decoded.max_prompt_chars == DEFAULT_MAX_PROMPT_CHARS


@pytest.mark.parametrize(("field", "value"), [("max_prompt_chars", 0), ("max_message_bytes", 0),
                                              ("max_prompt_chars", 1.5), ("max_message_bytes", True),
                                              ("max_prompt_chars", "20000")])
def test_limits_that_are_not_positive_integers_are_bad_fields(field: str, value: object) -> None:
    document = sample_task()
    document["body"][field] = value  # type: ignore[index]
    assert rejected(raw(document)) == "bad-field"


def test_a_receipt_round_trips_with_its_body_fields() -> None:
    """A receipt's body is update_id, outcome, reason and detail."""
    receipt = Receipt(run="r1", round=2, client="c1", msg_id="a-9", sent=3.0, update_id="c1-0-4", outcome="rejected",
                      reason="stale-round", detail="round 2 is over (current 3)")
    document = json.loads(encode(receipt))
    assert document["kind"] == "receipt" and document["body"] == {
        "update_id": "c1-0-4", "outcome": "rejected", "reason": "stale-round", "detail": "round 2 is over (current 3)"}
    assert decode(encode(receipt)) == receipt


@pytest.mark.parametrize(("body", "why"), [
    ({"update_id": "u", "outcome": "accepted", "reason": "late", "detail": ""}, "reason must be empty"),
    ({"update_id": "u", "outcome": "rejected", "reason": "", "detail": ""}, "reason must be empty"),
    ({"update_id": "u", "outcome": "maybe", "reason": "", "detail": ""}, "outcome"),
    ({"update_id": "", "outcome": "accepted", "reason": "", "detail": ""}, "update_id"),
    ({"update_id": "u", "outcome": "accepted", "reason": "", "detail": "x" * (MAX_DETAIL_CHARS + 1)}, "detail"),
    ({"update_id": "u", "outcome": "rejected", "reason": "r" * (MAX_REASON_CHARS + 1), "detail": ""}, "reason"),
    ({"update_id": "u", "outcome": "accepted", "reason": ""}, "detail"),
])
def test_a_receipt_that_contradicts_itself_is_a_bad_field(body: dict[str, object], why: str) -> None:
    """An accepted receipt has no reason, a rejected one has one; outcomes, ids and lengths are checked."""
    document = {"v": 1, "kind": "receipt", "run": "r1", "round": 1, "client": "c1", "id": "a-1", "sent": 0.0,
                "body": body}
    with pytest.raises(MessageRejected, match=why) as info:
        decode(raw(document))
    assert info.value.reason == "bad-field"


def test_a_failure_round_trips_and_its_texts_are_bounded() -> None:
    """A failure report carries base_version, reason (at most 300 characters) and error_type (at most 64)."""
    failure = Failure(run="r1", round=2, client="c1", msg_id="c1-0-5", sent=1.0, base_version=1,
                      reason="HTTP 500 after 2 attempts", error_type="EngineError")
    document = json.loads(encode(failure))
    assert document["kind"] == "failure" and document["body"] == {
        "base_version": 1, "reason": "HTTP 500 after 2 attempts", "error_type": "EngineError"}
    assert decode(encode(failure)) == failure
    for field, size in (("reason", MAX_DETAIL_CHARS), ("error_type", MAX_REASON_CHARS)):
        document["body"][field] = "x" * (size + 1)
        assert rejected(raw(document)) == "bad-field"
        document["body"][field] = "x" * size
        assert isinstance(decode(raw(document)), Failure)


def test_every_example_in_the_protocol_document_is_what_the_codec_writes() -> None:
    """docs/PROTOCOL.md promises its JSON examples are the exact output of codec.encode: each decodes, and
    encodes back to the same bytes; every kind has one."""
    document = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
    if not document.exists():  # bench/mutation.py runs a copy of tests/ without docs/
        pytest.skip("docs/PROTOCOL.md is not beside this copy of the tests")
    text = document.read_text(encoding="utf-8")
    examples = re.findall(r"```json\n(.*?)\n```", text, flags=re.S)
    kinds = set()
    for example in examples:
        message = decode(example.encode("utf-8"))
        assert encode(message).decode("utf-8") == example
        kinds.add(json.loads(example)["kind"])
    assert kinds == set(KINDS)


# ------------------------------------------------------------------------------------------- the JSON writer
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@given(document=st.dictionaries(st.text(max_size=8), _json_values, max_size=6))
def test_the_writer_gives_what_json_reads_back_exactly(document: dict[str, object]) -> None:
    """orjson writes where its rules are json's; past them (a None, an integer beyond 64 bits) json writes: either
    way the bytes are compact UTF-8 that read back to the same document (lone surrogates aside: refused)."""
    try:
        payload = write_json(document)
    except ValueError:  # a lone surrogate: UTF-8 cannot carry it, json.dumps(...).encode() refuses it too
        with pytest.raises(UnicodeEncodeError):
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        return
    assert json.loads(payload) == document
    assert payload == write_json(json.loads(payload))


def test_the_writer_refuses_nan_unless_asked_and_keeps_big_integers() -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json({"loss": float("nan")})
    assert write_json({"loss": float("nan")}, allow_nan=True) == b'{"loss":NaN}'
    assert write_json({"n": 2**70, "s": "é"}) == f'{{"n":{2**70},"s":"é"}}'.encode()
    assert write_json({"a": [1, 2.5], "b": None}) == b'{"a":[1,2.5],"b":null}'
