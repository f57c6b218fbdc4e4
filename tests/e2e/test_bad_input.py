"""Every bad input to `fedbus` gets one line naming the problem and a non-zero exit code, never a traceback:
scenario files (alias bomb, duplicate key, not UTF-8, a prompt over its budget), flags (refused by argparse
with exit code 2 before anything starts), --out, an unreachable broker, and compare on a file that is not a
run summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedbus.runtime.broker import free_port
from tests.conftest import ROOT

FEDBUS = [sys.executable, "-m", "fedbus"]


def fedbus(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDBUS, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def one_line(text: str) -> str:
    """The only line of ``text``, which holds no traceback."""
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ scenario files


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """`fedbus validate` on a 368-byte YAML alias bomb (3.5 billion strings once expanded; on main 78 s and
    5.5 GB for one level less) exits 2 with one line about the aliases; the subprocess's time limit is the bound."""
    lines = ["a: &a [" + ",".join(["lol"] * 9) + "]"]
    lines += [f"{k}: &{k} [" + ",".join([f"*{p}"] * 9) + "]" for p, k in zip("abcdefghi", "bcdefghij", strict=True)]
    bomb = write(tmp_path / "bomb.yaml", "\n".join([*lines, "name: *j", ""]))
    result = fedbus("validate", str(bomb), timeout=10)
    assert result.returncode == 2 and result.stderr == ""
    line = one_line(result.stdout)
    assert line.startswith(f"{bomb}: e[2]: YAML aliases expand this document past") and "alias bomb" in line


def test_a_duplicate_key_is_refused_with_its_path(tmp_path: Path) -> None:
    """`clients: {count: 3}` then `count: 4` again: exit 2 naming clients.count, not a silent 4."""
    scenario = write(tmp_path / "dup.yaml",
                     "name: t\nrounds: 2\ntask: {name: surrogate-skills}\nclients:\n  count: 3\n  count: 4\n")
    result = fedbus("validate", str(scenario))
    assert result.returncode == 2
    assert one_line(result.stdout) == f"{scenario}: clients.count: duplicate key (line 6, column 3)"


