"""One Flower simulation of fedbus's scale workload (bench/flower_app), timed; prints one JSON object.

    .venv/bin/python bench/flower_workload.py --clients 1000 --rounds 3 --fraction 1.0

``bench/scale.py --vs-flower`` launches it as a subprocess so that its Ray processes count in the measured
process tree. The JSON: ``wall_s`` (this process, from the start of ``main`` to the end of the simulation, Ray
start and stop included), ``startup_s`` (until the first round opened), ``rounds_wall_s`` (first round opened to
last round closed), ``round_s`` (each round), ``clients``, ``rounds``, ``fraction``, ``participants`` (per round),
``flwr`` (its version). Needs ``pip install -e '.[bench]'`` (flwr with its simulation extra, Ray).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

APP = Path(__file__).resolve().parent / "flower_app"


def run(clients: int, rounds: int, fraction: float, *, max_chars: int, seed: int,
        cpus_per_client: float) -> dict[str, object]:
    sys.path.insert(0, str(APP))
    started = time.perf_counter()
    import flwr
    from fedbus_flower.app import client_app, participants, serve  # type: ignore[import-not-found]
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    spans: list[tuple[int, float, float]] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, clients=clients, rounds=rounds, fraction=fraction, max_chars=max_chars, seed=seed,
              on_round=lambda number, begin, end: spans.append((number, begin, end)))

    backend: dict[str, dict[str, int | float | str | bytes | bool | list[int] | list[float] | list[str] | list[bytes]
                            | list[bool]]] = {"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
               "init_args": {"logging_level": "error", "log_to_driver": False}}
    run_simulation(server_app=server, client_app=client_app, num_supernodes=clients, backend_config=backend)
    finished = time.perf_counter()
    if len(spans) != rounds:
        raise SystemExit(f"flower_workload: {len(spans)} of {rounds} rounds ran (see the log above)")
    return {"clients": clients, "rounds": rounds, "fraction": fraction, "participants": participants(clients, fraction),
            "flwr": flwr.__version__,
            "wall_s": finished - started, "startup_s": spans[0][1] - started,
            "rounds_wall_s": spans[-1][2] - spans[0][1], "round_s": [end - begin for _, begin, end in spans]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--max-prompt-chars", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cpus-per-client", type=float, default=1.0,
                        help="Ray resources per ClientApp (default 1: one actor per CPU, Flower's default)")
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no phoning home from a benchmark
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    result = run(args.clients, args.rounds, args.fraction, max_chars=args.max_prompt_chars, seed=args.seed,
                 cpus_per_client=args.cpus_per_client)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
