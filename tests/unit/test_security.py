"""The security layer: signed frames, sealed boxes and bodies, join tokens, key files (docs/SECURITY.md)."""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.errors import LocalProtocolError, RemoteProtocolError
from fedbus.protocol import codec
from fedbus.protocol.messages import Failure, Presence, Update, UpdateStats
from fedbus.security import crypto
from fedbus.security.crypto import PrivateKey
from fedbus.security.errors import KeyFileError, TokenError, WireRejected
from fedbus.security.keyfiles import (
    keygen,
    load_authorized,
    load_private,
    load_public,
    private_text,
    public_path,
    save_authorized,
)
from fedbus.security.keys import (
    AuthorizedKeys,
    PublicKey,
    b64decode_exact,
    b64encode,
    fingerprint,
    parse_authorized,
    parse_public,
)
from fedbus.security.policy import Security
from fedbus.security.sealing import open_body, seal, seal_body, seal_context, unseal
from fedbus.security.signing import (
    MAGIC,
    is_signed,
    pair_key,
    paired,
    sign,
    signed_data,
    signer_of,
    unverified_payload,
    verify,
)
from fedbus.security.token import (
    JoinToken,
    b64url_encode,
    decode_token,
    encode_token,
    enrollment_matches,
    enrollment_proof,
)

# The worked example's keys (docs/SECURITY.md): fixed bytes, so every value derived from them is fixed too.
CLIENT = PrivateKey(bytes(range(0x20)), bytes(range(0x20, 0x40)))
AGGREGATOR = PrivateKey(bytes(range(0x40, 0x60)), bytes(range(0x60, 0x80)))
EPHEMERAL = bytes(range(0x80, 0xA0))
ENROLL_SECRET = bytes(range(0xA0, 0xC0))
OTHER = PrivateKey(bytes([7]) * 32, bytes([8]) * 32)
KEYS = {"client-0": CLIENT.public, "aggregator": AGGREGATOR.public}

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)


def reason(call: object, *args: object, **kwargs: object) -> str:
    """The reason code ``call`` rejects with ("" if it accepts); any other exception fails the test."""
    try:
        call(*args, **kwargs)  # type: ignore[operator]
    except WireRejected as exc:
        return exc.reason
    return ""


def update_payload(prompt: str = "Answer with a number.", msg_id: str = "client-0-3f9a1c2e-3",
                   client: str = "client-0", run: str = "quickstart-7-a1b2c3") -> bytes:
    return codec.encode(Update(run=run, round=1, client=client, msg_id=msg_id, sent=4.8, base_version=0,
                               prompt=prompt, stats=UpdateStats(steps=3, accepted_steps=2, batch_acc_before=0.25,
                                                                batch_acc_after=0.5, llm_calls=42, tokens=6233,
                                                                duration_s=4.67)))


def flip(wire: bytes, data: st.DataObject) -> bytes:
    position = data.draw(st.integers(0, len(wire) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != wire[position]), label="new byte")
    return wire[:position] + bytes([value]) + wire[position + 1:]


# ---------------------------------------------------------------------------------------------- primitives
def test_ed25519_matches_rfc_8032_test_1() -> None:
    """The primitive is plain RFC 8032 Ed25519, so any conforming library in another language agrees."""
    key = PrivateKey(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"), bytes(32))
    assert key.public.sign.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    signature = crypto.ed25519_sign(key, b"")
    assert signature.hex() == ("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
                               "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    assert crypto.ed25519_verify(key.public.sign, signature, b"")


def test_x25519_matches_rfc_7748_section_6_1() -> None:
    """The key agreement is plain RFC 7748 X25519 (Alice and Bob's example)."""
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob_public = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert crypto.x25519_public(alice).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert crypto.x25519_shared(alice, bob_public) == bytes.fromhex(
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


@given(st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32)),
                min_size=1, max_size=6), st.randoms(use_true_random=False))
@settings(max_examples=40)
def test_a_pair_asked_for_from_either_side_gets_the_secret_either_computes(
        pairs: list[tuple[bytes, bytes]], rnd: object) -> None:
    """Where one process holds both keys of a pair (the simulator), the second side gets what the first computed:
    always what it would compute itself (raw secret bytes are never looked up, so they check)."""
    keys = [(PrivateKey(bytes(32), a), PrivateKey(bytes(32), b)) for a, b in pairs]
    asks = [(own, other) for one, two in keys for own, other in ((one, two), (two, one))]
    rnd.shuffle(asks)  # type: ignore[attr-defined]
    for own, other in asks:
        assert crypto.x25519_shared(own, other.public.seal, known=True) == \
            crypto.x25519_shared(own.seal_secret, other.public.seal)


def test_only_a_seed_derived_ephemeral_secret_is_kept_for_the_opener() -> None:
    """A box sealed with a fixed ephemeral secret (the simulator's, from its seed) leaves the shared secret for the
    recipient in this process; a fresh one (over a network, always) leaves nothing behind."""
    before = dict(crypto._SHARED)
    box = seal(b"{}", AGGREGATOR.public, CONTEXT)
    assert dict(crypto._SHARED) == before
    assert unseal(box, AGGREGATOR, CONTEXT) == b"{}" and dict(crypto._SHARED) == before
    fixed = seal(b"{}", AGGREGATOR.public, CONTEXT, ephemeral=bytes([9]) * 32)
    assert len(crypto._SHARED) == len(before) + 1 or len(crypto._SHARED) == crypto._SHARED_MAX
    assert unseal(fixed, AGGREGATOR, CONTEXT) == b"{}"


