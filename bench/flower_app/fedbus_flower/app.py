"""fedbus's scale workload as a Flower app (Message API): the counterpart of `fedbus run` with the surrogate
engine, ``concat``, 1 local step, batch 1.

Each round the server samples ``fraction`` of the connected nodes (at least one), sends each a ~2 KB prompt
(a ``ConfigRecord``), and every client answers with the prompt plus one sentence naming itself and the round
(as ``clients/paho_client.py`` does) and two metrics (accuracy before and after its local step). The server
concatenates the answers in node order and truncates the result to ``max-prompt-chars``: the next round's prompt.

``serve`` and ``answer`` are the workload; ``server_app`` and ``client_app`` wrap them for ``flwr run`` (run
config keys ``clients``, ``rounds``, ``fraction``, ``max-prompt-chars``, ``seed``); bench/flower_workload.py wraps them
again for the Simulation Engine with its own timing.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

SENTENCE = "Think step by step, check each intermediate result, and end with the line 'Answer: $VALUE'. "


def initial_prompt(chars: int) -> str:
    """A prompt of exactly ``chars`` characters (fedbus's benchmark scenario starts from the same text)."""
    return (SENTENCE * (chars // len(SENTENCE) + 1))[:chars]


def participants(clients: int, fraction: float) -> int:
    """How many nodes a round samples: as fedbus's aggregator, ``ceil(fraction * live)``, at least one."""
    return max(1, math.ceil(fraction * clients))


def wait_for_nodes(grid: Grid, clients: int, timeout_s: float) -> list[int]:
    """The node ids once ``clients`` nodes are connected (fedbus's first round waits for every client too)."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= clients:
            return nodes
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(nodes)} of {clients} nodes connected after {timeout_s:g} s")
        time.sleep(0.05)


def serve(grid: Grid, *, clients: int, rounds: int, fraction: float, max_chars: int, seed: int,
          join_timeout_s: float = 600.0, on_round: Callable[[int, float, float], None] | None = None) -> str:
    """Wait for ``clients`` nodes, then run ``rounds`` rounds on ``grid``; call ``on_round(round, started,
    finished)`` (perf_counter times) after each."""
    rng = random.Random(seed)
    prompt = initial_prompt(max_chars)
    nodes = wait_for_nodes(grid, clients, join_timeout_s)
    for number in range(1, rounds + 1):
        started = time.perf_counter()
        chosen = sorted(rng.sample(nodes, participants(len(nodes), fraction)))
        task = RecordDict({"task": ConfigRecord({"prompt": prompt, "round": number})})
        messages = [Message(content=task, dst_node_id=node, message_type="train") for node in chosen]
        replies = list(grid.send_and_receive(messages))
        answers = [reply.content.config_records["update"]["prompt"] for reply in replies if reply.has_content()]
        if len(answers) != len(chosen):
            raise RuntimeError(f"round {number}: {len(answers)} answers from {len(chosen)} nodes")
        prompt = "\n\n".join(str(answer) for answer in answers)[:max_chars]
        if on_round is not None:
            on_round(number, started, time.perf_counter())
    return prompt


def answer(message: Message, node_id: int) -> Message:
    """The client's local step: the prompt with one sentence added, and accuracy before and after."""
    task = message.content.config_records["task"]
    number = int(str(task["round"]))
    prompt = f"{task['prompt']!s}\nNode {node_id} adds, in round {number}: state the units of every quantity."
    before = (node_id * 7 + number) % 10 / 10
    metrics = MetricRecord({"batch_acc_before": before, "batch_acc_after": min(1.0, before + 0.1)})
    return Message(RecordDict({"update": ConfigRecord({"prompt": prompt}), "metrics": metrics}), reply_to=message)


server_app = ServerApp()
client_app = ClientApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config

    def number(key: str, default: float) -> float:
        return float(str(config.get(key, default)))

    def report(round_number: int, started: float, finished: float) -> None:
        # bench/scale.py --deployment reads these lines from `flwr run --stream`
        log(logging.INFO, "fedbus-bench round %d took %.6f s", round_number, finished - started)

    serve(grid, clients=int(number("clients", 10)), rounds=int(number("rounds", 5)), fraction=number("fraction", 1.0),
          max_chars=int(number("max-prompt-chars", 2048)), seed=int(number("seed", 1)), on_round=report)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    return answer(message, context.node_id)
