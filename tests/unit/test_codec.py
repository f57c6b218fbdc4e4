"""The codec: every message kind round-trips; everything else is rejected with one error type and a reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbus.errors import LocalProtocolError, RemoteProtocolError
from fedbus.protocol.codec import Limits, MessageRejected, MessageTooLarge, decode, encode
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import (
    KINDS,
    DataSpec,
    GlobalState,
    Message,
    Metrics,
    Presence,
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
stats = st.builds(UpdateStats, steps=counts, accepted_steps=counts, batch_acc_before=st.floats(0, 1),
                  batch_acc_after=st.floats(0, 1), llm_calls=counts, tokens=counts, duration_s=nonneg)
BY_KIND: dict[str, st.SearchStrategy[Message]] = {
    "presence": st.builds(Presence, status=st.sampled_from(["online", "offline"]), engine=text, **envelope()),
    "global": st.builds(GlobalState, version=counts, prompt=text,
                        status=st.sampled_from(["waiting", "running", "finished"]), engine=text, data=data_specs,
                        rounds=counts, **envelope(st.just(AGGREGATOR))),
    "task": st.builds(Task, version=counts, prompt=text, local_steps=st.integers(1, 100),
                      batch_size=st.integers(1, 100), deadline_s=nonneg, **envelope()),
    "update": st.builds(Update, base_version=counts, prompt=text, stats=stats, **envelope()),
    "metrics": st.builds(Metrics, values=st.dictionaries(text, finite, max_size=5).map(lambda d: tuple(d.items())),
                         **envelope()),
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


json_values = st.recursive(st.none() | st.booleans() | st.integers() | finite | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
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
