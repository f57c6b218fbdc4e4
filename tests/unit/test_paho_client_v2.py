"""clients/paho_client.py speaks protocol v2 as docs/SECURITY.md specifies it, and interoperates with fedbus.

The client is written from the document alone (it imports nothing from fedbus), so these tests check it three
ways: its framing functions reproduce the document's worked example byte for byte (the expected bytes are read
from docs/SECURITY.md itself); what it produces, fedbus's `verify` and `open_body` accept; and what fedbus
produces, it accepts, rejecting every altered frame with the same reason fedbus gives.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fedbus.protocol import codec, topics
from fedbus.protocol.messages import DataSpec, GlobalState, Presence, Task, Update
from fedbus.security.crypto import PrivateKey
from fedbus.security.errors import TokenError, WireRejected
from fedbus.security.keyfiles import keygen, load_public
from fedbus.security.keys import PublicKey, fingerprint
from fedbus.security.policy import Security
from fedbus.security.sealing import open_body
from fedbus.security.signing import sign, verify
from fedbus.security.token import JoinToken, encode_token
from fedbus.security.token import decode_token as fedbus_decode_token

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "clients" / "paho_client.py"
DOC = ROOT / "docs" / "SECURITY.md"


def load_client() -> ModuleType:
    """clients/paho_client.py imported by path, as a module of its own (it is no package's)."""
    spec = importlib.util.spec_from_file_location("paho_client_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


pc = load_client()

# The worked example's keys (docs/SECURITY.md, "Worked example").
CLIENT_SEED, CLIENT_SECRET = bytes(range(0x20)), bytes(range(0x20, 0x40))
AGG_SEED, AGG_SECRET = bytes(range(0x40, 0x60)), bytes(range(0x60, 0x80))
EPHEMERAL = bytes(range(0x80, 0xA0))
FEDBUS_CLIENT = PrivateKey(CLIENT_SEED, CLIENT_SECRET)
FEDBUS_AGG = PrivateKey(AGG_SEED, AGG_SECRET)
CLIENT = pc.PrivateKey("client-0", CLIENT_SEED, CLIENT_SECRET)
AGG_PUBLIC = pc.PublicKey(FEDBUS_AGG.public.sign, FEDBUS_AGG.public.seal)
RUN = "quickstart-7-a1b2c3"


# ---------------------------------------------------------------------------------------------- the document
def document_text() -> str:
    if not DOC.exists():  # bench/mutation.py runs a copy of tests/ without docs/
        pytest.skip("docs/SECURITY.md is not beside this copy of the tests")
    return DOC.read_text(encoding="utf-8")


def blocks(section: str) -> list[str]:
    """The fenced blocks of one ``##``/``###`` section of docs/SECURITY.md, in order, without their fences."""
    text = document_text()
    start = text.index(f"\n{section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```[a-z]*\n(.*?)\n```", text[start : end if end != -1 else None], flags=re.S)


def table_value(label: str) -> str:
    """The value in backticks after ``label`` in the worked example's table rows."""
    match = re.search(rf"\| {re.escape(label)} \| `([0-9a-f]+)` \|", document_text())
    assert match, label
    return match.group(1)


def unhex(block: str) -> bytes:
    return bytes.fromhex("".join(block.split()))


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    found = blocks("### Worked example")
    names = ("public_keys", "presence.payload", "presence.signed_data", "presence.signature", "presence.frame",
             "update.payload", "update.body", "update.context", "update.box", "update.sealed_payload", "update.frame")
    assert len(found) == len(names), found
    return dict(zip(names, found, strict=True))


def test_the_worked_example_keys() -> None:
    public = CLIENT.public
    assert public.sign.hex() == "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    assert public.seal.hex() == "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254"
    aggregator = pc.PrivateKey("aggregator", AGG_SEED, AGG_SECRET).public
    assert aggregator == AGG_PUBLIC
    text = document_text()
    for key, name in ((public, "client-0"), (aggregator, "aggregator")):
        assert key.text() in text and key.fingerprint() in text, name
        assert pc.parse_public_key(key.text()) == key
    assert public.text() == FEDBUS_CLIENT.public.text() and public.fingerprint() == fingerprint(FEDBUS_CLIENT.public)


def test_the_signed_presence_of_the_worked_example(example: dict[str, Any]) -> None:
    payload = example["presence.payload"].encode()
    assert pc.encode(json.loads(payload)) == payload  # the client writes messages as the codec does
    assert pc.signed_data("client-0", payload) == unhex(example["presence.signed_data"])
    frame = pc.sign_frame(payload, CLIENT)
    assert frame == unhex(example["presence.frame"])
    assert frame[13:77] == unhex(example["presence.signature"])


def test_the_sealed_signed_update_of_the_worked_example(example: dict[str, Any]) -> None:
    payload = example["update.payload"].encode()
    doc = json.loads(payload)
    assert pc.encode(doc) == payload
    assert pc.encode(doc["body"]) == example["update.body"].encode()
    context = pc.seal_context(RUN, "client-0", "client-0-3f9a1c2e-3")
    assert context == unhex(example["update.context"])
    box = pc.seal(pc.encode(doc["body"]), AGG_PUBLIC.seal, context, ephemeral=EPHEMERAL)
    assert box == unhex(example["update.box"])
    assert box[4:36].hex() == table_value("`E` = X25519(e, 9)")
    sealed = pc.encode(pc.seal_body(doc, AGG_PUBLIC.seal, ephemeral=EPHEMERAL))
    assert sealed == example["update.sealed_payload"].encode()
    assert pc.sign_frame(sealed, CLIENT) == unhex(example["update.frame"])


def test_the_worked_example_token_decodes() -> None:
    json_text, token_text = blocks("## Join tokens")[:2]
    token = pc.decode_token(token_text)
    assert token == pc.JoinToken(broker="mqtts://broker.example.org:8883", run=RUN, client="client-0",
                                 aggregator_key=AGG_PUBLIC, username="client-0", password="s3cret",
                                 enroll=bytes(range(0xA0, 0xC0)))
    assert json.loads(base64.urlsafe_b64decode(token_text.removeprefix("fedbus1:") + "==")) == json.loads(json_text)


# ---------------------------------------------------------------------------------------------- client -> fedbus
def update_doc(msg_id: str = "paho-1-0a1b2c3d-7", client: str = "client-0") -> dict[str, Any]:
    return {"v": 1, "kind": "update", "run": RUN, "round": 2, "client": client, "id": msg_id, "sent": 1.5,
            "body": {"base_version": 1, "prompt": "Be brief. Ünïcode too.", "stats": {
                "steps": 1, "accepted_steps": 1, "batch_acc_before": 0.0, "batch_acc_after": 0.0, "llm_calls": 0,
                "tokens": 0, "duration_s": 0.001}}}


def test_fedbus_verifies_and_opens_what_the_client_sends() -> None:
    v2 = pc.V2(key=CLIENT, aggregator_key=AGG_PUBLIC)
    frames = [v2.wrap(update_doc()) for _ in range(2)]
    assert frames[0] != frames[1], "a fresh ephemeral key for every box"
    for frame in frames:
        verified = verify(frame, {"client-0": FEDBUS_CLIENT.public}, signer="client-0")
        assert json.loads(verified.payload)["body"].keys() == {"sealed"}
        update = codec.decode(open_body(verified.payload, FEDBUS_AGG))
        assert isinstance(update, Update) and update.prompt == "Be brief. Ünïcode too." and update.base_version == 1
    # the aggregator's own path: Security.authenticate, then open_sealed (required: signed+sealed)
    aggregator = Security.for_aggregator(FEDBUS_AGG, {"client-0": FEDBUS_CLIENT.public})
    assert isinstance(codec.decode(aggregator.open_sealed(aggregator.authenticate(frames[0], signer="client-0"))),
                      Update)
    presence = {"v": 1, "kind": "presence", "run": RUN, "round": 0, "client": "client-0", "id": "p-1", "sent": 0.0,
                "body": {"status": "offline", "engine": ""}}
    wire = v2.wrap(presence)  # not sealed: only updates and failures are
    assert isinstance(codec.decode(aggregator.authenticate(wire, signer="client-0")), Presence)
    assert open_body(aggregator.authenticate(wire, signer="client-0"), FEDBUS_AGG, required=False) == pc.encode(
        presence)


def test_a_sealed_body_opens_only_in_its_own_message() -> None:
    """The context binds the box to run, client and id: moved into another message, it is bad-seal."""
    sealed = pc.seal_body(update_doc(), AGG_PUBLIC.seal)
    for other in ({"id": "paho-1-0a1b2c3d-8"}, {"run": "another-run"}, {"client": "client-1"}):
        moved = pc.encode({**sealed, **other})
        with pytest.raises(WireRejected) as caught:
            open_body(moved, FEDBUS_AGG)
        assert caught.value.reason == "bad-seal"
    with pytest.raises(ValueError, match="low-order"):
        pc.seal(b"{}", bytes(32), b"ctx")


# ---------------------------------------------------------------------------------------------- fedbus -> client
def task_payload(msg_id: str = "aggregator-r0-9") -> bytes:
    return codec.encode(Task(run=RUN, round=2, client="client-0", msg_id=msg_id, sent=3.0, version=1,
                             prompt="Be brief.", local_steps=1, batch_size=2, deadline_s=30.0))


def fedbus_reason(wire: bytes) -> str:
    try:
        verify(wire, {"aggregator": FEDBUS_AGG.public}, signer="aggregator")
    except WireRejected as exc:
        return exc.reason
    return ""


def client_reason(wire: bytes) -> str:
    try:
        pc.V2(key=CLIENT, aggregator_key=AGG_PUBLIC).authenticate(wire, pc.MAX_MESSAGE_BYTES)
    except pc.Forged as exc:
        return exc.reason.removeprefix("forged:")
    return ""


def test_the_client_accepts_what_the_fedbus_aggregator_signs() -> None:
    wire = Security.for_aggregator(FEDBUS_AGG, {}).wrap(task_payload())
    signer, payload = pc.V2(key=CLIENT, aggregator_key=AGG_PUBLIC).authenticate(wire, pc.MAX_MESSAGE_BYTES)
    assert (signer, payload) == ("aggregator", task_payload())
    assert pc.decode(payload)["body"]["prompt"] == "Be brief."


def test_the_client_and_fedbus_refuse_half_a_surrogate_pair_alike() -> None:
    """docs/PROTOCOL.md § Decoding, step 2: a string escaping half a surrogate pair is not-json, in the reference
    client as in fedbus's codec; an escaped whole pair is the character it spells, in both."""
    document = json.loads(task_payload())
    document["body"]["prompt"] = "Be \ud800 brief."
    lone = json.dumps(document).encode()
    with pytest.raises(pc.Rejected) as caught:
        pc.decode(lone)
    assert caught.value.reason == "not-json"
    with pytest.raises(codec.MessageRejected) as ours:
        codec.decode(lone)
    assert ours.value.reason == "not-json"
    document["body"]["prompt"] = "Be \U0001F600 brief."
    pair = json.dumps(document).encode()
    task = codec.decode(pair)
    assert isinstance(task, Task) and pc.decode(pair)["body"]["prompt"] == task.prompt == "Be \U0001F600 brief."


def test_every_altered_frame_is_rejected_with_fedbus_s_reason() -> None:
    """Each single-byte change and each cut of a signed task: the client rejects it, for the reason fedbus gives."""
    wire = sign(task_payload(), FEDBUS_AGG, "aggregator")
    variants = [wire[:i] for i in range(len(wire))]
    variants += [wire[:i] + bytes([wire[i] ^ flip]) + wire[i + 1 :] for i in range(len(wire)) for flip in (1, 0x80)]
    variants += [wire[:4] + bytes([n]) + wire[5:] for n in (0, 9, 11, 65, 200)]
    reasons = {}
    for variant in variants:
        assert client_reason(variant) == fedbus_reason(variant) != "", variant
        reasons[fedbus_reason(variant)] = True
    # (unknown-signer cannot happen here: a client expects only the aggregator, so another id is wrong-signer)
    assert set(reasons) == {"unsigned", "malformed", "wrong-signer", "bad-signature"}


def test_frames_not_from_the_pinned_aggregator_are_forgeries() -> None:
    impostor = PrivateKey(bytes([7]) * 32, bytes([8]) * 32)
    assert client_reason(task_payload()) == "unsigned"  # a v1 payload
    assert client_reason(sign(task_payload(), impostor, "aggregator")) == "bad-signature"
    assert client_reason(sign(task_payload(), FEDBUS_CLIENT, "client-0")) == "wrong-signer"
    big = sign(task_payload(), FEDBUS_AGG, "aggregator")
    with pytest.raises(pc.Forged, match="oversized"):
        pc.V2(key=CLIENT, aggregator_key=AGG_PUBLIC).authenticate(big, len(big) - 1)


# ---------------------------------------------------------------------------------------------- the client itself
class Recorder:
    """Stands in for paho's publish: the client is never connected in these tests."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.sent.append((topic, payload))


def v2_client(capsys: pytest.CaptureFixture[str]) -> tuple[Any, Recorder]:
    opts = pc.Options(host="localhost", port=1883, username=None, password=None, run=RUN, me="client-0",
                      max_rounds=None, timeout_s=None, max_prompt_chars=20_000,
                      v2=pc.V2(key=CLIENT, aggregator_key=AGG_PUBLIC))
    client = pc.PahoClient(opts)
    recorder = Recorder()
    client.mqtt.publish = recorder
    capsys.readouterr()
    return client, recorder


def aggregator_signed(payload: bytes) -> bytes:
    return Security.for_aggregator(FEDBUS_AGG, {}).wrap(payload)


def test_a_forged_task_censors_nobody(capsys: pytest.CaptureFixture[str]) -> None:
    """A forger pre-publishes the aggregator's next task id: dropped as forged, and the id is not burnt, so the
    real task with that id is answered; the update is signed and sealed, and fedbus accepts it."""
    client, recorder = v2_client(capsys)
    data = DataSpec(task="surrogate-skills", seed=1, num_shards=2, train_size=10, val_size=10, test_size=10)
    state = codec.encode(GlobalState(run=RUN, round=1, client="aggregator", msg_id="aggregator-r0-1", sent=0.0,
                                     version=1, prompt="Be brief.", status="running", engine="surrogate", data=data,
                                     rounds=3))
    task_topic = topics.task_topic(RUN, "client-0")
    impostor = PrivateKey(bytes([7]) * 32, bytes([8]) * 32)
    assert client._receive(topics.global_topic(RUN), aggregator_signed(state)) is None
    assert client._receive(task_topic, sign(task_payload(), impostor, "aggregator")) is None
    assert client._receive(task_topic, task_payload()) is None  # v1, on a v2 run
    assert recorder.sent == []
    assert client._receive(task_topic, aggregator_signed(task_payload())) is None
    assert client._receive(task_topic, aggregator_signed(task_payload())) is None  # a redelivery: dropped silently
    log = capsys.readouterr().err
    assert "forged:bad-signature" in log and "forged:unsigned" in log and log.count("dropped") == 2, log
    ((where, wire),) = recorder.sent
    assert where == topics.update_topic(RUN, "client-0")
    aggregator = Security.for_aggregator(FEDBUS_AGG, {"client-0": FEDBUS_CLIENT.public})
    update = codec.decode(aggregator.open_sealed(aggregator.authenticate(wire, signer="client-0")))
    assert isinstance(update, Update) and update.round == 2 and update.base_version == 1
    assert update.prompt == "Be brief. Client client-0 reviewed this prompt in round 2."


def test_presence_and_last_will_are_signed(capsys: pytest.CaptureFixture[str]) -> None:
    client, recorder = v2_client(capsys)
    client.publish_presence("online")
    will = client.presence("offline")
    aggregator = Security.for_aggregator(FEDBUS_AGG, {"client-0": FEDBUS_CLIENT.public})
    for wire in (recorder.sent[0][1], will):
        presence = codec.decode(aggregator.authenticate(wire, signer="client-0"))
        assert isinstance(presence, Presence) and presence.client == "client-0"


# ---------------------------------------------------------------------------------------------- tokens and keys
def fedbus_token(**changes: Any) -> JoinToken:
    fields: dict[str, Any] = {"broker": "mqtt://127.0.0.1:1883", "run": RUN, "client": "client-0",
                              "aggregator_key": FEDBUS_AGG.public, **changes}
    return JoinToken(**fields)


def test_the_client_decodes_tokens_fedbus_writes() -> None:
    token = pc.decode_token(encode_token(fedbus_token(username="u", password="p")))
    assert (token.broker, token.run, token.client, token.username, token.password) == (
        "mqtt://127.0.0.1:1883", RUN, "client-0", "u", "p")
    assert token.aggregator_key == AGG_PUBLIC and token.private_key is None
    if "client_key" in {f.name for f in dataclasses.fields(JoinToken)}:  # fedbus invite: the key in the token
        carried = pc.decode_token(encode_token(fedbus_token(client_key=CLIENT_SEED + CLIENT_SECRET))).private_key
        assert carried == CLIENT and carried.public == CLIENT.public


def reencode(token: str, **changes: Any) -> str:
    raw = token.removeprefix("fedbus1:")
    doc = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    doc.update(changes)
    for name in [k for k, v in doc.items() if v is None]:
        del doc[name]
    text = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return "fedbus1:" + base64.urlsafe_b64encode(text).decode().rstrip("=")


def test_bad_tokens_are_refused_with_fedbus_s_reasons() -> None:
    good = encode_token(fedbus_token())
    other = PrivateKey(bytes([9]) * 32, bytes([10]) * 32).public
    bad = {
        "prefix": "fedbus2:" + good[8:],
        "encoding": good + "=",
        "json": "fedbus1:" + base64.urlsafe_b64encode(b"[1]").decode().rstrip("="),
        "version": reencode(good, v=2),
        "fingerprint-mismatch": reencode(good, aggregator_fingerprint=fingerprint(other)),
        "field": reencode(good, run=None),
    }
    for expected, text in bad.items():
        with pytest.raises(TokenError) as fedbus_says:
            fedbus_decode_token(text)
        with pytest.raises(pc.BadInput) as client_says:
            pc.decode_token(text)
        assert fedbus_says.value.reason == client_says.value.reason == expected, text
    for field_change in ({"broker": "http://x:1"}, {"client": "aggregator"}, {"password": "p"}, {"enroll": "AA"},
                         {"aggregator_key": "fedbus-pk:AAAA"}):
        with pytest.raises(pc.BadInput) as client_says:
            pc.decode_token(reencode(good, **field_change))
        assert client_says.value.reason in ("field", "fingerprint-mismatch"), field_change


def test_the_client_reads_key_files_fedbus_writes(tmp_path: Path) -> None:
    identity = keygen(tmp_path / "paho-1.key", "paho-1")
    key = pc.load_private_key(tmp_path / "paho-1.key")
    assert key.owner == "paho-1" and key.public.text() == identity.public.text()
    assert key.public.text() == load_public(tmp_path / "paho-1.key.pub").key.text()
    (tmp_path / "paho-1.key").chmod(0o640)
    with pytest.raises(pc.BadInput, match="too open"):
        pc.load_private_key(tmp_path / "paho-1.key")
    damaged = json.loads((tmp_path / "paho-1.key").read_text())
    damaged["public"] = FEDBUS_CLIENT.public.text()
    with pytest.raises(pc.BadInput, match="does not belong"):
        pc.parse_private_key(json.dumps(damaged))


# ---------------------------------------------------------------------------------------------- the command line
def test_the_command_line_in_v2(tmp_path: Path) -> None:
    keygen(tmp_path / "client-0.key", "client-0")
    token = tmp_path / "token"
    token.write_text(encode_token(fedbus_token(broker="mqtts://broker.example:8883", username="u", password="p"))
                     + "\n")
    opts = pc.parse_options(["--token", str(token), "--key", str(tmp_path / "client-0.key")])
    assert (opts.host, opts.port, opts.tls, opts.run, opts.me, opts.username, opts.password) == (
        "broker.example", 8883, True, RUN, "client-0", "u", "p")
    assert opts.v2.aggregator_key == AGG_PUBLIC and opts.v2.key.owner == "client-0"
    override = pc.parse_options(["--token", token.read_text(), "--key", str(tmp_path / "client-0.key"),
                                 "--broker", "mqtt://127.0.0.1:1999", "--id", "client-0"])
    assert (override.host, override.port, override.tls, override.username) == ("127.0.0.1", 1999, False, "u")
    v1 = pc.parse_options(["--broker", "mqtt://h:1", "--run", RUN, "--id", "client-0"])
    assert v1.v2 is None


@pytest.mark.parametrize("args", [
    ["--token", "{token}"],  # no key
    ["--token", "{token}", "--key", "{other_key}"],  # another id's key
    ["--token", "{token}", "--key", "{key}", "--id", "client-1"],
    ["--token", "{token}", "--key", "{key}", "--run", "other"],
    ["--token", "fedbus1:AAAA", "--key", "{key}"],
    ["--token", "{missing}", "--key", "{key}"],
    ["--broker", "mqtt://h:1", "--run", "r", "--id", "client-0", "--key", "{key}"],  # a key without a token
    ["--run", "r", "--id", "client-0"],  # no broker
])
def test_bad_v2_command_lines_exit_64(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keygen(tmp_path / "client-0.key", "client-0")
    keygen(tmp_path / "client-9.key", "client-9")
    token = tmp_path / "token"
    token.write_text(encode_token(fedbus_token()))
    paths = {"token": token, "key": tmp_path / "client-0.key", "other_key": tmp_path / "client-9.key",
             "missing": tmp_path / "nothing"}
    with pytest.raises(SystemExit) as exited:
        pc.parse_options([arg.format(**paths) for arg in args])
    assert exited.value.code == 64
    assert "error:" in capsys.readouterr().err


def test_a_token_whose_aggregator_key_cannot_be_sealed_to_is_refused(tmp_path: Path) -> None:
    keygen(tmp_path / "client-0.key", "client-0")
    low_order = PublicKey(sign=FEDBUS_AGG.public.sign, seal=bytes(32))
    token = encode_token(fedbus_token(aggregator_key=low_order))
    with pytest.raises(SystemExit) as exited:
        pc.parse_options(["--token", token, "--key", str(tmp_path / "client-0.key")])
    assert exited.value.code == 64


def test_a_v1_client_does_not_import_cryptography() -> None:
    """`cryptography` is imported lazily, in v2 mode only: a v1 client needs paho-mqtt alone."""
    code = (f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('c', {str(SCRIPT)!r}); "
            "m = importlib.util.module_from_spec(spec); sys.modules['c'] = m; spec.loader.exec_module(m); "
            "m.PahoClient(m.parse_options(['--broker', 'mqtt://h:1', '--run', 'r', '--id', 'c'])); "
            "print('cryptography' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


# ---------------------------------------------------------------------------------------------- paired frames
def paired_task() -> bytes:
    """A task as the fedbus aggregator sends it to client-0: a paired frame under their shared key."""
    authorized = {"client-0": FEDBUS_CLIENT.public}
    return Security.for_aggregator(FEDBUS_AGG, authorized).wrap(task_payload(), to="client-0")


def fedbus_client_reason(wire: bytes) -> str:
    """What fedbus's own client-0 says of ``wire`` (it holds the pair key, as the paho client does)."""
    try:
        Security.for_client("client-0", FEDBUS_CLIENT, FEDBUS_AGG.public).authenticate(wire, signer="aggregator")
    except WireRejected as exc:
        return exc.reason
    return ""


def test_the_client_accepts_the_paired_task_the_fedbus_aggregator_sends() -> None:
    """SECURITY.md § The paired frame, written from the document: the client derives the same pair key."""
    wire = paired_task()
    assert wire.startswith(b"FB2M")
    signer, payload = pc.V2(key=CLIENT, aggregator_key=AGG_PUBLIC).authenticate(wire, pc.MAX_MESSAGE_BYTES)
    assert (signer, payload) == ("aggregator", task_payload())


def test_every_altered_paired_frame_is_rejected_with_fedbus_s_reason() -> None:
    wire = paired_task()
    variants = [wire[:i] for i in range(len(wire))]
    variants += [wire[:i] + bytes([wire[i] ^ flip]) + wire[i + 1 :] for i in range(len(wire)) for flip in (1, 0x80)]
    reasons = {}
    for variant in variants:
        assert client_reason(variant) == fedbus_client_reason(variant) != "", variant
        reasons[fedbus_client_reason(variant)] = True
    assert set(reasons) == {"unsigned", "malformed", "wrong-signer", "bad-signature"}


def test_a_paired_frame_for_another_client_does_not_verify() -> None:
    other = PrivateKey(bytes([7]) * 32, bytes([8]) * 32)
    wire = Security.for_aggregator(FEDBUS_AGG, {"client-1": other.public}).wrap(task_payload(), to="client-1")
    assert wire.startswith(b"FB2M")
    assert client_reason(wire) == fedbus_client_reason(wire) == "bad-signature"
