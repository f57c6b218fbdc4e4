"""Plain Hypothesis properties beside the machines: staleness weights and order-free buffered merging."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.aggregator.config import AggregatorConfig
from fedbus.aggregator.effects import Effect, Publish, Reduce
from fedbus.aggregator.events import ClientOffline, ClientOnline, Reduced, Started, UpdateReceived
from fedbus.aggregator.staleness import WEIGHTINGS, StalenessWeighting
from fedbus.aggregator.stream import StreamAggregator
from fedbus.protocol.messages import Task
from tests.stateful import DATA, INITIAL_PROMPT, MAX_CHARS, RUN, SENTENCES, make_update, reduce_and_check

PARAMETERS = st.floats(min_value=0.0, max_value=8.0, allow_nan=False)


@given(kind=st.sampled_from(WEIGHTINGS), a=PARAMETERS, b=PARAMETERS, s=st.integers(0, 500), more=st.integers(0, 500))
def test_staleness_weights_start_at_one_and_never_grow(kind: str, a: float, b: float, s: int, more: int) -> None:
    """Every weighting is 1 at staleness 0, stays in (0, 1] and is non-increasing in staleness."""
    weighting = StalenessWeighting(kind=kind, a=a, b=b)
    assert weighting.weight(0) == 1.0
    assert 0.0 < weighting.weight(s + more) <= weighting.weight(s) <= 1.0


def tasks_in(effects: list[Effect]) -> dict[str, Task]:
    return {e.message.client: e.message for e in effects if isinstance(e, Publish) and isinstance(e.message, Task)}


def buffered_reduce(order: list[int], prompts: list[str], seed: int, aged: bool) -> tuple[Reduce, str]:
    """Feed one update per client, in ``order``, to a fresh buffered core; return its Reduce and the merge.

    ``aged``: one aggregation first, then c0 rejoins, so c0 answers version 1 and the rest version 0
    (different staleness weights in one buffer).
    """
    k = len(prompts)
    clients = [f"c{i}" for i in range(k)]
    config = AggregatorConfig(run=RUN, rounds=3, expected_clients=k, initial_prompt=INITIAL_PROMPT,
                              engine="surrogate", data=DATA, min_clients=k, max_prompt_chars=MAX_CHARS,
                              mode="buffered", buffer_size=k, max_staleness=10)
    core = StreamAggregator(config, random.Random(seed))
    effects = core.handle(Started(now=0.0))
    for client in clients:
        effects += core.handle(ClientOnline(client=client, now=0.0))
    tasks = tasks_in(effects)
    if aged:
        for client in clients:
            task = tasks[client]
            effects = core.handle(UpdateReceived(update=make_update(
                client=client, rnd=task.round, base=task.version, prompt=f"Warm {client}.", msg_id=f"{client}-w"),
                now=1.0))
            tasks.update(tasks_in(effects))
        reduce = next(e for e in effects if isinstance(e, Reduce))
        core.handle(Reduced(round=reduce.round, prompt=reduce_and_check(reduce), now=2.0))
        core.handle(ClientOffline(client="c0", now=3.0))
        tasks.update(tasks_in(core.handle(ClientOnline(client="c0", now=3.0))))
    reduces: list[Reduce] = []
    for i in order:
        task = tasks[clients[i]]
        update = make_update(client=clients[i], rnd=task.round, base=task.version, prompt=prompts[i],
                             msg_id=f"{clients[i]}-final")
        reduces += [e for e in core.handle(UpdateReceived(update=update, now=5.0)) if isinstance(e, Reduce)]
    assert len(reduces) == 1
    return reduces[0], reduce_and_check(reduces[0])


@settings(max_examples=100, deadline=None)
@given(data=st.data(), k=st.integers(2, 4), seed=st.integers(0, 2**16), aged=st.booleans())
def test_buffered_reduce_ignores_arrival_order(data: st.DataObject, k: int, seed: int, aged: bool) -> None:
    """Buffered mode: the same K updates in two arrival orders give the same Reduce (prompts, weights) and merge."""
    prompts = data.draw(st.lists(st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=3).map(" ".join),
                                 min_size=k, max_size=k))
    first = data.draw(st.permutations(range(k)))
    second = data.draw(st.permutations(range(k)))
    assert buffered_reduce(first, prompts, seed, aged) == buffered_reduce(second, prompts, seed, aged)
