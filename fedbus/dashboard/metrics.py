"""``/metrics``: the dashboard's state in Prometheus' text exposition format (version 0.0.4). Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fedbus.dashboard.state import STATES, DashboardState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def render(state: DashboardState) -> str:
    """Every metric, with HELP and TYPE lines; labels escaped as the format requires."""
    run = str(state.header.get("run", ""))
    base = {"run": run} if run else {}
    lines: list[str] = []
    _metric(lines, "fedbus_rounds_closed_total", "counter", "Rounds the aggregator closed.",
            [(base, state.rounds_closed)])
    _metric(lines, "fedbus_updates_accepted_total", "counter", "Client updates that entered an aggregate.",
            [(base, state.updates_accepted)])
    _metric(lines, "fedbus_updates_rejected_total", "counter", "Client updates rejected, by reason.",
            [({**base, "reason": reason}, n) for reason, n in sorted(state.updates_rejected.items())])
    _metric(lines, "fedbus_failures_reported_total", "counter", "Failure reports from clients, by reason.",
            [({**base, "reason": reason}, n) for reason, n in sorted(state.failures.items())])
    view = state.view()["counters"]
    _metric(lines, "fedbus_clients_connected", "gauge", "Clients the run has seen (known to the aggregator).",
            [(base, view["clients_known"])])
    _metric(lines, "fedbus_clients_live", "gauge", "Clients online now.", [(base, view["clients_live"])])
    by_state = state.clients_by_state()
    _metric(lines, "fedbus_clients", "gauge", "Clients by their state on the dashboard's timeline.",
            [({**base, "state": s}, by_state[s]) for s in STATES])
    _histogram(lines, "fedbus_round_duration_seconds",
               "Round durations, open to close, in scenario time (wall seconds x time_scale).",
               state.round_durations(), buckets=DURATION_BUCKETS, base=base)
    _histogram(lines, "fedbus_update_latency_seconds", "Task sent to update received, per client and round.",
               state.update_latencies, buckets=LATENCY_BUCKETS, base=base)
    _metric(lines, "fedbus_llm_calls_total", "counter", "LLM calls by role (client: local steps of accepted "
            "updates; aggregator: LLM merges).", [({**base, "role": r}, n) for r, n in sorted(state.llm_calls.items())])
    _metric(lines, "fedbus_llm_tokens_total", "counter", "LLM tokens by role, as the updates and merges report them.",
            [({**base, "role": r}, n) for r, n in sorted(state.tokens.items())])
    _metric(lines, "fedbus_bus_messages_total", "counter", "Messages on the bus, by direction as observed.",
            [({**base, "direction": d}, n) for d, n in sorted(state.bus_messages.items())])
    if state.bus_bytes:
        _metric(lines, "fedbus_bus_bytes_total", "counter", "Payload bytes observed on the bus.",
                [({**base, "direction": d}, n) for d, n in sorted(state.bus_bytes.items())])
    accuracies = [v.val_accuracy for _n, v in sorted(state.rounds.items()) if v.val_accuracy is not None]
    if accuracies:
        _metric(lines, "fedbus_validation_accuracy", "gauge", "Validation accuracy of the latest scored round.",
                [(base, accuracies[-1])])
    return "\n".join(lines) + "\n"


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _metric(lines: list[str], name: str, kind: str, help_text: str,
            samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples]


def _histogram(lines: list[str], name: str, help_text: str, values: list[float], *, buckets: tuple[float, ...],
               base: Mapping[str, str]) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for bound in buckets:
        count = sum(1 for v in values if v <= bound)
        lines.append(f"{name}_bucket{_labels({**base, 'le': repr(bound)})} {count}")
    lines.append(f"{name}_bucket{_labels({**base, 'le': '+Inf'})} {len(values)}")
    lines.append(f"{name}_sum{_labels(base)} {_number(float(sum(values)))}")
    lines.append(f"{name}_count{_labels(base)} {len(values)}")