def test_the_pairs_kept_are_bounded() -> None:
    for n in range(crypto._SHARED_MAX + 10):
        peer = crypto.x25519_public(hashlib.sha256(bytes([n % 256, n // 256])).digest())
        crypto.x25519_shared(CLIENT, peer, known=True)
    assert len(crypto._SHARED) == crypto._SHARED_MAX


def test_a_low_order_point_gives_no_shared_secret() -> None:
    assert crypto.x25519_shared(CLIENT, bytes(32)) is None


def test_private_keys_never_show_their_secrets() -> None:
    assert CLIENT.sign_seed.hex() not in repr(CLIENT) and repr(CLIENT.sign_seed) not in repr(CLIENT)
    assert fingerprint(CLIENT.public) in repr(CLIENT)


def test_a_key_pairs_ed25519_half_is_loaded_only_when_first_needed() -> None:
    """A party that only pairs and seals (the simulator's clients) never pays for the Ed25519 half; one that signs,
    or shows its key, gets the same bytes as a key built from both halves at once."""
    key = PrivateKey(CLIENT.sign_seed, CLIENT.seal_secret)
    assert key._signing is None and key.public._sign is None
    assert key.public.seal == CLIENT.public.seal and key._signing is None  # sealing needs only the X25519 half
    plain = PublicKey(sign=CLIENT.public.sign, seal=CLIENT.public.seal)
    assert key.public == plain and hash(key.public) == hash(plain)  # comparing computes it
    assert key.public.sign == plain.sign and key.public._sign_of is None  # once, then kept
    assert crypto.ed25519_sign(key, b"x") == crypto.ed25519_sign(CLIENT, b"x")
    again = PrivateKey(CLIENT.sign_seed, CLIENT.seal_secret)
    assert again == key and hash(again) == hash(key)  # equal secrets, whatever is loaded yet
    import gc

    # what computes the half holds the seed, not the private key: no cycle, and nothing else of the key kept alive
    near = gc.get_referents(again.public._sign_of)
    near += gc.get_referents(*near)
    assert not any(isinstance(r, PrivateKey) for r in near) and CLIENT.sign_seed in near


def test_a_public_key_read_while_another_thread_finishes_computing_it() -> None:
    """Two threads read a deferred key's Ed25519 half at once: one finds it unset, the other computes it and clears
    its maker before the first reads the maker. The first then takes what the other set (it once failed an
    assert). Forced in one thread: a tracer plays the other thread's part between the two reads."""
    import sys

    key = PublicKey.deferred(CLIENT.public.seal, lambda: pytest.fail("computed twice"))
    code = type(key).sign.fget.__code__  # type: ignore[attr-defined]
    played: list[int] = []

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == first_line + 4 and not played:  # about to read _sign_of
            object.__setattr__(key, "_sign", CLIENT.public.sign)  # the other thread, done: _sign first
            object.__setattr__(key, "_sign_of", None)
            played.append(frame.f_lineno)
        return local

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code is code else None

    first_line = code.co_firstlineno
    lines = inspect.getsource(code).splitlines()
    assert "sign_of = self._sign_of" in lines[4], lines[:6]  # the line the tracer stops before
    sys.settrace(tracer)
    try:
        value = key.sign
    finally:
        sys.settrace(None)
    assert played and value == CLIENT.public.sign


def test_public_keys_are_frozen_values_that_pickle_as_their_bytes() -> None:
    import pickle

    deferred = PrivateKey(OTHER.sign_seed, OTHER.seal_secret).public
    copy = pickle.loads(pickle.dumps(deferred))
    assert copy == OTHER.public and copy._sign_of is None and type(copy) is PublicKey
    assert {deferred: 1}[OTHER.public] == 1
    assert deferred != CLIENT.public and (deferred == "fedbus-pk:") is False
    with pytest.raises(AttributeError):
        deferred.seal = bytes(32)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del deferred.seal
    with pytest.raises(ValueError, match="seal must be 32 bytes"):
        PublicKey(sign=bytes(32), seal=b"short")
    with pytest.raises(ValueError, match="sign must be 32 bytes"):
        PublicKey.deferred(bytes(32), lambda: b"short").sign  # noqa: B018


def test_only_the_crypto_module_imports_the_cryptography_library() -> None:
    """The library is contained in one adapter module (a breaking upgrade touches one file)."""
    import ast

    root = Path(__file__).resolve().parents[2] / "fedbus"

    def imports_it(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name == "cryptography" or name.startswith("cryptography.") for name in names):
                return True
        return False

    importers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if imports_it(p))
    assert importers == ["security/crypto.py"], importers


# ---------------------------------------------------------------------------------------------- signing
def test_sign_then_verify_returns_the_payload_and_the_signer() -> None:
    payload = update_payload()
    verified = verify(sign(payload, CLIENT, "client-0"), KEYS)
    assert verified.payload == payload and verified.signer_id == "client-0"


def test_the_frame_is_magic_id_signature_payload() -> None:
    """The byte layout docs/SECURITY.md specifies."""
    payload = b'{"x":1}'
    wire = sign(payload, CLIENT, "client-0")
    assert wire[:4] == b"FB2S" and wire[4] == 8 and wire[5:13] == b"client-0"
    assert wire[77:] == payload and len(wire) == 4 + 1 + 8 + 64 + len(payload)
    assert crypto.ed25519_verify(CLIENT.public.sign, wire[13:77], b"fedbus/v2 signed\n\x08client-0" + payload)


def test_signatures_are_deterministic() -> None:
    assert sign(b"p", CLIENT, "client-0") == sign(b"p", CLIENT, "client-0")


def test_a_signature_under_another_key_is_a_bad_signature() -> None:
    wire = sign(update_payload(), OTHER, "client-0")
    assert reason(verify, wire, KEYS) == "bad-signature"


def test_a_signer_without_a_key_is_unknown() -> None:
    wire = sign(update_payload(), CLIENT, "client-9")
    assert reason(verify, wire, KEYS) == "unknown-signer"


def test_the_expected_signer_is_enforced_before_the_key_lookup() -> None:
    """On client-1's topic only client-1 may sign, even if client-0's signature is valid."""
    wire = sign(update_payload(), CLIENT, "client-0")
    assert reason(verify, wire, KEYS, signer="client-1") == "wrong-signer"
    assert verify(wire, KEYS, signer="client-0").signer_id == "client-0"


def test_relabelling_the_signer_breaks_the_signature() -> None:
    """The signer id is signed: a frame re-labelled as another id with the same key does not verify."""
    wire = sign(b"payload", CLIENT, "client-0")
    relabelled = MAGIC + bytes([8]) + b"client-1" + wire[13:]
    assert reason(verify, relabelled, {"client-1": CLIENT.public}) == "bad-signature"


def test_signing_as_an_invalid_id_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        sign(b"p", CLIENT, "no/slashes")


@given(payload=st.binary(max_size=300), signer=ids, data=st.data())
@settings(max_examples=300)
def test_flipping_any_byte_of_a_signed_frame_gets_it_rejected(payload: bytes, signer: str,
                                                              data: st.DataObject) -> None:
    wire = sign(payload, CLIENT, signer)
    assert reason(verify, flip(wire, data), {signer: CLIENT.public}) != ""


@given(payload=st.binary(max_size=200), data=st.data())
def test_a_cut_or_extended_frame_is_rejected(payload: bytes, data: st.DataObject) -> None:
    wire = sign(payload, CLIENT, "client-0")
    cut = data.draw(st.integers(0, len(wire) - 1), label="cut at")
    assert reason(verify, wire[:cut], KEYS) != ""
    assert reason(verify, wire + data.draw(st.binary(min_size=1, max_size=8), label="tail"), KEYS) == "bad-signature"


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_random_bytes_are_rejected_never_crash(wire: bytes) -> None:
    assert reason(verify, wire, KEYS) != ""
    assert reason(verify, MAGIC + wire, KEYS) != ""  # past the magic, into the header checks
    assert reason(verify, MAGIC + bytes([8]) + b"client-0" + wire, KEYS) != ""  # into the signature check


@pytest.mark.parametrize(("wire", "why"), [
    (b"", "unsigned"), (b"{}", "unsigned"), (b"FB2", "unsigned"), (b"FB2S", "malformed"),
    (b"FB2S\x00" + bytes(64), "malformed"),  # an empty id
    (b"FB2S\x41" + b"a" * 65 + bytes(64), "malformed"),  # an id of 65
    (b"FB2S\x03a/b" + bytes(64), "malformed"),  # not a fedbus id
    (b"FB2S\x03\xffab" + bytes(64), "malformed"),  # not ASCII
    (b"FB2S\x08client-0" + bytes(63), "malformed"),  # a signature cut short
    (b"FB2S\x08client-0" + bytes(64), "bad-signature"),  # an empty payload, an all-zero signature
])
def test_frame_headers_are_checked_in_order(wire: bytes, why: str) -> None:
    assert reason(verify, wire, KEYS) == why


def test_an_empty_payload_can_be_signed() -> None:
    assert verify(sign(b"", CLIENT, "client-0"), KEYS).payload == b""


def test_verify_rejects_what_is_not_bytes_as_malformed() -> None:
    assert reason(verify, "FB2S", KEYS) == "malformed"
    assert reason(verify, None, KEYS) == "malformed"
    wire = sign(b"p", CLIENT, "client-0")
    assert verify(bytearray(wire), KEYS).payload == b"p"


def test_wire_rejections_are_remote_protocol_errors() -> None:
    """Code that drops a peer's garbage (``except RemoteProtocolError``) drops these too."""
    with pytest.raises(RemoteProtocolError):
        verify(b"{}", KEYS)


def test_a_v1_payload_is_told_apart_by_its_first_byte() -> None:
    payload = update_payload()
    assert not is_signed(payload) and is_signed(sign(payload, CLIENT, "client-0"))
    assert reason(verify, payload, KEYS) == "unsigned"
    assert signer_of(sign(payload, CLIENT, "client-0")) == "client-0" and signer_of(payload) is None


# ---------------------------------------------------------------------------------------------- sealing
CONTEXT = seal_context("quickstart-7-a1b2c3", "client-0", "client-0-3f9a1c2e-3")


def test_seal_then_unseal_returns_the_plaintext() -> None:
    box = seal(b"secret prompt", AGGREGATOR.public, CONTEXT)
    assert unseal(box, AGGREGATOR, CONTEXT) == b"secret prompt"
    assert len(box) == 4 + 32 + len(b"secret prompt") + 16 and box[:4] == b"FB2E"


def test_each_box_has_a_fresh_ephemeral_key() -> None:
    assert seal(b"x", AGGREGATOR.public, CONTEXT) != seal(b"x", AGGREGATOR.public, CONTEXT)


def test_a_fixed_ephemeral_gives_the_same_box() -> None:
    """The test-vector parameter: same inputs, same bytes."""
    one = seal(b"x", AGGREGATOR.public, CONTEXT, ephemeral=EPHEMERAL)
    assert one == seal(b"x", AGGREGATOR.public, CONTEXT, ephemeral=EPHEMERAL)
    assert one[4:36] == crypto.x25519_public(EPHEMERAL)


def test_another_key_cannot_open_a_box() -> None:
    box = seal(b"secret", AGGREGATOR.public, CONTEXT)
    assert reason(unseal, box, OTHER, CONTEXT) == "bad-seal"


@pytest.mark.parametrize("other", [("quickstart-7-a1b2c3", "client-1", "client-0-3f9a1c2e-3"),
                                   ("another-run", "client-0", "client-0-3f9a1c2e-3"),
                                   ("quickstart-7-a1b2c3", "client-0", "client-0-3f9a1c2e-4")])
def test_a_box_does_not_open_under_another_messages_context(other: tuple[str, str, str]) -> None:
    """Replayed into another client's, run's or message's envelope, a sealed body does not open."""
    box = seal(b"secret", AGGREGATOR.public, CONTEXT)
    assert reason(unseal, box, AGGREGATOR, seal_context(*other)) == "bad-seal"


def test_sealing_to_a_low_order_key_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        seal(b"x", PublicKey(sign=AGGREGATOR.public.sign, seal=bytes(32)), CONTEXT)


def test_a_box_with_a_low_order_ephemeral_key_is_a_bad_seal() -> None:
    box = seal(b"x", AGGREGATOR.public, CONTEXT)
    assert reason(unseal, box[:4] + bytes(32) + box[36:], AGGREGATOR, CONTEXT) == "bad-seal"


@given(plaintext=st.binary(max_size=300), data=st.data())
@settings(max_examples=300)
def test_flipping_any_byte_of_a_box_gets_it_rejected(plaintext: bytes, data: st.DataObject) -> None:
    box = seal(plaintext, AGGREGATOR.public, CONTEXT)
    assert reason(unseal, flip(box, data), AGGREGATOR, CONTEXT) in ("malformed", "bad-seal")


@given(plaintext=st.binary(max_size=100), data=st.data())
def test_a_cut_box_is_rejected(plaintext: bytes, data: st.DataObject) -> None:
    box = seal(plaintext, AGGREGATOR.public, CONTEXT)
    assert reason(unseal, box[:data.draw(st.integers(0, len(box) - 1))], AGGREGATOR, CONTEXT) != ""


@given(st.binary(max_size=300))
def test_random_boxes_are_rejected_never_crash(box: bytes) -> None:
    assert reason(unseal, box, AGGREGATOR, CONTEXT) != ""
    assert reason(unseal, b"FB2E" + box, AGGREGATOR, CONTEXT) != ""


# ---------------------------------------------------------------------------------------------- sealed bodies
def test_a_sealed_body_opens_back_into_the_same_message() -> None:
    payload = update_payload()
    sealed = seal_body(payload, AGGREGATOR.public)
    document = json.loads(sealed)
    assert set(document["body"]) == {"sealed"} and "Answer with" not in sealed.decode()
    assert {k: v for k, v in document.items() if k != "body"} == {k: v for k, v in json.loads(payload).items()
                                                                  if k != "body"}
    assert codec.decode(open_body(sealed, AGGREGATOR)) == codec.decode(payload)


def test_a_sealed_body_is_bound_to_its_envelope() -> None:
    """Another client, run or id in the clear envelope (a replay into another message) does not open."""
    sealed = json.loads(seal_body(update_payload(), AGGREGATOR.public))
    for name, value in (("client", "client-1"), ("run", "other-run"), ("id", "client-0-3f9a1c2e-99")):
        moved = dict(sealed, **{name: value})
        assert reason(open_body, json.dumps(moved).encode(), AGGREGATOR) == "bad-seal", name


def test_a_sealed_body_moved_into_another_message_does_not_open() -> None:
    first = json.loads(seal_body(update_payload(msg_id="client-0-a-1"), AGGREGATOR.public))
    second = json.loads(seal_body(update_payload(msg_id="client-0-a-2", prompt="other"), AGGREGATOR.public))
    second["body"] = first["body"]
    assert reason(open_body, json.dumps(second).encode(), AGGREGATOR) == "bad-seal"


def test_an_unsealed_body_is_refused_when_sealing_is_required() -> None:
    payload = update_payload()
    assert reason(open_body, payload, AGGREGATOR) == "not-sealed"
    assert open_body(payload, AGGREGATOR, required=False) == payload


@pytest.mark.parametrize(("payload", "why"), [
    (b"\xff", "malformed"), (b"[]", "malformed"), (b'{"body":[]}', "malformed"),
    (b'{"run":"r","client":"c","id":"i","body":{"sealed":1}}', "malformed"),
    (b'{"run":"r","client":"c","id":"i","body":{"sealed":"","x":1}}', "malformed"),
    (b'{"run":"r","client":"c","id":7,"body":{"sealed":"AAAA"}}', "malformed"),
    (b'{"run":"r","client":"c","id":"\\ud800","body":{"sealed":"AAAA"}}', "malformed"),
    (b'{"run":"r","client":"c","id":"i","body":{"sealed":"AB=="}}', "malformed"),  # non-canonical base64
    (b'{"run":"r","client":"c","id":"i","body":{"sealed":"AAAA"}}', "malformed"),  # too short for a box
])
def test_malformed_sealed_bodies_are_rejected(payload: bytes, why: str) -> None:
    assert reason(open_body, payload, AGGREGATOR) == why


def test_a_box_whose_plaintext_is_not_a_json_object_is_malformed() -> None:
    for plaintext in (b"[1]", b"\xff", b"not json"):
        box = seal(plaintext, AGGREGATOR.public, seal_context("r", "c", "i"))
        document = {"run": "r", "client": "c", "id": "i", "body": {"sealed": b64encode(box)}}
        assert reason(open_body, json.dumps(document).encode(), AGGREGATOR) == "malformed"


def _sealed_by_reading(payload: bytes, ephemeral: bytes) -> bytes:
    """seal_body's reference: parse the message, seal its body written anew, write the message anew."""
    document = json.loads(payload)
    box = seal(codec.write_json(document["body"]), AGGREGATOR.public,
               seal_context(document["run"], document["client"], document["id"]), ephemeral=ephemeral)
    document["body"] = {"sealed": b64encode(box)}
    return codec.write_json(document)


@given(prompt=st.text(max_size=300), reason_text=st.text(max_size=50), msg_id=ids, client=ids, run=ids)
@settings(max_examples=300)
def test_sealing_without_reading_the_body_gives_the_bytes_reading_it_would(prompt: str, reason_text: str,
                                                                            msg_id: str, client: str,
                                                                            run: str) -> None:
    """seal_body seals the codec's body bytes as they are: the same bytes as parsing the message and writing it
    again, whatever the prompt holds (quotes, escapes, ',"body":', non-ASCII); and they open to the message."""
    messages = [codec.decode(update_payload(prompt=prompt, msg_id=msg_id, client=client, run=run)),
                Failure(run=run, round=2, client=client, msg_id=msg_id, sent=1.5, base_version=1,
                        reason=reason_text, error_type="EngineError")]
    for message in messages:
        payload = codec.encode(message)
        sealed = seal_body(payload, AGGREGATOR.public, ephemeral=EPHEMERAL)
        assert sealed == _sealed_by_reading(payload, EPHEMERAL)
        assert codec.decode(open_body(sealed, AGGREGATOR)) == message


def _boxed(plaintext: bytes) -> bytes:
    box = seal(plaintext, AGGREGATOR.public, seal_context("r", "c", "i"))
    return json.dumps({"run": "r", "client": "c", "id": "i", "body": {"sealed": b64encode(box)}}).encode()


def test_an_opened_body_cannot_reach_into_the_envelope() -> None:
    """The opened body goes back into the message as bytes: only one whole JSON object passes, so a plaintext
    cannot close the body and add envelope fields; nor smuggle a lone surrogate, which UTF-8 cannot carry."""
    for plaintext in (b'{"prompt":"x"},"client":"other"', b'{"prompt":"x"}}', b'{"a":1} {"b":2}',
                      b'{"prompt":"\\ud800"}'):
        assert reason(open_body, _boxed(plaintext), AGGREGATOR) == "malformed", plaintext
    opened = json.loads(open_body(_boxed(b'{"prompt":"\\ud83d\\ude00 \\u0001"}'), AGGREGATOR))
    assert opened == {"run": "r", "client": "c", "id": "i", "body": {"prompt": "\U0001f600 \x01"}}


def test_sealing_something_that_is_not_a_message_is_our_bug() -> None:
    for payload in (b"\xff", b"[]", b'{"run":"r","client":"c","id":"i"}'):
        with pytest.raises(LocalProtocolError):
            seal_body(payload, AGGREGATOR.public)


@given(prompt=st.text(max_size=200), data=st.data())
@settings(max_examples=200)
def test_flipping_any_byte_of_a_signed_sealed_update_gets_it_rejected(prompt: str, data: st.DataObject) -> None:
    """The whole pipeline a client sends: encode, seal the body, sign. Any flipped byte is caught by verify
    (and a flip that somehow passed it would still have to open)."""
    wire = sign(seal_body(update_payload(prompt=prompt), AGGREGATOR.public), CLIENT, "client-0")
    tampered = flip(wire, data)
    try:
        opened = open_body(verify(tampered, KEYS, signer="client-0").payload, AGGREGATOR)
    except WireRejected:
        return
    pytest.fail(f"a tampered frame was accepted: {opened!r}")


@given(st.one_of(st.binary(max_size=300), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20).map(lambda doc: json.dumps({"run": "r", "client": "c", "id": "i", "body": {"sealed": doc}})
                       .encode())))
@settings(max_examples=300)
def test_random_payloads_never_crash_open_body(payload: bytes) -> None:
    assert reason(open_body, payload, AGGREGATOR) != ""


@given(st.binary(min_size=52, max_size=300))
def test_random_boxes_in_a_sealed_body_are_bad_seals(box: bytes) -> None:
    document = {"run": "r", "client": "c", "id": "i", "body": {"sealed": b64encode(b"FB2E" + box)}}
    assert reason(open_body, json.dumps(document).encode(), AGGREGATOR) == "bad-seal"


# ---------------------------------------------------------------------------------------------- keys
def test_fingerprints_and_key_texts_are_stable() -> None:
    """Pinned values: a fingerprint printed today must match the one computed next year, in any language."""
    assert fingerprint(CLIENT.public) == "SHA256:NhnnUKLdUrqXiAeyoA31bZrjNUOCiZyn+vpILKhqNSg"
    assert fingerprint(AGGREGATOR.public) == "SHA256:zgTXV1iLYH233R4xxCixgMxVRqtoUC/OfGJa1TwZBB4"
    assert CLIENT.public.text() == ("fedbus-pk:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg1gHLWNliA0a7qMprfkSE4OFHt"
                                    "IaKOO3XpZdDSzRZiVA==")
    digest = hashlib.sha256(CLIENT.public.sign + CLIENT.public.seal).digest()
    assert fingerprint(CLIENT.public) == "SHA256:" + b64encode(digest).rstrip("=")
    assert parse_public(CLIENT.public.text()) == CLIENT.public
    assert len(fingerprint(CLIENT.public)) == 50


@pytest.mark.parametrize("text", ["", "fedbus-pk:", "ed25519:AAAA", "fedbus-pk:" + "A" * 88,
                                  "fedbus-pk:" + b64encode(bytes(63)), "fedbus-pk:" + b64encode(bytes(64))[:-2]])
def test_malformed_public_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="public key"):
        parse_public(text)


def test_base64_must_be_canonical() -> None:
    """Each byte string has one text form: no stray padding bits, no whitespace, no missing padding."""
    assert b64decode_exact("AA==") == b"\x00"
    assert b64decode_exact("AB==") is None and b64decode_exact("AA") is None and b64decode_exact(" AA==") is None
    assert b64decode_exact("AAAA", 2) is None


def test_keygen_writes_a_private_file_only_its_owner_can_read(tmp_path: Path) -> None:
    path = tmp_path / "client-0.key"
    identity = keygen(path, "client-0")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path(path).stat().st_mode) == 0o644
    loaded = load_private(path)
    assert loaded == identity and loaded.owner == "client-0"
    peer = load_public(public_path(path))
    assert (peer.owner, peer.key) == ("client-0", identity.public)
    assert fingerprint(identity.public) in public_path(path).read_text()


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    path = tmp_path / "agg.key"
    keygen(path, "aggregator")
    with pytest.raises(KeyFileError, match="already exists"):
        keygen(path, "aggregator")