def test_a_file_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    """A Latin-1 file: `fedbus run` exits 2 with one line naming the file and the line, not a UnicodeDecodeError."""
    scenario = tmp_path / "latin1.yaml"
    scenario.write_bytes(b"name: t\nrounds: 2\ninitial_prompt: caf\xe9\ntask: {name: surrogate-skills}\n")
    result = fedbus("run", str(scenario), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert one_line(result.stderr) == f"{scenario}: not UTF-8 text: byte 0xe9 on line 3; save the file as UTF-8"
    assert not (tmp_path / "out").exists()


def test_an_initial_prompt_over_its_budget_is_found_by_validate(tmp_path: Path) -> None:
    """What can be known before running is checked by validate: a prompt longer than max_prompt_chars."""
    scenario = write(tmp_path / "long.yaml", "name: t\nrounds: 1\ntask: {name: surrogate-skills}\n"
                     f"clients: {{count: 2}}\ninitial_prompt: {'x' * 201}\naggregation: {{max_prompt_chars: 200}}\n")
    result = fedbus("validate", str(scenario))
    assert result.returncode == 2
    assert one_line(result.stdout) == f"{scenario}: initial_prompt: 201 characters > aggregation.max_prompt_chars (200)"


# ------------------------------------------------------------------ flags argparse refuses (exit 2, nothing started)


@pytest.mark.parametrize(("args", "expected"), [
    (["run", "scenarios/quickstart.yaml", "--run-id", "bad/id"],
     "fedbus run: argument --run-id: invalid run id 'bad/id'"),
    (["run", "scenarios/quickstart.yaml", "--seed", "-5"],
     "fedbus run: argument --seed: must be within [0, 9007199254740992], got -5"),
    (["run", "scenarios/quickstart.yaml", "--workers", "-1"], "fedbus run: argument --workers: must be >= 0, got -1"),
    (["run", "scenarios/quickstart.yaml", "--simulate", "--dashboard-linger", "-3"],
     "fedbus run: argument --dashboard-linger: must be 0 or more seconds, got '-3'"),
    (["--log-level", "BOGUS", "validate", "scenarios/quickstart.yaml"], "fedbus: argument --log-level: unknown level"),
    (["run", "scenarios/quickstart.yaml", "--engine-url", "localhost:8000"],
     "fedbus run: argument --engine-url: must be an http:// or https:// URL"),
    (["run", "scenarios/quickstart.yaml", "--broker", "http://127.0.0.1:1"],
     "fedbus run: argument --broker: broker URL 'http://127.0.0.1:1': scheme must be mqtt://"),
    (["client", "--broker", "mqtt://127.0.0.1:1", "--run", "r 1"], "fedbus client: argument --run: invalid run id"),
    (["client", "--broker", "mqtt://127.0.0.1:1", "--run", "r1", "--shard", "-1"],
     "fedbus client: argument --shard: must be >= 0"),
    (["client", "--broker", "mqtt://127.0.0.1:1", "--run", "r1", "--max-tokens", "0"],
     "fedbus client: argument --max-tokens: must be within [1, 32768], got 0"),
    (["broker", "--port", "99999"], "fedbus broker: argument --port: must be within [0, 65535], got 99999"),
    (["broker", "--host", "localhost"], "fedbus broker: argument --host: must be an IPv4 address"),
], ids=["run-id", "seed", "workers", "linger", "log-level", "engine-url", "broker-url", "client-run", "shard",
        "max-tokens", "port", "host"])
def test_a_bad_flag_is_refused_before_anything_starts(args: list[str], expected: str, tmp_path: Path) -> None:
    """argparse checks each flag's value: one line naming the flag and the rule, exit 2, no run folder."""
    out = ["--out", str(tmp_path / "out")] if args[0] == "run" else []
    result = fedbus(*args, *out)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(expected) and line.endswith("--help)"), line
    assert not (tmp_path / "out").exists()


def test_a_bad_log_level_from_the_environment_names_the_variable() -> None:
    """$FEDBUS_LOG_LEVEL=loud is refused like --log-level loud, and the line says where the default comes from."""
    result = subprocess.run([*FEDBUS, "validate", "scenarios/quickstart.yaml"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
                            env={**os.environ, "FEDBUS_LOG_LEVEL": "loud"})
    assert result.returncode == 2
    assert "$FEDBUS_LOG_LEVEL" in one_line(result.stderr)


# ------------------------------------------------------------------ --out


def test_out_naming_an_existing_file_is_refused(tmp_path: Path) -> None:
    """--out FILE: exit 2, 'exists and is not a folder', and the file is left as it was."""
    file = write(tmp_path / "notes.txt", "keep me")
    result = fedbus("run", "scenarios/quickstart.yaml", "--simulate", "--out", str(file))
    assert result.returncode == 2
    assert one_line(result.stderr) == f"fedbus run: --out {file}: exists and is not a folder"
    assert file.read_text(encoding="utf-8") == "keep me"


def test_out_where_no_folder_can_be_made_is_refused(tmp_path: Path) -> None:
    """--out under a file (no folder can be made there): exit 2, 'cannot write there', nothing created."""
    write(tmp_path / "notes.txt", "")
    out = tmp_path / "notes.txt" / "run"
    result = fedbus("run", "scenarios/quickstart.yaml", "--out", str(out))
    assert result.returncode == 2
    assert one_line(result.stderr) == f"fedbus run: --out {out}: cannot write there: Not a directory"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a read-only folder")
def test_out_in_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    """--out inside a folder without write permission: exit 2, 'Permission denied', nothing created."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        result = fedbus("run", "scenarios/quickstart.yaml", "--simulate", "--out", str(locked / "run"))
    finally:
        locked.chmod(0o700)
    assert result.returncode == 2
    assert one_line(result.stderr) == f"fedbus run: --out {locked / 'run'}: cannot write there: Permission denied"


def test_out_holding_a_finished_run_needs_force(tmp_path: Path) -> None:
    """A folder with a summary.json is not overwritten: exit 2 saying to pass --force; with --force the run
    goes ahead and writes its own summary."""
    out = tmp_path / "out"
    out.mkdir()
    write(out / "summary.json", '{"run_id": "earlier"}')
    result = fedbus("run", "scenarios/quickstart.yaml", "--simulate", "--quiet", "--out", str(out))
    assert result.returncode == 2
    assert one_line(result.stderr) == (f"fedbus run: --out {out}: holds a finished run; pass --force to overwrite, "
                                       "or choose another --out")
    assert json.loads((out / "summary.json").read_text(encoding="utf-8")) == {"run_id": "earlier"}
    result = fedbus("run", "scenarios/quickstart.yaml", "--simulate", "--quiet", "--out", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["status"] == "completed"


# ------------------------------------------------------------------ an unreachable broker


def test_run_on_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    """`fedbus run --broker` at a port nobody listens on: exit 1 and only 'broker problem: cannot connect' (no
    line per client), before the run folder is made."""
    url = f"mqtt://127.0.0.1:{free_port()}"
    result = fedbus("run", "scenarios/quickstart.yaml", "--broker", url, "--quiet", "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert one_line(result.stderr).startswith(f"fedbus run: broker problem: cannot connect to {url}")
    assert not (tmp_path / "out").exists()


def test_client_on_an_unreachable_broker_is_one_line() -> None:
    """`fedbus client --broker` at a port nobody listens on: exit 1 and one line, before saying it joins."""
    url = f"mqtt://127.0.0.1:{free_port()}"
    result = fedbus("client", "--broker", url, "--run", "r1", "--id", "c1")
    assert result.returncode == 1 and result.stdout == ""
    assert one_line(result.stderr).startswith(f"fedbus client: broker problem: cannot connect to {url}")


# ------------------------------------------------------------------ compare


@pytest.mark.parametrize(("content", "expected"), [
    ('{"name": "not a summary"}', "not a run summary (no run_id)"),
    ("[1, 2, 3]", "not a run summary (the file holds an array, not an object)"),
    ("run_id: yaml", "not a readable summary.json (JSONDecodeError: Expecting value"),
    (None, "not a readable summary.json (No such file or directory)"),
], ids=["other-json", "a-list", "not-json", "missing"])
def test_compare_on_a_file_that_is_not_a_summary_is_one_line(tmp_path: Path, content: str | None,
                                                            expected: str) -> None:
    """compare on JSON that is not a run summary, on a non-JSON file and on a missing file: exit 1, one line
    naming the file and why."""
    file = tmp_path / "some.json"
    if content is not None:
        write(file, content)
    result = fedbus("compare", str(file))
    assert result.returncode == 1
    assert one_line(result.stderr).startswith(f"fedbus compare: {file}: {expected}")
