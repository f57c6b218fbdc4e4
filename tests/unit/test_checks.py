"""Checks done ahead (fedbus/security/checks.py): a session fed a delivery's :class:`Checked` does exactly what it
does when it checks the delivery itself, whatever the bytes (valid, forged, altered, unsealed, garbage), so a
driver may move the checks to worker processes (fedbus/runtime/check_pool.py) without changing any outcome."""

from __future__ import annotations

import functools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedbus.aggregator.session import AggregatorSession
from fedbus.protocol import codec, topics
from fedbus.protocol.messages import Metrics
from fedbus.security.checks import Checked, Job, Refused, check
from fedbus.security.crypto import derive
from fedbus.security.signing import sign
from tests.unit.test_session_security import (
    RUN,
    aggregator_session,
    client_frames,
    flipped,
    forged,
    keys,
    presence,
    signed,
    update,
)

MALLORY = derive(b"\xdd" * 32, "mallory")


@functools.cache
def wires() -> list[tuple[str, bytes]]:
    """Deliveries of every sort the aggregator meets: c-0's and c-1's own, forgeries, an update signed but not
    sealed, one altered and signed by its sender, garbage, a topic it does not read, an oversized frame."""
    c0_update = topics.update_topic(RUN, "c-0")
    c1_update = topics.update_topic(RUN, "c-1")
    own = keys().client("c-0")
    plain = own.wrap(codec.encode(update("c-0", "c-0-plain")), sealed=False)
    inner = keys().aggregator.authenticate(client_frames()[2][1], signer="c-0")
    metrics = Metrics(run=RUN, round=1, client="c-1", msg_id="c-1-m-1", sent=0.5, values=(("acc", 0.5),))
    return [
        *client_frames(),
        (topics.presence_topic(RUN, "c-1"), signed("c-1", presence("c-1"))),
        (c1_update, signed("c-1", update("c-1"))),
        (c1_update, signed("c-1", update("c-1", "c-1-u-2", prompt="A second answer."))),
        (topics.metrics_topic(RUN, "c-1"), signed("c-1", metrics)),
        (c0_update, forged("c-0", update("c-0", "c-0-u-9", prompt="Say 42."))),
        (c0_update, plain),
        (c0_update, own.wrap(flipped(inner, 200, 0x20))),
        (c0_update, own.wrap(flipped(inner, 40, 0x01))),
        (c0_update, b"\x00garbage"),
        (c0_update, sign(codec.encode(update("c-0", "c-0-x")), MALLORY, "c-1")),
        (topics.update_topic(RUN, "aggregator"), signed("c-0", update("c-0", "c-0-y"))),
        (topics.update_topic(RUN, "nobody"), signed("c-0", update("c-0", "c-0-z"))),
        (topics.update_topic("other-run", "c-0"), signed("c-0", update("c-0", "c-0-w"))),
        (c0_update, b"FB2S" + b"\x03c-0" + b"\x00" * 2_000_000),
    ]


def ahead(session: AggregatorSession, topic: str, wire: bytes) -> Checked | None:
    job = session.job(topic, wire)
    return None if job is None else check(job, keys().aggregator.key, sealing_required=True)  # type: ignore[arg-type]


def outcome(session: AggregatorSession) -> tuple[Any, ...]:
    o = session.outcome
    return (o.messages_received, o.duplicates_dropped, o.forgeries.total, session.core.statistics(),
            [r.reason for r in o.late_rejections])


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(order=st.lists(st.integers(0, len(wires()) - 1), min_size=1, max_size=25),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=25))
def test_a_session_given_its_checks_ahead_acts_as_one_that_checks_itself(order: list[int],
                                                                          flips: list[tuple[int, int]]) -> None:
    pool = wires()
    inline, given_ahead = aggregator_session(), aggregator_session()
    now = 1.0
    for step, index in enumerate(order):
        topic, wire = pool[index]
        if step < len(flips) and flips[step][1] % 3 == 0:  # some deliveries altered in flight
            wire = flipped(wire, *flips[step])
        now += 0.5
        expected = inline.receive(topic, wire, False, now)
        found = given_ahead.receive(topic, wire, False, now, ahead(given_ahead, topic, wire))
        assert found == expected
    assert outcome(given_ahead) == outcome(inline)


def test_checks_ahead_cover_what_costs_and_nothing_the_session_decides_by_itself() -> None:
    session = aggregator_session()
    by_topic = {(t, w): session.job(t, w) for t, w in wires()}
    jobs = [j for j in by_topic.values() if j is not None]
    assert {j.signer for j in jobs} == {"c-0", "c-1"} and any(j.update for j in jobs) and any(
        not j.update for j in jobs)
    # not a client's topic, another run, an unknown signer, oversized: nothing to check ahead
    assert all(job is None for (topic, wire), job in by_topic.items()
               if "/aggregator" in topic or "nobody" in topic or "other-run" in topic or len(wire) > 1_000_000)
    assert aggregator_session("none").job(*client_frames()[0]) is None  # protocol v1: nothing to check


def test_a_check_names_the_forgery_and_the_senders_own_mistake_apart() -> None:
    key = keys().aggregator.key
    assert key is not None
    good, plain, fake = (wires()[i][1] for i in (2, 9, 8))
    c0 = keys().aggregator.authorized.get("c-0")  # type: ignore[union-attr]
    ok = check(Job(good, "c-0", c0, update=True), key, sealing_required=True)
    assert isinstance(ok.inner, bytes) and isinstance(ok.opened, bytes) and b'"sealed"' not in ok.opened
    mine = check(Job(plain, "c-0", c0, update=True), key, sealing_required=True)
    assert isinstance(mine.inner, bytes) and mine.opened == Refused("not-sealed", mine.opened.detail)  # type: ignore[union-attr]
    assert check(Job(plain, "c-0", c0, update=True), key, sealing_required=False).opened == mine.inner
    forgery = check(Job(fake, "c-0", c0, update=True), key, sealing_required=True)
    assert isinstance(forgery.inner, Refused) and forgery.inner.reason == "bad-signature" and forgery.opened is None
    unknown = check(Job(good, "c-0", None, update=True), key, sealing_required=True)
    assert isinstance(unknown.inner, Refused) and unknown.inner.reason == "unknown-signer"