def test_a_private_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "client-0.key"
    keygen(path, "client-0")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="too open"):
        load_private(path)


def test_a_damaged_private_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "client-0.key"
    keygen(path, "client-0", key=CLIENT)
    document = json.loads(path.read_text())
    document["x25519"] = b64encode(bytes(32))
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="does not belong"):
        load_private(path)


@pytest.mark.parametrize("text", ["", "[]", '{"type":"fedbus-private-key","v":2}', '{"type":"x"}',
                                  '{"type":"fedbus-private-key","v":1,"id":"a/b","ed25519":"","x25519":""}',
                                  '{"type":"fedbus-private-key","v":1,"id":"c","ed25519":"AA==","x25519":"AA=="}'])
def test_malformed_private_key_files_say_why(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=str(path)):
        load_private(path)


def test_the_private_key_file_format() -> None:
    from fedbus.security.keyfiles import Identity

    document = json.loads(private_text(Identity(owner="client-0", key=CLIENT)))
    assert document == {"type": "fedbus-private-key", "v": 1, "id": "client-0",
                        "ed25519": b64encode(CLIENT.sign_seed), "x25519": b64encode(CLIENT.seal_secret),
                        "public": CLIENT.public.text()}


def test_authorized_keys_parse_with_comments_and_round_trip(tmp_path: Path) -> None:
    text = (f"# clients of run 7\n\nclient-0 {CLIENT.public.text()} laptop of Ann\n"
            f"client-1 {OTHER.public.text()}\n")
    keys = parse_authorized(text)
    assert list(keys) == ["client-0", "client-1"] and keys.get("client-0") == CLIENT.public
    assert keys.get("client-9") is None
    path = tmp_path / "authorized_keys"
    save_authorized(path, keys)
    assert load_authorized(path) == keys


