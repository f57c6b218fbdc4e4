"""A remote client's keys over a run's life, journaled by the run's key ledger (``k: key`` lines), replayed as
``fedbus run --resume`` replays them: the replay must check every delivery with the key it was checked with live
and reach the state the run had, whatever happened to the client's line (rotated, revoked, put back, taken out
while the run was down), and say which clients to revoke because their line is gone now."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fedbus.aggregator.events import Event, Revoked, Started
from fedbus.aggregator.session import AggregatorSession
from fedbus.plan import make_core, run_security
from fedbus.protocol import codec, topics
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import Presence
from fedbus.runtime.journal import Journal, Resendable, delivery_line, event_line, read_journal, replay
from fedbus.runtime.run_keys import KeyLedger, RemoteKeys, first_keys, key_line, revoked_keys
from fedbus.scenario.loader import scenario_from_mapping
from fedbus.security.crypto import PrivateKey, derive, generate, random_bytes
from fedbus.security.keys import authorized_line
from fedbus.security.policy import Security

SCENARIO = scenario_from_mapping({"name": "keys", "rounds": 2, "task": {"name": "surrogate-skills"},
                                  "clients": {"count": 2, "remote": 1}})
RUN = "keys-1"


class Live:
    """A run's aggregator session fed by hand, journaling as the driver does: its key ledger, revocations at two
    looks, each delivery after the session saw it."""

    def __init__(self, tmp_path: Path, *, ledger: bool = True) -> None:
        self.secret = random_bytes(32)
        self.keys_file = tmp_path / "authorized_keys"
        self.keys_file.write_text("", encoding="utf-8")
        self.path = tmp_path / "journal.jsonl"
        self.journal = Journal(self.path)
        self.now = 0.0
        self.sent = 0
        self.session, self.remote = self.fresh()
        self.ledger = KeyLedger(self.journal, {}) if ledger else None
        if self.ledger is not None:
            self.remote.on_keys = self.ledger
            self.ledger(self.remote.entries())
        self.queued: list[Revoked] = []  # revocations waiting in the aggregator's queue
        self.remote.on_revoke = lambda clients: self.queued.extend(Revoked(client=c, now=self.now, key=k.text())
                                                                   for c, k in clients)
        self.feed(Started(now=0.0))

    def fresh(self) -> tuple[AggregatorSession, RemoteKeys]:
        remote = RemoteKeys([self.keys_file], clock=lambda: self.now)
        security = run_security(SCENARIO, self.secret, remote=remote)
        return AggregatorSession(make_core(SCENARIO, RUN), codec.Limits(max_bytes=SCENARIO.max_message_bytes),
                                 security=security.aggregator), remote

    def feed(self, event: Event) -> None:
        """As the driver's step: journaled, then handled; a revocation's client handed to the ledger."""
        self.journal.write(event_line(event))
        if isinstance(event, Revoked) and self.ledger is not None:
            self.ledger.revoked(event.client, self.remote.entries())
        self.session.handle(event)

    def lines(self, keys: dict[str, PrivateKey], *, looks: int = 2, settle: bool = True) -> None:
        """The authorized-keys file now holds these clients' keys; the aggregator looks (5 s apart), then takes
        the revocations queued meanwhile (unless not ``settle``: they wait in its queue)."""
        self.keys_file.write_text("".join(authorized_line(c, k.public) for c, k in keys.items()), encoding="utf-8")
        for _ in range(looks):
            self.now += 5
            self.remote.check()
        if settle:
            self.settle()

    def settle(self) -> None:
        for event in self.queued:
            self.feed(event)
        self.queued.clear()

    def send(self, key: PrivateKey) -> None:
        """mallory's 'online' presence signed with ``key``: accepted live."""
        self.sent += 1
        security = Security.for_client("mallory", key, derive(self.secret, AGGREGATOR).public, mode="signed+sealed")
        hello = Presence(run=RUN, round=0, client="mallory", msg_id=f"mallory-p-{self.sent}", sent=self.now,
                         status="online")
        topic = topics.presence_topic(RUN, "mallory")
        wire = security.wrap(codec.encode(hello, codec.Limits(max_bytes=SCENARIO.max_message_bytes)))
        self.session.receive(topic, wire, False, self.now)
        assert self.session.unread is None, self.session.unread
        self.journal.write(delivery_line(topic, wire, False, self.now))

    def resume(self) -> tuple[AggregatorSession, tuple[tuple[str, object], ...]]:
        """Replay the journal as `fedbus run --resume` does, with the file as it is now."""
        self.journal.close()
        lines = read_journal(self.path)
        again, remote = self.fresh()
        remote.replaying = revoked_keys(lines)
        remote.recorded = first_keys(lines)
        replay(again, lines, Resendable(sync=True), remote.revoked_now, remote.record)
        return again, remote.end_replay()


