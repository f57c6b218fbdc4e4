"""What a session needs to speak protocol v2: who it is, its private key, whom it trusts, and the mode.

A :class:`Security` is a frozen value a session takes at construction
(:class:`~fedbus.aggregator.session.AggregatorSession`, :class:`~fedbus.client.session.ClientSession`). It turns
the v1 payloads the codec writes into what goes on the wire (:meth:`Security.wrap`: the body sealed to the
aggregator, then the whole signed) and back (:meth:`Security.authenticate`, then :meth:`Security.open_sealed`
at the aggregator). ``None`` or mode ``none`` is protocol v1, byte for byte: :meth:`wrap` and
:meth:`authenticate` hand the payload back untouched.

Modes (the scenario's ``security`` setting, docs/SECURITY.md):

- ``signed+sealed`` (the default): every message signed; update and failure bodies sealed to the aggregator,
  and the aggregator refuses a plain one (``not-sealed``);
- ``signed``: every message signed, bodies in clear (a sealed one still opens at the aggregator);
- ``none``: protocol v1: anyone who can publish on the broker can post as anyone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedbus.errors import LocalProtocolError
from fedbus.protocol.ids import AGGREGATOR, is_valid_id
from fedbus.security.crypto import SIGNATURE_BYTES, PrivateKey, hmac_sha256
from fedbus.security.keys import KEY_BYTES, KeyLookup, PublicKey, fingerprint
from fedbus.security.sealing import OVERHEAD as SEAL_OVERHEAD
from fedbus.security.sealing import open_body, seal_body
from fedbus.security.signing import MAGIC as SIGNED_MAGIC
from fedbus.security.signing import MAX_SIGNER_ID, pair_key, paired, sign, verify

SECURITY_MODES = ("signed+sealed", "signed", "none")
DEFAULT_SECURITY = "signed+sealed"
# what a frame adds to its payload at most: magic, length byte, a 64-character signer id, the signature
FRAME_OVERHEAD = len(SIGNED_MAGIC) + 1 + MAX_SIGNER_ID + SIGNATURE_BYTES


def secured_size(payload_bytes: int, mode: str) -> int:
    """The most bytes a v1 message of ``payload_bytes`` takes on the wire in ``mode``: its body sealed and
    written in base64 (the envelope, counted as if it were body too, only grows the bound), then the frame."""
    if mode == "none":
        return payload_bytes
    if mode == "signed+sealed":
        payload_bytes = 4 * -(-(payload_bytes + SEAL_OVERHEAD) // 3) + len('{"sealed":""}')
    return payload_bytes + FRAME_OVERHEAD


@dataclass(frozen=True, slots=True, kw_only=True)
class Security:
    """One party's protocol-v2 settings.

    ``owner`` is the id it signs as (a client id, or ``aggregator``) and ``key`` its private key. The aggregator
    knows the clients it accepts (``authorized``: any :class:`~fedbus.security.keys.KeyLookup`, e.g. an
    :class:`~fedbus.security.keys.AuthorizedKeys`); a client pins the aggregator's public key
    (``aggregator_key``) and trusts nothing else.

    ``ephemeral_seed`` is for the simulator only: left ``None`` (always over a network), every sealed box draws a
    fresh ephemeral secret from the OS; given, a box's ephemeral secret is HMAC-SHA256(``ephemeral_seed``, the
    payload being sealed), so that a seed replays the same bytes. Distinct payloads (distinct message ids) never
    share one, but whoever knows the seed can open the boxes: never over a network."""

    mode: str = DEFAULT_SECURITY
    owner: str = AGGREGATOR
    key: PrivateKey | None = None
    authorized: KeyLookup | None = None
    aggregator_key: PublicKey | None = None
    ephemeral_seed: bytes | None = field(default=None, repr=False)
    _peers: KeyLookup = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in SECURITY_MODES:
            raise ValueError(f"security mode {self.mode!r} is not one of {', '.join(SECURITY_MODES)}")
        peers: KeyLookup = {}
        if self.mode != "none":
            if not is_valid_id(self.owner):
                raise ValueError(f"Security.owner {self.owner!r} is not a fedbus id")
            if not isinstance(self.key, PrivateKey):
                raise ValueError(f"security {self.mode} needs {self.owner}'s private key")
            if self.owner == AGGREGATOR:
                if self.authorized is None:
                    raise ValueError("the aggregator's security needs the authorized client keys")
                peers = self.authorized
            elif not isinstance(self.aggregator_key, PublicKey):
                raise ValueError(f"client {self.owner}'s security needs the aggregator's public key, pinned")
            else:
                peers = {AGGREGATOR: self.aggregator_key}
        seed = self.ephemeral_seed
        if seed is not None and (type(seed) is not bytes or len(seed) < KEY_BYTES):
            raise ValueError(f"Security.ephemeral_seed must be at least {KEY_BYTES} bytes")
        object.__setattr__(self, "_peers", peers)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def off(cls) -> Security:
        """Protocol v1: nothing signed, nothing checked."""
        return cls(mode="none")

    @classmethod
    def for_aggregator(cls, key: PrivateKey, authorized: KeyLookup, *, mode: str = DEFAULT_SECURITY,
                       ephemeral_seed: bytes | None = None) -> Security:
        """The aggregator's: it signs as ``aggregator`` with ``key`` and accepts the clients in ``authorized``."""
        return cls(mode=mode, owner=AGGREGATOR, key=key, authorized=authorized, ephemeral_seed=ephemeral_seed)

    @classmethod
    def for_client(cls, client: str, key: PrivateKey, aggregator_key: PublicKey, *, mode: str = DEFAULT_SECURITY,
                   ephemeral_seed: bytes | None = None) -> Security:
        """Client ``client``'s: it signs with ``key``, seals to and trusts only ``aggregator_key``."""
        if client == AGGREGATOR:
            raise ValueError(f"{AGGREGATOR!r} is the aggregator's id, not a client's")
        return cls(mode=mode, owner=client, key=key, aggregator_key=aggregator_key, ephemeral_seed=ephemeral_seed)

    # ------------------------------------------------------------------ what it means
    @property
    def signs(self) -> bool:
        """Every message is signed, and every message received must be (protocol v2)."""
        return self.mode != "none"

    @property
    def seals(self) -> bool:
        """Update and failure bodies are sealed to the aggregator, and must be."""
        return self.mode == "signed+sealed"

    def describe(self) -> dict[str, object]:
        """For summary.json and the logs: the mode, and the fingerprint of the owner's public key."""
        own = None if self.key is None or not self.signs else fingerprint(self.key.public)
        return {"mode": self.mode, "signed": self.signs, "sealed": self.seals, "owner": self.owner if self.signs
                else None, "fingerprint": own}

    # ------------------------------------------------------------------ going out
    def wrap(self, payload: bytes, *, sealed: bool = False, to: str | None = None) -> bytes:
        """What goes on the wire for ``payload`` (a v1 message as the codec wrote it): in mode ``none`` the
        payload itself; else, with ``sealed`` (an update or failure) and a sealing mode, its body sealed to the
        aggregator, and then the whole signed as ``owner``. ``to``: the one party it is for (``aggregator`` from a
        client, a client id from the aggregator): then a paired frame under the key the two share, where there is
        one (the aggregator knows the client's key); a broadcast, or a message read back by its sender, is signed."""
        if not self.signs or self.key is None:
            return payload
        if sealed and self.seals:
            if self.aggregator_key is None:
                raise LocalProtocolError(f"{self.owner} has no aggregator key to seal to")
            payload = seal_body(payload, self.aggregator_key, ephemeral=self._ephemeral(payload))
        if to is not None and (peer := self._peers.get(to)) is not None:
            shared = self._pair(to, peer)
            if shared is not None:
                return paired(payload, shared, self.owner)
        return sign(payload, self.key, self.owner)

    def _pair(self, other: str, key: PublicKey) -> bytes | None:
        """The key this party shares with ``other`` (whose public key is ``key``): a client only with the
        aggregator, the aggregator with each client."""
        if self.key is None:
            return None
        if self.owner == AGGREGATOR:
            return None if other == AGGREGATOR else pair_key(self.key, key, other, aggregator=True)
        return pair_key(self.key, key, self.owner, aggregator=False) if other == AGGREGATOR else None

    def _ephemeral(self, payload: bytes) -> bytes | None:
        if self.ephemeral_seed is None:
            return None
        return hmac_sha256(self.ephemeral_seed, payload)

    # ------------------------------------------------------------------ coming in
    def authenticate(self, wire: bytes, *, signer: str) -> bytes:
        """The v1 payload inside ``wire``, once verified as signed by ``signer`` (the client of the topic it came
        on, or ``aggregator``) with a key this party trusts. In mode ``none``, ``wire`` itself.

        Raises :class:`~fedbus.security.errors.WireRejected` (``unsigned``, ``malformed``, ``wrong-signer``,
        ``unknown-signer``, ``bad-signature``) and nothing else: nothing that fails here may be attributed to
        ``signer``."""
        if not self.signs:
            return wire
        return verify(wire, self._peers, signer=signer, pairs=self._pair).payload

    def authenticate_own(self, wire: bytes) -> bytes:
        """The v1 payload inside ``wire``, once verified as signed by this party itself (its own key): for a
        driver that reads back what it left retained on the broker (a run's ``global``, a client's presence)
        before trusting it. In mode ``none``, ``wire`` itself. Raises
        :class:`~fedbus.security.errors.WireRejected`."""
        if not self.signs or self.key is None:
            return wire

        def own_pair(_signer: str, _key: PublicKey) -> bytes | None:  # a client's paired frame to the aggregator
            return None if self.aggregator_key is None else self._pair(AGGREGATOR, self.aggregator_key)

        return verify(wire, {self.owner: self.key.public}, signer=self.owner, pairs=own_pair).payload

    def open_sealed(self, payload: bytes) -> bytes:
        """An authenticated update or failure with its body opened (the aggregator's key); a plain body is
        ``not-sealed`` in a sealing mode, and passes in mode ``signed``. In mode ``none``, ``payload`` itself.

        Raises :class:`~fedbus.security.errors.WireRejected` (``malformed``, ``not-sealed``, ``bad-seal``): the
        signer sent it, so it is the signer's to answer for."""
        if not self.signs or self.key is None:
            return payload
        return open_body(payload, self.key, required=self.seals)