@pytest.mark.parametrize(("text", "problem"), [
    ("client-0\n", "expected"),
    ("client/0 fedbus-pk:AAAA\n", "not a fedbus id"),
    ("client-0 fedbus-pk:AAAA\n", "public key"),
    (f"aggregator {CLIENT.public.text()}\n", "not a client id"),
    (f"client-0 {CLIENT.public.text()}\nclient-0 {OTHER.public.text()}\n", "twice"),
    (f"client-0 {CLIENT.public.text()}\nclient-1 {CLIENT.public.text()}\n", "same key"),
])
def test_bad_authorized_keys_lines_are_named(text: str, problem: str) -> None:
    with pytest.raises(KeyFileError, match=problem) as info:
        parse_authorized(text, "authorized_keys")
    assert "line " in str(info.value)


def test_enrolling_adds_a_key_and_refuses_to_replace_one() -> None:
    keys = AuthorizedKeys().with_key("client-0", CLIENT.public)
    assert keys.get("client-0") == CLIENT.public and keys.with_key("client-0", CLIENT.public) is keys
    with pytest.raises(ValueError, match="twice"):
        keys.with_key("client-0", OTHER.public)


def test_a_pub_file_is_an_authorized_keys_line(tmp_path: Path) -> None:
    """``cat client-0.key.pub >> authorized_keys`` authorizes the client."""
    path = tmp_path / "client-0.key"
    identity = keygen(path, "client-0")
    assert parse_authorized(public_path(path).read_text()).get("client-0") == identity.public


