"""The fault plan: link fates, staleness weights and client behaviours (pure, seeded)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.aggregator.staleness import StalenessWeighting
from fedbus.aggregator.strategies import merge_weighted, sentences
from fedbus.faults import behaviour
from fedbus.faults.link import LinkFaults, LinkQueue
from fedbus.scenario.conditions import Interval, Latency, Network

probabilities = st.floats(min_value=0.0, max_value=0.95)


@given(loss=probabilities, dup=probabilities, reorder=probabilities, seed=st.integers(0, 2**32),
       client=st.sampled_from(["a", "b", "client-7"]))
@settings(max_examples=60)
def test_link_fates_replay_from_the_seed(loss: float, dup: float, reorder: float, seed: int, client: str) -> None:
    """The n-th message on a link meets the same fate in every replay with the same seed and client."""
    net = Network(loss=loss, duplicate=dup, reorder=reorder, delay_s=1.0, jitter_s=0.5)
    a = LinkFaults(net, seed, client, "up")
    b = LinkFaults(net, seed, client, "up")
    assert [a.next_fate() for _ in range(50)] == [b.next_fate() for _ in range(50)]


@given(seed=st.integers(0, 2**32))
@settings(max_examples=30)
def test_directions_and_clients_have_independent_streams(seed: int) -> None:
    """Up and down links, and different clients, draw from different streams."""
    net = Network(loss=0.5)
    def fates(client: str, direction: str) -> list[bool]:
        link = LinkFaults(net, seed, client, direction)
        return [link.next_fate().lost for _ in range(64)]
    assert fates("c", "up") != fates("c", "down")
    assert fates("c", "up") != fates("d", "up")


def test_fault_rates_match_the_settings() -> None:
    """Over many messages, loss, duplication and reordering happen at about the configured rates."""
    link = LinkFaults(Network(loss=0.2, duplicate=0.1, reorder=0.3), 1, "c", "up")
    fates = [link.next_fate() for _ in range(20_000)]
    lost = sum(f.lost for f in fates) / len(fates)
    delivered = [f for f in fates if not f.lost]
    dup = sum(f.copies == 2 for f in delivered) / len(delivered)
    held = sum(f.held for f in delivered) / len(delivered)
    assert abs(lost - 0.2) < 0.02
    assert abs(dup - 0.1) < 0.02
    assert abs(held - 0.3) < 0.02
    assert link.lost == sum(f.lost for f in fates)


@given(delay=st.floats(0, 100), jitter=st.floats(0, 100), seed=st.integers(0, 1000))
@settings(max_examples=50)
def test_delay_stays_within_jitter_and_never_negative(delay: float, jitter: float, seed: int) -> None:
    """A delivered message waits delay +- jitter, never less than zero."""
    link = LinkFaults(Network(delay_s=delay, jitter_s=jitter), seed, "c", "up")
    for _ in range(20):
        fate = link.next_fate()
        assert 0.0 <= fate.delay_s <= delay + jitter + 1e-9
        assert fate.delay_s >= delay - jitter - 1e-9


def test_a_perfect_link_delivers_everything_at_once() -> None:
    """With no faults configured, every message goes through once, undelayed."""
    link = LinkFaults(Network(), 0, "c", "up")
    assert all(f.copies == 1 and f.delay_s == 0 and not f.held for f in (link.next_fate() for _ in range(100)))


def test_partitions_are_half_open_intervals() -> None:
    """A link is partitioned on [start, end) and knows when the partition heals."""
    link = LinkFaults(Network(partitions=(Interval(start_s=10, end_s=20),)), 0, "c", "up")
    assert not link.partitioned(9.99)
    assert link.partitioned(10.0)
    assert link.partition_end(15.0) == 20
    assert not link.partitioned(20.0)


@given(kind=st.sampled_from(["constant", "polynomial", "hinge"]), a=st.floats(0, 5), b=st.floats(0, 10),
       s=st.integers(0, 1000))
def test_staleness_weights_never_increase(kind: str, a: float, b: float, s: int) -> None:
    """Every weighting is 1 at staleness 0, in (0, 1], and non-increasing in staleness."""
    w = StalenessWeighting(kind=kind, a=a, b=b)
    assert w.weight(0) == 1.0
    assert 0.0 < w.weight(s + 1) <= w.weight(s) <= 1.0


def test_merge_weighted_keeps_a_share_of_new_sentences() -> None:
    """Weight 1 keeps every new sentence, a small weight only the first, repeated sentences enter once."""
    current = "Base rule."
    full = merge_weighted(current, [("a", "Base rule. One. Two. Three. Four.", 1.0)], 1000)
    assert sentences(full) == ["Base rule.", "One.", "Two.", "Three.", "Four."]
    quarter = merge_weighted(current, [("a", "Base rule. One. Two. Three. Four.", 0.25)], 1000)
    assert sentences(quarter) == ["Base rule.", "One."]
    both = merge_weighted(current, [("a", "One.", 1.0), ("b", "One. Two.", 1.0)], 1000)
    assert sentences(both) == ["Base rule.", "One.", "Two."]


@given(p=st.floats(0, 1), seed=st.integers(0, 10_000))
@settings(max_examples=50)
def test_noisy_edits_are_seeded(p: float, seed: int) -> None:
    """A noisy client's edit is a function of its generator: the same seed garbles the same way."""
    prompt = "Count each item. Ignore distractors. Add step by step. Answer with a number."
    assert behaviour.noisy(prompt, random.Random(seed), p) == behaviour.noisy(prompt, random.Random(seed), p)
    if p == 0.0:
        assert behaviour.noisy(prompt, random.Random(seed), p) == prompt