K1, K2 = generate(), generate()


def _rotated_then_revoked(live: Live) -> None:
    live.send(K1)
    live.lines({"mallory": K2})
    live.send(K2)
    live.lines({})


def _revoked_put_back_then_taken_out_while_down(live: Live) -> None:
    live.send(K1)
    live.lines({})
    live.lines({"mallory": K1})
    live.send(K1)
    live.keys_file.write_text("", encoding="utf-8")  # while the run is down


def _put_back_before_its_revocation_came_through(live: Live) -> None:
    """The line taken out, the revocation due, and the line put back while the revocation still waits in the
    aggregator's queue: the ledger journals the key again before the revocation's line, and must again after it."""
    live.send(K1)
    live.lines({}, settle=False)
    live.lines({"mallory": K1}, looks=1, settle=False)
    live.settle()
    live.send(K1)
    live.keys_file.write_text("", encoding="utf-8")  # while the run is down


def _taken_out_while_down(live: Live) -> None:
    live.send(K1)
    live.send(K1)
    live.keys_file.write_text("", encoding="utf-8")


CASES: dict[str, tuple[Callable[[Live], None], list[str]]] = {
    "rotated then revoked": (_rotated_then_revoked, []),
    "revoked, put back, taken out while down": (_revoked_put_back_then_taken_out_while_down, ["mallory"]),
    "taken out while down": (_taken_out_while_down, ["mallory"]),
    "put back before its revocation came through": (_put_back_before_its_revocation_came_through, ["mallory"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_replay_checks_each_delivery_with_the_key_it_had_live(tmp_path: Path, case: str) -> None:
    story, gone = CASES[case]
    live = Live(tmp_path)
    live.lines({"mallory": K1})
    story(live)
    again, left = live.resume()
    assert live.session.outcome.forgeries.total == again.outcome.forgeries.total == 0
    assert again.core.statistics() == live.session.core.statistics()
    assert [client for client, _key in left] == gone


def test_a_journal_begun_before_key_lines_checks_with_those_its_first_resume_wrote(tmp_path: Path) -> None:
    """A journal without key lines gets them at its first resume, after what they signed; at the next resume,
    after the line was taken out, the first key line of each client is in force from the start of the replay."""
    live = Live(tmp_path, ledger=False)
    live.lines({"mallory": K1})
    live.send(K1)
    live.journal.write(key_line("mallory", K1.public))  # what the first resume's ledger wrote
    live.keys_file.write_text("", encoding="utf-8")
    again, left = live.resume()
    assert again.outcome.forgeries.total == 0 and again.core.statistics() == live.session.core.statistics()
    assert [client for client, _key in left] == ["mallory"]


def test_the_ledger_journals_each_key_once_again_when_it_changes_and_again_when_put_back(tmp_path: Path) -> None:
    live = Live(tmp_path)
    live.lines({"mallory": K1})
    live.lines({"mallory": K1})
    live.lines({"mallory": K2})
    live.lines({})
    live.lines({"mallory": K2})
    live.journal.close()
    written = [line["key"] for line in read_journal(live.path) if line["k"] == "key"]
    assert written == [K1.public.text(), K2.public.text(), K2.public.text()]


def test_a_delivery_checked_ahead_with_a_key_since_replaced_is_checked_again_with_the_key_in_force(
        tmp_path: Path) -> None:
    """The check pool checks a batch with the keys of when it was sent; if mallory's line changed meanwhile, the
    ledger journaled the new key before the batch's deliveries, and a replay checks them with it. So the session
    takes a check ahead only if it used the key in force now: here K1's message, checked ahead with K1 after the
    line went to K2, is refused live as it will be on replay."""
    from dataclasses import replace

    from fedbus.security.checks import check

    live = Live(tmp_path)
    live.lines({"mallory": K1})
    security = Security.for_client("mallory", K1, derive(live.secret, AGGREGATOR).public, mode="signed+sealed")
    hello = Presence(run=RUN, round=0, client="mallory", msg_id="mallory-p-9", sent=live.now, status="online")
    topic = topics.presence_topic(RUN, "mallory")
    wire = security.wrap(codec.encode(hello, codec.Limits(max_bytes=SCENARIO.max_message_bytes)))
    job = live.session.job(topic, wire)  # a presence to the aggregator: signed in full, worth checking ahead
    assert job is not None
    ahead = replace(check(job, derive(live.secret, AGGREGATOR), sealing_required=True), key=job.key)
    assert isinstance(ahead.inner, bytes) and ahead.key == K1.public  # verified, with K1
    live.lines({"mallory": K2})
    live.session.receive(topic, wire, False, live.now, ahead)
    assert live.session.unread is not None and live.session.unread[0] == "forged"
    assert live.session.outcome.forgeries.by_reason == {"bad-signature": 1}