# ---------------------------------------------------------------------------------------------- join tokens
TOKEN = JoinToken(broker="mqtts://broker.example.org:8883", run="quickstart-7-a1b2c3", client="client-0",
                  aggregator_key=AGGREGATOR.public, username="client-0", password="s3cret",
                  enrollment_secret=ENROLL_SECRET)


def test_a_token_round_trips() -> None:
    assert decode_token(encode_token(TOKEN)) == TOKEN
    bare = JoinToken(broker="mqtt://10.0.0.5:1883", run="r", client="c", aggregator_key=AGGREGATOR.public)
    assert decode_token(encode_token(bare)) == bare
    assert decode_token("  " + encode_token(bare) + "\n") == bare  # pasted with whitespace


@given(run=ids, client=ids.filter(lambda c: c != "aggregator"), user=st.none() | st.text(min_size=1, max_size=20),
       secret=st.none() | st.binary(min_size=32, max_size=32), port=st.integers(1, 65535))
def test_every_token_round_trips(run: str, client: str, user: str | None, secret: bytes | None, port: int) -> None:
    token = JoinToken(broker=f"mqtts://host.example:{port}", run=run, client=client, aggregator_key=OTHER.public,
                      username=user, password=None if user is None else "p", enrollment_secret=secret)
    text = encode_token(token)
    assert decode_token(text) == token and re.fullmatch(r"fedbus1:[A-Za-z0-9_-]+", text)


