"""Remote clients in a signed federation: `fedbus keygen`, `fedbus invite`, `fedbus client --join`, and a federation
of remote clients only (clients.count 0)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedbus.cli import main
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.checkpoint import Checkpoint
from fedbus.runtime.identity import refuse_live_client
from fedbus.runtime.run_keys import AGGREGATOR_PUB, KEYS, RemoteKeys, authorized_path, write_aggregator_key
from fedbus.scenario.loader import scenario_from_mapping
from fedbus.security.crypto import PrivateKey, generate
from fedbus.security.errors import KeyFileError
from fedbus.security.keyfiles import keygen, load_authorized, load_private, load_public
from fedbus.security.keys import authorized_line, fingerprint
from fedbus.security.token import JoinToken, decode_token, encode_token
from tests.conftest import ROOT
from tests.waiting import wait_until

FEDBUS = [sys.executable, "-m", "fedbus"]


def scenario_doc(*, count: int, remote: int, min_clients: int, rounds: int = 2, security: str = "signed+sealed",
                 join_timeout_s: float = 60) -> dict[str, Any]:
    return {"name": "invites", "seed": 5, "engine": "surrogate", "rounds": rounds, "security": security,
            "task": {"name": "surrogate-skills", "train_size": 60, "val_size": 20, "test_size": 20},
            "clients": {"count": count, "remote": remote, "local_steps": 1, "batch_size": 2},
            "participation": {"min_clients": min_clients, "min_updates": min_clients, "round_deadline_s": 60,
                              "join_timeout_s": join_timeout_s}}


def fake_run(run_dir: Path, run_id: str = "lab-1", security: str = "signed+sealed",
             aggregator: PrivateKey | None = None) -> PrivateKey:
    """A run's folder as `fedbus run` leaves it once started: checkpoint.json and keys/aggregator.pub."""
    key = aggregator or generate()
    scenario = scenario_from_mapping(scenario_doc(count=2, remote=1, min_clients=1, security=security))
    run_dir.mkdir(parents=True, exist_ok=True)
    Checkpoint.new(run_dir, run_id=run_id, scenario=scenario, scenario_file="",
                   broker={"kind": "external", "url": "mqtt://broker.example.org:1883"})
    if security != "none":
        write_aggregator_key(run_dir, key.public)
    return key


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------- fast: files, tokens
def test_keygen_writes_a_private_file_0600_and_a_public_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fedbus keygen` writes FILE (0600, loads back) and FILE.pub (0644, an authorized-keys line); never overwrites."""
    key = tmp_path / "bob.key"
    code, out, _ = cli(capsys, "keygen", "--out", str(key), "--id", "bob")
    assert code == 0
    pub = tmp_path / "bob.key.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(pub.stat().st_mode) == 0o644
    identity, peer = load_private(key), load_public(pub)
    assert identity.owner == peer.owner == "bob" and identity.public == peer.key
    assert fingerprint(peer.key) in out
    before = key.read_bytes(), pub.read_bytes()
    code, _, err = cli(capsys, "keygen", "--out", str(key), "--id", "bob")
    assert code == 1 and "already exists" in err
    assert (key.read_bytes(), pub.read_bytes()) == before


def test_invite_prints_a_token_per_client_and_authorizes_its_key(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`fedbus invite --count N` prints N tokens (broker, run, id, the aggregator's key pinned, the client's private
    key) and adds each client's public key to RUN_DIR/keys/authorized_keys; an id already there is refused."""
    run = tmp_path / "run"
    aggregator = fake_run(run)
    code, out, err = cli(capsys, "invite", "--run-dir", str(run), "--count", "3", "--broker", "mqtt://10.0.0.5:1883")
    assert code == 0, err
    tokens = [decode_token(line) for line in out.splitlines()]
    assert [t.client for t in tokens] == ["remote-0", "remote-1", "remote-2"]
    authorized = load_authorized(authorized_path(run))
    for token in tokens:
        assert (token.run, token.broker, token.aggregator_key) == ("lab-1", "mqtt://10.0.0.5:1883", aggregator.public)
        assert token.client_key is not None and token.password is None
        assert authorized.get(token.client) == PrivateKey(token.client_key[:32], token.client_key[32:]).public
    assert "like a password" in err
    code, _, err = cli(capsys, "invite", "--run-dir", str(run), "--id", "remote-1")
    assert code == 1 and "already invited" in err
    code, _, err = cli(capsys, "invite", "--run-dir", str(run), "--id", "client-0")
    assert code == 1 and "one of the run's own clients" in err
    assert len(load_authorized(authorized_path(run))) == 3
    code, out, _ = cli(capsys, "invite", "--run-dir", str(run), "--id", "solo")
    assert code == 0 and decode_token(out.strip()).broker == "mqtt://broker.example.org:1883"  # the run's broker


def test_invite_with_a_public_key_puts_no_secret_in_the_token(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`fedbus invite --public FILE.pub` authorizes the client's own key; its token carries no private key."""
    run = tmp_path / "run"
    fake_run(run)
    identity = keygen(tmp_path / "carol.key", "carol")
    code, out, err = cli(capsys, "invite", "--run-dir", str(run), "--id", "carol", "--public",
                         str(tmp_path / "carol.key.pub"))
    assert code == 0, err
    token = decode_token(out.strip())
    assert token.client_key is None and token.client == "carol"
    assert load_authorized(authorized_path(run)).get("carol") == identity.public
    code, _, err = cli(capsys, "invite", "--run-dir", str(run), "--id", "dave", "--public",
                       str(tmp_path / "carol.key.pub"))
    assert code == 2 and "not of 'dave'" in err


def test_invite_refuses_an_unsigned_run_and_an_unstarted_one(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A run with security none needs no token; a folder without aggregator.pub is not a started signed run."""
    fake_run(tmp_path / "plain", security="none")
    code, _, err = cli(capsys, "invite", "--run-dir", str(tmp_path / "plain"), "--id", "bob")
    assert code == 1 and "not signed" in err
    fake_run(tmp_path / "early")
    (tmp_path / "early" / KEYS / AGGREGATOR_PUB).unlink()
    code, _, err = cli(capsys, "invite", "--run-dir", str(tmp_path / "early"), "--id", "bob")
    assert code == 1 and "is the run started" in err


def test_the_token_round_trips_with_the_client_key() -> None:
    """A token with the minted client key encodes and decodes to itself; an altered key field is refused."""
    key, aggregator = generate(), generate()
    token = JoinToken(broker="mqtt://h:1883", run="r1", client="bob", aggregator_key=aggregator.public,
                      client_key=key.sign_seed + key.seal_secret)
    assert decode_token(encode_token(token)) == token
    with pytest.raises(ValueError, match="64 bytes"):
        JoinToken(broker="mqtt://h:1883", run="r1", client="bob", aggregator_key=aggregator.public, client_key=b"x")


def test_remote_keys_are_reread_and_never_stand_in_for_the_runs_own(tmp_path: Path) -> None:
    """The aggregator's RemoteKeys pick up a client invited after the start at its first message, skip an entry for
    one of the run's own clients, and keep the last good keys when the file breaks."""
    path = tmp_path / "authorized_keys"
    now = [0.0]
    keys = RemoteKeys([path], ("client-0",), clock=lambda: now[0])
    bob, mallory = generate().public, generate().public
    assert keys.get("bob") is None
    path.write_text(authorized_line("bob", bob) + authorized_line("client-0", mallory), encoding="utf-8")
    assert keys.get("bob") == bob  # an unknown signer: the file is looked at once
    assert keys.get("client-0") is None
    path.write_text("garbage\n", encoding="utf-8")
    now[0] += 10
    assert keys.get("bob") == bob
    own = tmp_path / "own"
    own.write_text(authorized_line("client-0", mallory), encoding="utf-8")
    with pytest.raises(KeyFileError, match="one of the run's own clients"):
        RemoteKeys([own], ("client-0",))  # at start (strict), the same entry is an error


def test_a_line_gone_at_two_reads_revokes_its_client_and_a_file_caught_half_written_nobody(tmp_path: Path) -> None:
    """Revocation is told with the key the client had, once its line has been missing at two reads RELOAD_S
    apart: a file read while an editor rewrites it (empty for a moment) revoked every client, for good. A resumed
    run's replay checks with `replaying` what a client revoked later sent before its revocation."""
    from fedbus.runtime.run_keys import RELOAD_S, revoked_keys

    path = tmp_path / "authorized_keys"
    bob, mallory = generate().public, generate().public
    path.write_text(authorized_line("bob", bob) + authorized_line("mallory", mallory), encoding="utf-8")
    now = [0.0]
    keys = RemoteKeys([path], (), clock=lambda: now[0])
    told: list[tuple[tuple[str, object], ...]] = []
    keys.on_revoke = told.append
    path.write_text("", encoding="utf-8")  # caught half written ...
    now[0] += RELOAD_S
    keys.check()
    path.write_text(authorized_line("bob", bob) + authorized_line("mallory", mallory), encoding="utf-8")
    now[0] += RELOAD_S  # ... and whole again at the next look
    keys.check()
    now[0] += RELOAD_S
    keys.check()
    assert told == [] and keys.get("bob") == bob
    path.write_text(authorized_line("bob", bob), encoding="utf-8")  # mallory's line taken out for good
    now[0] += RELOAD_S
    keys.check()
    assert told == [] and keys.get("mallory") is None  # no longer accepted at once; told at the next look
    now[0] += RELOAD_S
    keys.check()
    assert told == [(("mallory", mallory),)]
    line = {"k": "e", "event": "revoked", "client": "mallory", "key": mallory.text(), "now": 9.0}
    keys.replaying = revoked_keys([line])
    assert keys.get("mallory") == mallory  # replaying what it sent before
    keys.revoked_now("mallory")
    assert keys.get("mallory") is None


def test_run_refuses_authorized_keys_naming_its_own_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fedbus run --authorized-keys FILE` with a line for one of the scenario's clients exits 2 before starting."""
    scenario = tmp_path / "s.yaml"
    scenario.write_text(json.dumps(scenario_doc(count=2, remote=0, min_clients=2)), encoding="utf-8")
    keys = tmp_path / "authorized_keys"
    keys.write_text(authorized_line("client-1", generate().public), encoding="utf-8")
    code, _, err = cli(capsys, "run", str(scenario), "--out", str(tmp_path / "out"), "--authorized-keys", str(keys))
    assert code == 2 and "client-1" in err and "own clients" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- slow: real runs


def popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*FEDBUS, *args], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"{process.args} did not finish: {out} {err}") from None
    return process.returncode, out, err


def start_run(tmp_path: Path, doc: dict[str, Any], broker: BrokerAddress, run_id: str,
              *extra: str) -> tuple[subprocess.Popen[str], Path]:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(json.dumps(doc), encoding="utf-8")
    out = tmp_path / "run"
    run = popen("run", str(scenario), "--out", str(out), "--broker", broker.url(), "--run-id", run_id, "--quiet",
                *extra)
    wait_until(lambda: (out / KEYS / AGGREGATOR_PUB).exists() or run.poll() is not None, "the run to start")
    assert run.poll() is None, run.communicate()
    return run, out


def write_token(path: Path, token: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return path


@pytest.mark.slow
def test_invited_clients_join_a_signed_run_and_strangers_do_not(tmp_path: Path, embedded_broker: BrokerAddress,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """In a default (signed+sealed) run started before any invitation: a client invited later joins with its token
    and every update it sends is accepted, as do a client with its own key (`fedbus keygen`, `invite --public`,
    `client --key`) and one from `fedbus run --authorized-keys`; a client whose token pins ANOTHER run's aggregator
    key gets nothing accepted (the aggregator counts its messages as forgeries, held against no one); a client
    without a token exits 1 with one line saying the run is signed."""
    run_id = f"invites-{os.getpid()}"
    dave = keygen(tmp_path / "dave.key", "dave")
    listed = tmp_path / "authorized_keys"
    listed.write_text(authorized_line("dave", dave.public), encoding="utf-8")
    run, out = start_run(tmp_path, scenario_doc(count=2, remote=3, min_clients=5), embedded_broker, run_id,
                         "--authorized-keys", str(listed))
    joined: list[subprocess.Popen[str]] = []
    try:
        code, tokens, err = cli(capsys, "invite", "--run-dir", str(out), "--id", "guest")
        assert code == 0, err
        joined.append(popen("client", "--join-file", str(write_token(tmp_path / "guest.token", tokens.strip()))))
        keygen(tmp_path / "carol.key", "carol")
        code, tokens, err = cli(capsys, "invite", "--run-dir", str(out), "--id", "carol", "--public",
                                str(tmp_path / "carol.key.pub"))
        assert code == 0, err
        joined.append(popen("client", "--join", tokens.strip(), "--key", str(tmp_path / "carol.key")))
        aggregator = load_public(out / KEYS / AGGREGATOR_PUB).key  # handed to dave's operator by hand
        token = JoinToken(broker=embedded_broker.url(), run=run_id, client="dave", aggregator_key=aggregator)
        joined.append(popen("client", "--join", encode_token(token), "--key", str(tmp_path / "dave.key")))
        # another run's invitation, pointed at this run: its key is not authorized here, and it pins another aggregator
        fake_run(tmp_path / "other", run_id="other-run")
        code, other, err = cli(capsys, "invite", "--run-dir", str(tmp_path / "other"), "--id", "intruder",
                               "--broker", embedded_broker.url())
        assert code == 0, err
        stolen = decode_token(other.strip())
        rerouted = JoinToken(broker=stolen.broker, run=run_id, client=stolen.client,
                             aggregator_key=stolen.aggregator_key, client_key=stolen.client_key)
        intruder = popen("client", "--join-file", str(write_token(tmp_path / "intruder.token", encode_token(rerouted))),
                         "--aggregator-timeout", "6")
        plain = popen("client", "--broker", embedded_broker.url(), "--run", run_id, "--id", "plain")
        code, _, plain_err = finish(plain)
        assert code == 1 and plain_err.count("\n") == 1, plain_err
        assert "this run is signed: join with a token from `fedbus invite`" in plain_err
        # it left its presence offline: the id is free for a token join (it stayed 'live' for the whole run)
        asyncio.run(refuse_live_client(embedded_broker, run_id, "plain"))
        code, _, run_err = finish(run)
        assert code == 0, run_err
        for client in joined:
            code, client_out, client_err = finish(client)
            assert code == 0 and "2 rounds done" in client_out, client_err
        code, _, intruder_err = finish(intruder)
        assert code == 1 and "silent" in intruder_err, intruder_err
    finally:
        for process in (run, *joined):
            if process.poll() is None:
                process.kill()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["security"]["mode"] == "signed+sealed"
    for record in summary["rounds"]:
        assert sorted(a["client"] for a in record["accepted"]) == ["carol", "client-0", "client-1", "dave", "guest"]
        assert record["rejected"] == []
    assert summary["forgeries"]["total"] > 0
    assert set(summary["forgeries"]["by_reason"]) <= {"unknown-signer", "unsigned"}, summary["forgeries"]
    assert "intruder" not in summary["clients"] and "plain" not in summary["clients"]


@pytest.mark.slow
def test_a_federation_of_remote_clients_only(tmp_path: Path, embedded_broker: BrokerAddress,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """clients.count 0: the run waits for 10 invited clients, each a `fedbus client --join-file` process on loopback;
    both rounds aggregate all 10 updates and every client exits 0."""
    run_id = f"remote-only-{os.getpid()}"
    run, out = start_run(tmp_path, scenario_doc(count=0, remote=10, min_clients=10), embedded_broker, run_id)
    clients: list[subprocess.Popen[str]] = []
    try:
        code, tokens, err = cli(capsys, "invite", "--run-dir", str(out), "--count", "10")
        assert code == 0, err
        for i, token in enumerate(tokens.split()):
            clients.append(popen("client", "--quiet", "--join-file", str(write_token(tmp_path / f"{i}.token", token))))
        code, _, run_err = finish(run, 120)
        assert code == 0, run_err
        for client in clients:
            code, client_out, client_err = finish(client)
            assert code == 0 and "2 rounds done" in client_out, client_err
            assert client_out.count("\n") == 1, client_out  # --quiet: only the last line
    finally:
        for process in (run, *clients):
            if process.poll() is None:
                process.kill()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    expected = [f"remote-{i}" for i in range(10)]
    assert [sorted(a["client"] for a in r["accepted"]) for r in summary["rounds"]] == [expected, expected]
    assert summary["totals"]["updates_accepted"] == 20 and summary["forgeries"]["total"] == 0


def _events(out: Path) -> list[dict[str, Any]]:
    path = out / "events.jsonl"
    found = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else ():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


def _with_mallory(tmp_path: Path, capsys: pytest.CaptureFixture[str], broker: BrokerAddress, run_id: str, *,
                  rounds: int) -> tuple[subprocess.Popen[str], Path, subprocess.Popen[str]]:
    """A run of two own clients and an invited one, mallory, each step 0.25 s: started, and an update of
    mallory's accepted (both processes killed if that fails)."""
    doc = scenario_doc(count=2, remote=1, min_clients=2, rounds=rounds)
    doc["clients"]["step_latency_s"] = 0.25
    run, out = start_run(tmp_path, doc, broker, run_id)
    started = [run]
    try:
        code, token, err = cli(capsys, "invite", "--run-dir", str(out), "--id", "mallory")
        assert code == 0, err
        mallory = popen("client", "--quiet", "--join-file", str(write_token(tmp_path / "m.token", token.strip())))
        started.append(mallory)
        wait_until(lambda: any(e["event"] == "accepted" and e.get("client") == "mallory" for e in _events(out))
                   or run.poll() is not None, "an update of mallory's accepted")
    except BaseException:
        for process in started:
            process.kill()
            process.communicate()
        raise
    return run, out, mallory


def _take_out(out: Path, client: str) -> None:
    """Remove ``client``'s line from the run's keys/authorized_keys."""
    keys = authorized_path(out)
    keys.write_text("".join(line for line in keys.read_text(encoding="utf-8").splitlines(keepends=True)
                            if client not in line), encoding="utf-8")


@pytest.mark.slow
def test_a_revoked_client_is_no_longer_selected_and_no_round_waits_for_it(tmp_path: Path,
                                                                         embedded_broker: BrokerAddress,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """An invited client takes part; its line is taken out of keys/authorized_keys while it keeps running. Within
    seconds the aggregator says `client-revoked` and treats it as gone: no later round selects it, so none waits
    out its deadline for it (each did, 60 s here, and it kept getting tasks), and the run completes."""
    # rounds enough to outlast the revocation (two looks 2 s apart) on a fast machine: ~0.3 s each, 40 of them
    run, out, mallory = _with_mallory(tmp_path, capsys, embedded_broker, f"revoke-{os.getpid()}", rounds=40)
    try:
        _take_out(out, "mallory")
        wait_until(lambda: any(e["event"] == "client-revoked" for e in _events(out)) or run.poll() is not None,
                   "the aggregator to revoke mallory", wait_s=60)
        code, _, run_err = finish(run, 240)
        assert code == 0, run_err
    finally:
        for process in (run, mallory):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
    evs = _events(out)
    revoked_at = next(e["t"] for e in evs if e["event"] == "client-revoked" and e["client"] == "mallory")
    later = {e["round"] for e in evs if e["event"] == "round-opened" and e["t"] > revoked_at}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and later, "rounds opened after the revocation"
    first_later = min(later)
    for record in summary["rounds"]:
        assert record["status"] == "aggregated"
        if record["round"] == first_later and "mallory" in record["selected"]:  # opened as the revocation came in
            assert "mallory" in record["dropped"], record
        elif record["round"] in later:
            assert "mallory" not in record["selected"], record["round"]
        if record["round"] in later:
            assert record["duration_s"] < 60, f"round {record['round']} waited for the revoked client"


@pytest.mark.slow
def test_a_key_removed_while_the_run_is_down_is_revoked_on_resume_and_what_it_sent_still_counts(
        tmp_path: Path, embedded_broker: BrokerAddress, capsys: pytest.CaptureFixture[str]) -> None:
    """An invited client takes part; the run is killed (kill -9), the client's line is taken out of
    keys/authorized_keys, and the run resumed. What the client sent before checks on replay with the key the
    journal recorded (it failed as 'unknown-signer' forgeries, and the replay reached another state than the run
    had), the resumed run says `client-revoked` at once, selects it no more, and completes."""
    run, out, mallory = _with_mallory(tmp_path, capsys, embedded_broker, f"down-{os.getpid()}", rounds=12)
    try:
        run.kill()
        run.communicate(timeout=30)
        mallory.kill()
        mallory.communicate(timeout=30)
    finally:
        for process in (run, mallory):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
    accepted_before = {e["round"] for e in _events(out) if e["event"] == "accepted" and e.get("client") == "mallory"}
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {"k": "key", "client": "mallory"}.items() <= next(line for line in journal if line["k"] == "key").items()
    _take_out(out, "mallory")
    resumed = subprocess.run([*FEDBUS, "run", "--resume", str(out), "--quiet"], cwd=ROOT, timeout=240,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    # its Last Will (kill -9) reaches the resumed run, which checks it without the key: that one, and no replayed one
    assert set(summary["forgeries"]["by_channel"]) <= {"presence"}, summary["forgeries"]
    assert summary["forgeries"]["total"] <= 1, summary["forgeries"]
    revoked = [e for e in _events(out) if e["event"] == "client-revoked"]
    assert [(e["client"], e["while_down"]) for e in revoked] == [("mallory", True)]
    rounds = {r["round"]: r for r in summary["rounds"]}
    for number in accepted_before:  # closed before the kill, replayed: its update still accepted
        if number in rounds:
            assert "mallory" in {a["client"] for a in rounds[number]["accepted"]}, rounds[number]
    after = [r for r in summary["rounds"] if r["round"] > max(accepted_before) + 1]
    assert after and all("mallory" not in r["selected"] for r in after)
