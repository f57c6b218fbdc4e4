"""RUN_DIR/checkpoint.json: which run a folder holds, how far it got, and how to go on.

Written atomically when the run starts, after every closed round and at the end. It holds the
scenario as run (so ``--resume`` does not depend on the YAML file still saying the same), the run
id, the broker (its URL without password) and one record per resume. The aggregator's state itself
is rebuilt from journal.jsonl (see :mod:`fedbus.runtime.journal`).
"""

from __future__ import annotations

import datetime
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedbus.aggregator.effects import RoundResult
from fedbus.aggregator.rounds import RoundAggregator
from fedbus.aggregator.stream import StreamAggregator
from fedbus.errors import ScenarioError
from fedbus.runtime.journal import CHECKPOINT, JOURNAL, ResumeError, write_atomically
from fedbus.scenario import Scenario, scenario_from_mapping, scenario_to_mapping

Core = RoundAggregator | StreamAggregator
FORMAT = 1


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def core_known(core: Core) -> tuple[str, ...]:
    """Every client the aggregator heard from, for clearing their retained presence at the end."""
    known = getattr(core, "known", None) or getattr(core, "_known", None) or ()
    return tuple(sorted(known))


@dataclass(slots=True)
class Checkpoint:
    """checkpoint.json, kept in step with the run."""

    path: Path
    content: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return str(self.content["run_id"])

    @property
    def resumes(self) -> list[dict[str, Any]]:
        return list(self.content.get("resumes", []))

    @property
    def mqtt_identifier(self) -> str:
        return str(self.content.get("mqtt_identifier") or f"{self.run_id}.aggregator")

    @property
    def broker(self) -> dict[str, Any]:
        return dict(self.content.get("broker", {}))

    @classmethod
    def new(cls, run_dir: Path, *, run_id: str, scenario: Scenario, scenario_file: str,
            broker: dict[str, str]) -> Checkpoint:
        if (run_dir / JOURNAL).exists():
            (run_dir / JOURNAL).unlink()  # a folder reused with --force starts a new journal
        checkpoint = cls(run_dir / CHECKPOINT, {
            "format": FORMAT, "run_id": run_id, "status": "running", "started": _now_iso(), "updated": _now_iso(),
            "scenario_file": scenario_file, "scenario": scenario_to_mapping(scenario), "broker": broker,
            "rounds_closed": 0, "version": 0, "journal_lines": 0, "resumes": [],
            # the aggregator's MQTT identifier: unguessable (no session takeover), kept for --resume, whose
            # aggregator takes up the persistent session the killed one had (what clients sent meanwhile)
            "mqtt_identifier": f"{run_id}.aggregator.{secrets.token_hex(6)}"})
        checkpoint._write()
        return checkpoint

    @classmethod
    def open(cls, run_dir: Path) -> Checkpoint:
        """The checkpoint of an earlier run, to resume it; ``ResumeError`` says why not."""
        path = run_dir / CHECKPOINT
        if not run_dir.is_dir():
            raise ResumeError(f"--resume {run_dir}: no such folder")
        if not path.exists():
            if _simulated(run_dir):
                raise ResumeError(f"--resume {run_dir}: a --simulate run, which is not resumed: run it again to "
                                  "finish it (the same scenario and seed give the same run)")
            raise ResumeError(f"--resume {run_dir}: no {CHECKPOINT} there; it is not the folder of a fedbus run "
                              "(or one from before fedbus wrote checkpoints)")
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResumeError(f"--resume {run_dir}: {CHECKPOINT} cannot be read: {exc}") from exc
        if not isinstance(content, dict) or content.get("format") != FORMAT or "run_id" not in content:
            raise ResumeError(f"--resume {run_dir}: {CHECKPOINT} is not a fedbus checkpoint of format {FORMAT}")
        if content.get("status") == "completed" or content.get("status") == "aborted":
            raise ResumeError(f"--resume {run_dir}: run {content['run_id']} already ended ({content['status']}); "
                              "nothing to resume")
        return cls(path, content)

    def scenario(self) -> Scenario:
        stored = self.content["scenario"]
        if isinstance(stored, dict) and isinstance(stored.get("participation"), dict) and isinstance(
                stored.get("aggregation"), dict) and stored["aggregation"].get("mode", "sync") != "sync":
            # before it was refused there, an adaptive deadline outside sync mode was accepted and did nothing
            stored = {**stored, "participation": {k: v for k, v in stored["participation"].items()
                                                  if k != "adaptive_deadline"}}
        try:
            return scenario_from_mapping(stored)
        except ScenarioError as exc:
            raise ResumeError(f"--resume {self.path.parent}: the scenario in {CHECKPOINT} no longer loads: {exc}") \
                from exc

    def resumed(self, broker: dict[str, str]) -> None:
        self.content["resumes"] = [*self.resumes, {"at": _now_iso(), "broker": broker,
                                                   "rounds_closed_before": self.content.get("rounds_closed", 0)}]
        self.content["status"] = "running"
        self.content["broker"] = broker
        self._write()

    def round_closed(self, result: RoundResult, *, journal_lines: int) -> None:
        self.content["rounds_closed"] = int(self.content.get("rounds_closed", 0)) + 1
        self.content["last_round"] = result.round
        self.content["version"] = result.version_after
        self.content["prompt_chars"] = len(result.prompt)
        self.content["journal_lines"] = journal_lines
        self._write()

    def ended(self, status: str) -> None:
        self.content["status"] = status
        self._write()

    def _write(self) -> None:
        self.content["updated"] = _now_iso()
        write_atomically(self.path, self.content)


def _simulated(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds the summary.json of a ``--simulate`` run (it has a ``simulated`` record)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(summary, dict) and isinstance(summary.get("simulated"), dict)