def test_a_token_hides_its_secrets_from_repr() -> None:
    assert "s3cret" not in repr(TOKEN) and repr(ENROLL_SECRET) not in repr(TOKEN)


def token_of(document: object) -> str:
    return "fedbus1:" + b64url_encode(json.dumps(document).encode())


def good_document() -> dict[str, object]:
    return json.loads(WORKED["token.json"])  # type: ignore[no-any-return]


@pytest.mark.parametrize(("change", "why", "field"), [
    ({"v": 2}, "version", ""),
    ({"v": True}, "version", ""),
    ({"run": None}, "field", "run"),
    ({"run": "a/b"}, "field", "run"),
    ({"client": "aggregator"}, "field", "client"),
    ({"broker": "http://host:1883"}, "field", "broker"),
    ({"broker": "mqtt://user:pw@host:1883"}, "field", "broker"),
    ({"broker": "mqtt://host:99999"}, "field", "broker"),
    ({"broker": "mqtt://host/path"}, "field", "broker"),
    ({"broker": "mqtt:// host"}, "field", "broker"),
    ({"broker": 5}, "field", "broker"),
    ({"aggregator_key": "fedbus-pk:AAAA"}, "field", "aggregator_key"),
    ({"aggregator_fingerprint": "SHA256:" + "A" * 43}, "fingerprint-mismatch", "aggregator_fingerprint"),
    ({"username": None, "password": "p"}, "field", "password"),
    ({"username": ""}, "field", "username"),
    ({"enroll": "AAAA"}, "field", "enroll"),
    ({"enroll": "!!"}, "field", "enroll"),
])
def test_malformed_tokens_name_the_field(change: dict[str, object], why: str, field: str) -> None:
    document = good_document()
    document.update(change)
    document = {k: v for k, v in document.items() if v is not None}
    with pytest.raises(TokenError) as info:
        decode_token(token_of(document))
    assert (info.value.reason, info.value.field) == (why, field)


def test_an_altered_key_in_a_token_is_caught_by_its_fingerprint() -> None:
    document = good_document()
    document["aggregator_key"] = OTHER.public.text()
    with pytest.raises(TokenError) as info:
        decode_token(token_of(document))
    assert info.value.reason == "fingerprint-mismatch"


