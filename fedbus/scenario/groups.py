"""Parsing ``clients.groups``: speed, stragglers, availability, behaviour and network per group."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedbus.scenario.conditions import (
    BEHAVIOURS,
    EVENT_KINDS,
    LATENCY_KINDS,
    Availability,
    ClientGroup,
    Interval,
    Latency,
    Network,
    ScheduledEvent,
    Stragglers,
)
from fedbus.scenario.reader import Reader, at_least, one_of, valid_id, within

_GROUP = {"name", "count", "latency", "stragglers", "availability", "behaviour", "noise", "network"}
_LATENCY = {"kind", "value_s", "low_s", "high_s", "mean_s", "std_s", "median_s", "sigma", "values_s"}
LATENCY_NEEDS = {"constant": ("value_s",), "uniform": ("low_s", "high_s"), "normal": ("mean_s", "std_s"),
                  "lognormal": ("median_s", "sigma"), "trace": ("values_s",)}
_STRAGGLERS = {"fraction", "slowdown"}
_AVAILABILITY = {"dropout_p", "events", "online"}
_EVENT = {"kind", "at_s", "at_round", "duration_s", "rejoin_after_s"}
_NETWORK = {"delay_s", "jitter_s", "loss", "duplicate", "reorder", "partitions"}
_PROBABILITY = within(0.0, 1.0)
MAX_LATENCY_S = 1e9  # a trace's latency: ~30 years


def _items(r: Reader, value: Any, path: str) -> list[tuple[str, Mapping[str, Any]]]:
    if value is None:
        return []
    if not isinstance(value, Sequence) or isinstance(value, str):
        r.problem(path, f"must be a list, got {type(value).__name__}")
        return []
    out: list[tuple[str, Mapping[str, Any]]] = []
    for i, item in enumerate(value):
        if isinstance(item, Mapping):
            out.append((f"{path}[{i}]", item))
        else:
            r.problem(f"{path}[{i}]", f"must be a mapping, got {type(item).__name__}")
    return out


def _intervals(r: Reader, value: Any, path: str) -> tuple[Interval, ...]:
    out: list[Interval] = []
    for where, item in _items(r, value, path):
        r.unknown_keys(item, where, {"start_s", "end_s"})
        start = r.get(item, "start_s", where, float, check=at_least(0.0))
        end = r.get(item, "end_s", where, float, check=at_least(0.0))
        if isinstance(start, float) and isinstance(end, float):
            if end <= start:
                r.problem(f"{where}.end_s", "must be greater than start_s")
            else:
                out.append(Interval(start_s=start, end_s=end))
    return tuple(out)


def _latency(r: Reader, doc: Mapping[str, Any], path: str) -> Latency:
    d = r.section(doc, "latency", path, _LATENCY)
    where = f"{path}.latency"
    if not d:
        return Latency()
    kind = r.get(d, "kind", where, str, default="constant", check=one_of(LATENCY_KINDS))
    needs = LATENCY_NEEDS.get(kind or "", ())
    for needed in needs:
        if needed not in d:
            r.problem(f"{where}.{needed}", f"is required for kind {kind}")
    if kind in LATENCY_NEEDS:
        for other in sorted(set(d) - {"kind", *needs}):  # another kind's setting: a mistake, not a no-op
            r.problem(f"{where}.{other}", f"is not a setting of kind {kind} (it takes {', '.join(needs)})")
    values: tuple[float, ...] = ()
    raw = d.get("values_s")
    if raw is not None:
        if not isinstance(raw, list) or not raw:
            r.problem(f"{where}.values_s", "must be a non-empty list of numbers")
        else:
            for i, v in enumerate(raw):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_LATENCY_S:
                    r.problem(f"{where}.values_s[{i}]", f"must be a number within [0, {MAX_LATENCY_S:g}]")
            values = tuple(float(v) for v in raw
                           if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= MAX_LATENCY_S)
    nonneg = at_least(0.0)
    low, high = d.get("low_s"), d.get("high_s")
    if (kind == "uniform" and isinstance(low, int | float) and isinstance(high, int | float)
            and not isinstance(low, bool) and not isinstance(high, bool) and low > high):
        r.problem(f"{where}.high_s", f"must be at least low_s ({low:g}), got {high:g}")
    return Latency(
        kind=kind or "constant",
        value_s=r.get(d, "value_s", where, float, default=0.0, check=nonneg),
        low_s=r.get(d, "low_s", where, float, default=0.0, check=nonneg),
        high_s=r.get(d, "high_s", where, float, default=0.0, check=nonneg),
        mean_s=r.get(d, "mean_s", where, float, default=0.0, check=nonneg),
        std_s=r.get(d, "std_s", where, float, default=0.0, check=nonneg),
        median_s=r.get(d, "median_s", where, float, default=0.0, check=nonneg),
        # exp(sigma * a normal draw): sigma 1,000 overflows a float on a quarter of the draws
        sigma=r.get(d, "sigma", where, float, default=0.0, check=within(0.0, 10.0)),
        values_s=values,
    )


def _events(r: Reader, value: Any, path: str) -> tuple[ScheduledEvent, ...]:
    out: list[ScheduledEvent] = []
    for where, item in _items(r, value, path):
        r.unknown_keys(item, where, _EVENT)
        kind = r.get(item, "kind", where, str, check=one_of(EVENT_KINDS))
        at_s = r.get(item, "at_s", where, float, default=None, check=at_least(0.0))
        at_round = r.get(item, "at_round", where, int, default=None, check=at_least(1))
        if (at_s is None) == (at_round is None):
            r.problem(where, "needs exactly one of at_s or at_round")
        duration = r.get(item, "duration_s", where, float, default=0.0, check=at_least(0.0))
        rejoin = r.get(item, "rejoin_after_s", where, float, default=None, check=at_least(0.0))
        if kind == "hang" and not duration:
            r.problem(f"{where}.duration_s", "is required for a hang (how long it stops answering)")
        if kind == "hang" and rejoin is not None:
            r.problem(f"{where}.rejoin_after_s", "does not apply to a hang (it keeps its connection)")
        if kind in EVENT_KINDS:
            out.append(ScheduledEvent(kind=kind, at_s=at_s, at_round=at_round, duration_s=duration,
                                      rejoin_after_s=rejoin))
    return tuple(out)


def _group(r: Reader, doc: Mapping[str, Any], path: str) -> ClientGroup | None:
    r.unknown_keys(doc, path, _GROUP)
    name = r.get(doc, "name", path, str, check=valid_id)
    count = r.get(doc, "count", path, int, check=within(1, 10_000_000))
    latency = _latency(r, doc, path)
    s = r.section(doc, "stragglers", path, _STRAGGLERS)
    stragglers = Stragglers(
        fraction=r.get(s, "fraction", f"{path}.stragglers", float, default=0.0, check=_PROBABILITY),
        slowdown=r.get(s, "slowdown", f"{path}.stragglers", float, default=1.0, check=at_least(1.0)))
    a = r.section(doc, "availability", path, _AVAILABILITY)
    apath = f"{path}.availability"
    availability = Availability(
        dropout_p=r.get(a, "dropout_p", apath, float, default=0.0, check=_PROBABILITY),
        events=_events(r, a.get("events"), f"{apath}.events"),
        online=_intervals(r, a.get("online"), f"{apath}.online"))
    behaviour = r.get(doc, "behaviour", path, str, default="honest", check=one_of(BEHAVIOURS))
    noise = r.get(doc, "noise", path, float, default=0.3, check=_PROBABILITY)
    n = r.section(doc, "network", path, _NETWORK)
    npath = f"{path}.network"
    network = Network(
        delay_s=r.get(n, "delay_s", npath, float, default=0.0, check=at_least(0.0)),
        jitter_s=r.get(n, "jitter_s", npath, float, default=0.0, check=at_least(0.0)),
        loss=r.get(n, "loss", npath, float, default=0.0, check=within(0.0, 0.99)),
        duplicate=r.get(n, "duplicate", npath, float, default=0.0, check=_PROBABILITY),
        reorder=r.get(n, "reorder", npath, float, default=0.0, check=_PROBABILITY),
        partitions=_intervals(r, n.get("partitions"), f"{npath}.partitions"))
    if name is None or count is None:
        return None
    return ClientGroup(name=name, count=count, latency=latency, stragglers=stragglers, availability=availability,
                       behaviour=behaviour or "honest", noise=noise, network=network)


def read_groups(r: Reader, value: Any, path: str) -> tuple[ClientGroup, ...]:
    """Every group under ``path`` (``clients.groups``); problems go to ``r``."""
    groups = [g for where, item in _items(r, value, path) if (g := _group(r, item, where)) is not None]
    names = [g.name for g in groups]
    for i, name in enumerate(names):
        if name in names[:i]:
            r.problem(f"{path}[{i}].name", f"duplicate group name {name!r}")
    return tuple(groups)