def test_noisy_edits_garble_and_only_reuse_sentences() -> None:
    """Noise drops, duplicates or swaps sentences: often the text changes, and it never invents a sentence;
    another seed garbles another way."""
    prompt = "Count each item. Ignore distractors. Add step by step. Answer with a number. Check twice."
    original = set(behaviour.sentences(prompt))
    edits = [behaviour.noisy(prompt, random.Random(seed), 0.5) for seed in range(40)]
    assert sum(e != prompt for e in edits) >= 30, "p = 0.5 left most prompts untouched"
    assert len(set(edits)) >= 10, "the seed does not change the edit"
    assert all(set(behaviour.sentences(e)) <= original for e in edits)
    assert any(len(behaviour.sentences(e)) > 5 for e in edits), "no sentence was ever duplicated"
    assert any(len(behaviour.sentences(e)) < 5 for e in edits), "no sentence was ever dropped"
    assert any(behaviour.sentences(e) != behaviour.sentences(prompt) and sorted(behaviour.sentences(e))
               == sorted(behaviour.sentences(prompt)) for e in edits), "no two sentences were ever swapped"
    assert behaviour.noisy(prompt, random.Random(1), 1.0) != prompt


def test_hostile_prompts_are_recognised_as_hijacks() -> None:
    """Whatever a hostile client uploads carries a known hijacking or off-task instruction."""
    rng = random.Random(3)
    for _ in range(20):
        assert behaviour.is_hijack(behaviour.hostile("Count carefully.", rng))
    assert not behaviour.is_hijack("Count carefully. Answer with a number.")


def test_latency_distributions_sample_in_range() -> None:
    """Each latency kind draws values of the documented shape."""
    rng = random.Random(0)
    assert Latency(kind="constant", value_s=3).sample(rng) == 3
    assert all(2 <= Latency(kind="uniform", low_s=2, high_s=5).sample(rng) <= 5 for _ in range(100))
    assert all(Latency(kind="normal", mean_s=1, std_s=5).sample(rng) >= 0 for _ in range(100))
    draws = sorted(Latency(kind="lognormal", median_s=10, sigma=0.5).sample(rng) for _ in range(2001))
    assert 8.5 < draws[1000] < 11.5
    trace = Latency(kind="trace", values_s=(1.0, 2.0))
    assert [trace.sample(rng, i) for i in range(4)] == [1.0, 2.0, 1.0, 2.0]


def test_a_link_queue_holds_an_item_until_the_next_one_goes_out() -> None:
    queue: LinkQueue[str] = LinkQueue(LinkFaults(Network(reorder=1.0), 1, "c", "up"))
    assert queue.route("a").held
    queue.faults.network = Network()  # the next one is delivered, and the held one after it
    route = queue.route("b")
    assert route.deliveries == (("b", 1), ("a", 1)) and not route.held and not route.lost


def test_a_link_queue_loses_and_duplicates_as_the_plan_says() -> None:
    lost: LinkQueue[str] = LinkQueue(LinkFaults(Network(loss=1.0), 1, "c", "up"))
    assert lost.route("a").lost and lost.route("a").deliveries == ()
    doubled: LinkQueue[str] = LinkQueue(LinkFaults(Network(duplicate=1.0, delay_s=2.0), 1, "c", "up"))
    route = doubled.route("a")
    assert route.deliveries == (("a", 2),) and route.delay_s == 2.0