@pytest.mark.parametrize(("text", "why"), [
    ("", "prefix"), ("fedbus2:e30", "prefix"), (b"fedbus1:e30", "prefix"), ("fedbus1:e30=", "encoding"),
    ("fedbus1:e3", "encoding"), ("fedbus1:" + "A" * 9000, "encoding"), ("fedbus1:_w", "json"),
    ("fedbus1:" + b64url_encode(b"[1]"), "json"), ("fedbus1:" + b64url_encode(b"{}"), "version"),
])
def test_malformed_tokens_are_refused_with_a_reason(text: object, why: str) -> None:
    with pytest.raises(TokenError) as info:
        decode_token(text)
    assert info.value.reason == why


def test_a_cut_token_is_refused() -> None:
    text = encode_token(TOKEN)
    for cut in range(len(text) - 1, 0, -7):
        with pytest.raises(TokenError):
            decode_token(text[:cut])


@given(st.text(max_size=200))
def test_random_text_is_refused_never_crashes(text: str) -> None:
    for candidate in (text, "fedbus1:" + text):
        with pytest.raises(TokenError):
            decode_token(candidate)


@given(st.dictionaries(st.sampled_from(["v", "broker", "run", "client", "aggregator_key", "aggregator_fingerprint",
                                        "username", "password", "enroll"]),
                       st.none() | st.integers() | st.text(max_size=30) | st.just(1), max_size=9))
def test_random_token_documents_are_refused_never_crash(document: dict[str, object]) -> None:
    with pytest.raises(TokenError):
        decode_token(token_of(document))


def test_the_enrollment_proof_binds_secret_run_client_and_key() -> None:
    proof = enrollment_proof(ENROLL_SECRET, "run-7", "client-0", CLIENT.public)
    assert enrollment_matches(ENROLL_SECRET, "run-7", "client-0", CLIENT.public, proof)
    assert not enrollment_matches(ENROLL_SECRET, "run-7", "client-0", OTHER.public, proof)  # a swapped key
    assert not enrollment_matches(ENROLL_SECRET, "run-7", "client-1", CLIENT.public, proof)
    assert not enrollment_matches(ENROLL_SECRET, "run-8", "client-0", CLIENT.public, proof)
    assert not enrollment_matches(bytes(32), "run-7", "client-0", CLIENT.public, proof)


# ---------------------------------------------------------------------------------------------- worked example
def wrap_hex(raw: bytes, width: int = 32) -> str:
    """Hex, ``width`` bytes a line: how docs/SECURITY.md prints byte strings."""
    text = raw.hex()
    return "\n".join(text[i:i + 2 * width] for i in range(0, len(text), 2 * width))


def worked_example() -> dict[str, str]:
    """Every value docs/SECURITY.md's worked example shows, computed from the fixed keys above."""
    presence = codec.encode(Presence(run="quickstart-7-a1b2c3", round=0, client="client-0",
                                     msg_id="client-0-3f9a1c2e-2", sent=0.05, status="online"))
    signed = sign(presence, CLIENT, "client-0")
    update = update_payload()
    context = seal_context("quickstart-7-a1b2c3", "client-0", "client-0-3f9a1c2e-3")
    body = json.dumps(json.loads(update)["body"], ensure_ascii=False, separators=(",", ":")).encode()
    ephemeral_public = crypto.x25519_public(EPHEMERAL)
    shared = crypto.x25519_shared(EPHEMERAL, AGGREGATOR.public.seal) or b""
    okm = crypto.hkdf_sha256(shared, ephemeral_public + AGGREGATOR.public.seal, b"fedbus/v2 sealed", 44)
    box = seal(body, AGGREGATOR.public, context, ephemeral=EPHEMERAL)
    sealed_update = seal_body(update, AGGREGATOR.public, ephemeral=EPHEMERAL)
    frame = sign(sealed_update, CLIENT, "client-0")
    token_text = encode_token(TOKEN)
    return {
        "client.ed25519_public": CLIENT.public.sign.hex(),
        "client.x25519_public": CLIENT.public.seal.hex(),
        "client.public": CLIENT.public.text(),
        "client.fingerprint": fingerprint(CLIENT.public),
        "aggregator.ed25519_public": AGGREGATOR.public.sign.hex(),
        "aggregator.x25519_public": AGGREGATOR.public.seal.hex(),
        "aggregator.public": AGGREGATOR.public.text(),
        "aggregator.fingerprint": fingerprint(AGGREGATOR.public),
        "presence.payload": presence.decode(),
        "presence.signed_data": wrap_hex(signed_data("client-0", presence)),
        "presence.signature": wrap_hex(signed[13:77]),
        "presence.frame": wrap_hex(signed),
        "update.payload": update.decode(),
        "update.body": body.decode(),
        "update.context": wrap_hex(context),
        "update.ephemeral_public": ephemeral_public.hex(),
        "update.shared": shared.hex(),
        "update.aead_key": okm[:32].hex(),
        "update.aead_nonce": okm[32:].hex(),
        "update.box": wrap_hex(box),
        "update.sealed_payload": sealed_update.decode(),
        "update.frame": wrap_hex(frame),
        "enroll.proof": enrollment_proof(ENROLL_SECRET, "quickstart-7-a1b2c3", "client-0", CLIENT.public).hex(),
        "token.json": _token_json(token_text),
        "token": token_text,
    }


def _token_json(text: str) -> str:
    raw = text.removeprefix("fedbus1:")
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


WORKED = worked_example()


def test_the_worked_example_in_the_security_document_is_what_the_code_writes() -> None:
    """docs/SECURITY.md's byte-for-byte example is this code's output: each value appears in it verbatim."""
    document = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"
    if not document.exists():  # bench/mutation.py runs a copy of tests/ without docs/
        pytest.skip("docs/SECURITY.md is not beside this copy of the tests")
    text = document.read_text(encoding="utf-8")
    missing = [name for name, value in WORKED.items() if value not in text]
    assert missing == []


