"""What a remote `fedbus client` prints for its events: a connection that ends for good does not promise to
reconnect (a client that gave up on a silent aggregator printed "...; reconnecting" and then exited 1)."""

from __future__ import annotations

import io

from fedbus.results.narration import LINES, Narrator


def test_a_connection_lost_for_a_while_says_it_reconnects() -> None:
    line = LINES["disconnected"]({"abrupt": True, "reason": "connection lost", "back_at": 12.5})
    assert line == "connection lost (connection lost); reconnecting"


def test_a_connection_ended_for_good_does_not_promise_to_reconnect() -> None:
    gave_up = "gave up: the aggregator of run r was silent for 3 s (it is never heard from); is the run still going?"
    line = LINES["disconnected"]({"abrupt": True, "reason": gave_up, "back_at": None})
    assert line == f"connection closed ({gave_up})" and "reconnecting" not in line
    assert LINES["disconnected"]({"abrupt": False, "reason": "run finished", "back_at": None}) is None


def test_the_narrator_prints_the_line_with_its_prefix() -> None:
    out = io.StringIO()
    narrator = Narrator(prefix="[bob] ", stream=out)
    narrator.record("disconnected", client="bob", abrupt=True, reason="crash", back_at=None)
    narrator.close()
    clock, _, text = out.getvalue().rstrip("\n").partition(" ")
    assert text == "[bob] connection closed (crash)" and len(clock) == 8, out.getvalue()