def test_the_key_schedule_is_plain_hkdf_sha256() -> None:
    """HKDF written out with hmac (RFC 5869), as another language would: the same key and nonce."""
    import hmac

    salt = bytes.fromhex(WORKED["update.ephemeral_public"]) + AGGREGATOR.public.seal
    prk = hmac.new(salt, bytes.fromhex(WORKED["update.shared"]), hashlib.sha256).digest()
    first = hmac.new(prk, b"fedbus/v2 sealed\x01", hashlib.sha256).digest()
    second = hmac.new(prk, first + b"fedbus/v2 sealed\x02", hashlib.sha256).digest()
    assert (first + second)[:44].hex() == WORKED["update.aead_key"] + WORKED["update.aead_nonce"]


def test_the_worked_example_checks_out() -> None:
    """The example's frames verify and open with the example's keys."""
    frame = bytes.fromhex(WORKED["update.frame"].replace("\n", ""))
    payload = open_body(verify(frame, KEYS, signer="client-0").payload, AGGREGATOR)
    assert codec.decode(payload) == codec.decode(WORKED["update.payload"].encode())
    presence = bytes.fromhex(WORKED["presence.frame"].replace("\n", ""))
    assert verify(presence, KEYS).payload == WORKED["presence.payload"].encode()
    assert decode_token(WORKED["token"]) == TOKEN


# ---------------------------------------------------------------------------------------------- paired frames
def test_both_sides_of_a_pair_compute_the_same_key_and_nobody_else_does() -> None:
    ours = pair_key(CLIENT, AGGREGATOR.public, "client-0", aggregator=False)
    assert ours == pair_key(AGGREGATOR, CLIENT.public, "client-0", aggregator=True)
    assert ours is not None and len(ours) == 32
    assert pair_key(OTHER, AGGREGATOR.public, "client-0", aggregator=False) != ours  # another client's key
    assert pair_key(CLIENT, AGGREGATOR.public, "client-1", aggregator=False) != ours  # bound to the id


def pairs_of(own: PrivateKey, *, aggregator: bool) -> Callable[[str, PublicKey], bytes | None]:
    """A receiver's pair keys: the aggregator's with each client, or client-0's with the aggregator."""
    def pairs(signer: str, key: PublicKey) -> bytes | None:
        return pair_key(own, key, signer if aggregator else "client-0", aggregator=aggregator)
    return pairs


def test_a_paired_frame_verifies_only_at_the_other_party_of_its_pair() -> None:
    payload = b'{"kind":"update"}'
    wire = paired(payload, pair_key(CLIENT, AGGREGATOR.public, "client-0", aggregator=False) or b"", "client-0")
    assert wire.startswith(b"FB2M") and is_signed(wire) and signer_of(wire) == "client-0"
    assert unverified_payload(wire) == payload
    got = verify(wire, KEYS, signer="client-0", pairs=pairs_of(AGGREGATOR, aggregator=True))
    assert (got.payload, got.signer_id) == (payload, "client-0")
    with pytest.raises(WireRejected, match="unknown-signer"):  # a receiver that shares no key with client-0
        verify(wire, KEYS, signer="client-0")
    with pytest.raises(WireRejected, match="bad-signature"):  # the aggregator of another federation
        verify(wire, KEYS, signer="client-0", pairs=pairs_of(OTHER, aggregator=True))
    tampered = wire[:-1] + bytes([wire[-1] ^ 1])
    with pytest.raises(WireRejected, match="bad-signature"):
        verify(tampered, KEYS, signer="client-0", pairs=pairs_of(AGGREGATOR, aggregator=True))


def test_a_client_cannot_pass_its_own_paired_frame_off_as_the_aggregator_s() -> None:
    """Both directions share the key: the sender id inside the tagged bytes tells them apart."""
    shared = pair_key(CLIENT, AGGREGATOR.public, "client-0", aggregator=False) or b""
    mine = paired(b"{}", shared, "client-0")
    relabelled = b"FB2M" + bytes([10]) + b"aggregator" + mine[5 + len("client-0"):]
    with pytest.raises(WireRejected, match="bad-signature"):
        verify(relabelled, KEYS, signer="aggregator", pairs=pairs_of(AGGREGATOR, aggregator=True))
    with pytest.raises(WireRejected, match="wrong-signer"):
        verify(mine, KEYS, signer="aggregator", pairs=pairs_of(AGGREGATOR, aggregator=True))


def test_the_check_pool_s_check_takes_paired_updates_as_the_session_does() -> None:
    from fedbus.security.checks import Job, check

    sender = Security.for_client("client-0", CLIENT, AGGREGATOR.public)
    body = update_payload()
    wire = sender.wrap(body, sealed=True, to="aggregator")
    assert wire.startswith(b"FB2M")
    found = check(Job(wire, "client-0", CLIENT.public, True), AGGREGATOR, sealing_required=True)
    assert found.opened == body
    receiver = Security.for_aggregator(AGGREGATOR, {"client-0": CLIENT.public})
    assert receiver.open_sealed(receiver.authenticate(wire, signer="client-0")) == body


def test_sealing_unread_gives_the_rewritten_bytes_with_small_floats_and_a_null_in_sight() -> None:
    """The codec's numbers are orjson's whatever else the message holds (a "null" in an id sent the whole
    message to json's writer once, which writes 1e-05 where orjson writes 0.00001)."""
    message = Update(run="nullrun", round=1, client="nullbox", msg_id="nullbox-1", sent=1e-05, base_version=0,
                     prompt="null or None?", stats=UpdateStats(steps=1, accepted_steps=1, batch_acc_before=1e-05,
                                                              batch_acc_after=2.5e-07, llm_calls=1, tokens=2,
                                                              duration_s=1e-06))
    payload = codec.encode(message)
    assert payload == codec.write_json(json.loads(payload))
    sealed = seal_body(payload, AGGREGATOR.public, ephemeral=EPHEMERAL)
    assert sealed == _sealed_by_reading(payload, EPHEMERAL)
    assert codec.decode(open_body(sealed, AGGREGATOR)) == message
