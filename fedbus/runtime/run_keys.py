"""A run's keys on disk, in RUN_DIR/keys/ (a 0700 folder), and the invitations remote clients join with.

- ``run.secret`` (0600): 32 random bytes every key of the run's own parties derives from. ``--resume`` needs the
  same secret, because the journal replays signed and sealed frames.
- ``aggregator.pub`` (0644): the aggregator's public key, one authorized-keys line, written when the run starts;
  ``fedbus invite`` puts it (and its fingerprint) in each join token, and an operator compares fingerprints.
- ``authorized_keys`` (0644): the remote clients ``fedbus invite`` authorized, one ``<id> fedbus-pk:...`` line
  each. The aggregator re-reads it while it runs (:class:`RemoteKeys`), so a client invited after the start
  joins at once.

``fedbus invite`` mints the client's key pair and puts the private half in the token (:func:`invite`): the
simplest enrollment, with one cost: the token is the client's credential and must be handed over like a
password. ``fedbus invite --public FILE`` authorizes a key the client generated itself (``fedbus keygen``), and
its token holds no secret key.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbus.logs import structlog
from fedbus.protocol.ids import AGGREGATOR
from fedbus.runtime.address import parse_broker_url
from fedbus.runtime.journal import CHECKPOINT, Journal, ResumeError
from fedbus.security.crypto import PrivateKey, generate, random_bytes
from fedbus.security.errors import KeyFileError
from fedbus.security.keyfiles import PUBLIC_MODE, load_authorized, load_public, save_authorized
from fedbus.security.keys import AuthorizedKeys, PublicKey, authorized_line, fingerprint, parse_public
from fedbus.security.token import JoinToken, encode_token

log = structlog.get_logger("fedbus.keys")
KEYS = "keys"
SECRET = "run.secret"
AGGREGATOR_PUB = "aggregator.pub"
AUTHORIZED = "authorized_keys"
RELOAD_S = 2.0  # how often a running aggregator looks whether its authorized-keys files changed


def run_secret(run_dir: Path, *, resume: bool) -> bytes:
    """The run's secret: read back when resuming, else drawn fresh and written."""
    path = run_dir / KEYS / SECRET
    if resume:
        try:
            return bytes.fromhex(path.read_text(encoding="ascii").strip())
        except (OSError, ValueError) as exc:
            raise ResumeError(f"--resume {run_dir}: its key secret {path} cannot be read ({exc}); the journal's "
                              "signed messages cannot be replayed without it") from exc
    secret = random_bytes(32)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secret.hex() + "\n")
    return secret


def write_aggregator_key(run_dir: Path, key: PublicKey) -> Path:
    """RUN_DIR/keys/aggregator.pub: the aggregator's public key, for ``fedbus invite`` (rewritten on resume: the
    same key, derived from the same secret)."""
    path = run_dir / KEYS / AGGREGATOR_PUB
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(authorized_line(AGGREGATOR, key), encoding="ascii")
    temporary.chmod(PUBLIC_MODE)
    os.replace(temporary, path)
    return path


def authorized_path(run_dir: Path) -> Path:
    """RUN_DIR/keys/authorized_keys: the remote clients ``fedbus invite`` authorized."""
    return run_dir / KEYS / AUTHORIZED


# ---------------------------------------------------------------------------------------------- the aggregator's
@dataclass(frozen=True, slots=True)
class _Source:
    path: Path
    stamp: tuple[int, int, int] | None  # (mtime_ns, size, inode) when last read; None: absent
    keys: AuthorizedKeys


def key_line(client: str, key: PublicKey) -> dict[str, Any]:
    """The journal's record of a remote client's key as the aggregator read it from its authorized-keys files.
    Written when the key is first read (before the message that made the aggregator look), so a replay meets it
    before anything the key signed, and can check what the client sent even after its line is gone."""
    return {"k": "key", "client": client, "key": key.text()}


def first_keys(lines: Iterable[Mapping[str, Any]]) -> dict[str, PublicKey]:
    """Each client's first key line in a journal: where a replay starts from. In a journal begun by this version a
    key line comes before anything its key signed; one begun before had its key lines written at its first resume,
    after what they signed (what a client sent before it had a key was refused then, and is journaled as that
    verdict, never checked again, so a key in force from the start checks nothing it should not)."""
    return _journaled_keys(lines, lambda line: line.get("k") == "key", keep_first=True)


def revoked_keys(lines: Iterable[Mapping[str, Any]]) -> dict[str, PublicKey]:
    """The clients a journal says were revoked, each with the key it had (what it sent before still checks)."""
    return _journaled_keys(lines, lambda line: line.get("k") == "e" and line.get("event") == "revoked"
                           and bool(line.get("key")), keep_first=False)


def _journaled_keys(lines: Iterable[Mapping[str, Any]], wanted: Callable[[Mapping[str, Any]], bool], *,
                    keep_first: bool) -> dict[str, PublicKey]:
    """The key of each client in the ``wanted`` lines: its first or its last."""
    out: dict[str, PublicKey] = {}
    for line in lines:
        client = str(line.get("client"))
        if not wanted(line) or (keep_first and client in out):
            continue
        with contextlib.suppress(ValueError):  # a key the journal cannot give back: what it signed fails on replay
            out[client] = parse_public(str(line["key"]))
    return out


class KeyLedger:
    """Journals each remote client's key the first time the aggregator reads it (:func:`key_line`), and again if
    the client's line changed or came back: a resumed run checks what a client sent with the key it had then, even
    if the line was removed while the run was down. ``known``: the keys its journal already holds."""

    def __init__(self, journal: Journal, known: dict[str, PublicKey]) -> None:
        self._journal = journal
        self._known = dict(known)

    def revoked(self, client: str, entries: tuple[tuple[str, PublicKey], ...]) -> None:
        """``client``'s revocation was journaled: a replay drops its key there, so if its line is back (put back
        before the revocation came through the aggregator's queue) its key is journaled again, after it."""
        self._known.pop(client, None)
        self(entries)

    def __call__(self, entries: tuple[tuple[str, PublicKey], ...]) -> None:
        present = {client for client, _key in entries}
        for client in [c for c in self._known if c not in present]:  # gone: a line put back is journaled again
            del self._known[client]
        for client, key in entries:
            if self._known.get(client) != key:
                self._known[client] = key
                self._journal.write(key_line(client, key))


class RemoteKeys:
    """The keys of remote clients, from authorized-keys files that may change while the run goes on: a
    :class:`~fedbus.security.keys.KeyLookup` for the aggregator's :class:`~fedbus.security.policy.Security`.

    A file is read again when its modification time, size or inode changed, looked at most every ``RELOAD_S``
    seconds, and at once when an unknown signer shows up (a client invited a moment ago announces itself), so an
    invitation takes effect with the client's first message and a removed line within seconds. A file that
    does not parse leaves its last good keys in force (and a warning). Entries for one of the run's own clients
    (``reserved``: their ids; their keys derive from the run's secret, which no remote client knows) or repeating
    an earlier file's id or key are skipped."""

    def __init__(self, files: Sequence[Path], reserved: Collection[str] = (), *, strict: bool = True,
                 on_change: Callable[[str, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``strict``: a file that exists and does not load, or that names one of the run's own clients, raises
        :class:`KeyFileError` here (at start); later problems only warn. ``on_change(path, count)`` is told when
        a file's keys were read again."""
        self._reserved = frozenset(reserved)
        self._on_change = on_change
        # told (id, key) of each client whose line went away after the first read, and stayed away for a second
        # look RELOAD_S later (a file caught half written revokes nobody): set by the run once its aggregator is up
        self.on_revoke: Callable[[tuple[tuple[str, PublicKey], ...]], None] | None = None
        self._going: dict[str, tuple[PublicKey, float]] = {}  # gone at the last read: key, since when
        # a resumed run's replay: keys revoked later in the journal, still good for what was sent before
        self.replaying: dict[str, PublicKey] = {}
        # and the keys the journal recorded (key_line), as they stood at the point the replay has reached: what a
        # client sent checks on replay with the key it had, even if its line was removed while the run was down
        self.recorded: dict[str, PublicKey] = {}
        # told every key in force after each read of the files (the run journals those it has not yet)
        self.on_keys: Callable[[tuple[tuple[str, PublicKey], ...]], None] | None = None
        self._clock = clock
        self._sources = [_Source(path, None, AuthorizedKeys()) for path in files]
        self._keys = AuthorizedKeys()
        self._checked = clock()
        for index in range(len(self._sources)):
            self._refresh(index, strict=strict)
        self._merge(strict=strict)

    def get(self, signer_id: str, /) -> PublicKey | None:
        now = self._clock()
        if now - self._checked >= RELOAD_S or signer_id not in self._keys:
            self._look(now)
        if self.replaying or self.recorded:  # a replay: the key the journal says the signer had then
            found = self.recorded.get(signer_id) or self.replaying.get(signer_id)
            if found is not None:
                return found
        return self._keys.get(signer_id)

    def entries(self) -> tuple[tuple[str, PublicKey], ...]:
        """Every remote client's key in force: ``(id, key)`` pairs."""
        return self._keys.entries

    def record(self, client: str, key: str) -> None:
        """The replay reached a :func:`key_line`: from here ``client`` signs with ``key`` (a line that does not
        parse is skipped: what it signed fails its check on replay, as without it)."""
        try:
            self.recorded[client] = parse_public(key)
        except ValueError:
            log.warning("journaled key skipped: it does not parse", client=client)

    def check(self) -> None:
        """Look whether a file changed, at most every ``RELOAD_S`` (a revoked client that sends nothing more is
        noticed too, not only at the next unknown signer)."""
        now = self._clock()
        if now - self._checked >= RELOAD_S:
            self._look(now)

    def _look(self, now: float) -> None:
        self._checked = now
        changed = [self._refresh(index, strict=False) for index in range(len(self._sources))]  # every file
        if any(changed):
            self._merge(strict=False)
        self._settle(now)

    def revoked_now(self, client: str) -> None:
        """The replay reached ``client``'s revocation: what it sent after that was checked without its key."""
        self.replaying.pop(client, None)
        self.recorded.pop(client, None)

    def end_replay(self) -> tuple[tuple[str, PublicKey], ...]:
        """The replay is over: forget its keys, and return the clients it left authorized whose lines are gone
        from the files now (removed while the run was down: the run revokes them as it carries on)."""
        gone = tuple((client, key) for client, key in sorted(self.recorded.items()) if client not in self._keys)
        self.replaying.clear()
        self.recorded.clear()
        return gone

    def _settle(self, now: float) -> None:
        """Revoke the clients missing at two reads at least RELOAD_S apart (kept until someone is told: the run
        sets ``on_revoke`` once its aggregator is up); forget those that came back."""
        for owner in [o for o in self._going if o in self._keys]:
            del self._going[owner]
        due = tuple((o, key) for o, (key, since) in sorted(self._going.items()) if now - since >= RELOAD_S)
        if due and self.on_revoke is not None:
            for owner, _key in due:
                del self._going[owner]
            self.on_revoke(due)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def _refresh(self, index: int, *, strict: bool) -> bool:
        """Read source ``index`` again if it changed; True if its keys did."""
        source = self._sources[index]
        try:
            info = source.path.stat()
            stamp: tuple[int, int, int] | None = (info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError:
            stamp = None
        if stamp == source.stamp:
            return False
        keys = AuthorizedKeys()
        if stamp is not None:
            try:
                keys = load_authorized(source.path)
            except KeyFileError as exc:
                if strict:
                    raise
                log.warning("authorized keys not reloaded: keeping the last good ones", problem=str(exc))
                self._sources[index] = _Source(source.path, stamp, source.keys)
                return False
        self._sources[index] = _Source(source.path, stamp, keys)
        if self._on_change is not None and source.stamp != stamp:
            self._on_change(str(source.path), len(keys))
        return keys != source.keys

    def _merge(self, *, strict: bool) -> None:
        entries: list[tuple[str, PublicKey]] = []
        ids = set(self._reserved)
        owners: dict[PublicKey, str] = {}
        for source in self._sources:
            for owner, key in source.keys.entries:
                if owner in ids and owners.get(key) == owner:
                    continue  # the same line in two files (invited, and in --authorized-keys): no clash
                clash = ("is one of the run's own clients" if owner in self._reserved
                         else "is listed in an earlier file" if owner in ids
                         else f"has the key of {owners[key]!r}" if key in owners else "")
                if clash:
                    if strict:
                        raise KeyFileError(str(source.path), f"{owner!r} {clash}")
                    log.warning("authorized key skipped", path=str(source.path), client=owner, problem=clash)
                    continue
                ids.add(owner)
                owners[key] = owner
                entries.append((owner, key))
        before = dict(self._keys.entries)
        self._keys = AuthorizedKeys(tuple(entries))
        if self.on_keys is not None:
            self.on_keys(self._keys.entries)
        for owner in before.keys() - set(self._keys):
            self._going.setdefault(owner, (before[owner], self._clock()))


# ---------------------------------------------------------------------------------------------- invitations
@dataclass(frozen=True, slots=True)
class RunKeysInfo:
    """What ``fedbus invite`` reads from a run's folder."""

    run_id: str
    own_clients: tuple[str, ...]
    aggregator: PublicKey
    broker_url: str  # the broker the run recorded, scheme://host:port only


def read_run(run_dir: Path) -> RunKeysInfo:
    """The run id, the scenario's own client ids and the aggregator's public key of the run in ``run_dir``;
    :class:`KeyFileError` saying what is missing."""
    from fedbus.runtime.checkpoint import Checkpoint

    checkpoint_path = run_dir / CHECKPOINT
    try:
        content = json.loads(checkpoint_path.read_text(encoding="utf-8"))
        run_id = str(content["run_id"])
        broker = str(content.get("broker", {}).get("url", ""))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFileError(str(checkpoint_path), f"not the folder of a started fedbus run ({exc})") from None
    try:
        scenario = Checkpoint(checkpoint_path, content).scenario()
    except ResumeError as exc:
        raise KeyFileError(str(checkpoint_path), str(exc)) from None
    if scenario.security == "none":
        raise KeyFileError(str(run_dir), f"run {run_id} is not signed (security none): clients join it with "
                           "`fedbus client --broker URL --run RUN --id ID`, no token")
    pub = run_dir / KEYS / AGGREGATOR_PUB
    if not pub.exists():
        raise KeyFileError(str(pub), "missing: is the run started (fedbus run writes it when it starts)?")
    peer = load_public(pub)
    if peer.owner != AGGREGATOR:
        raise KeyFileError(str(pub), f"holds the key of {peer.owner!r}, not the aggregator's")
    return RunKeysInfo(run_id=run_id, own_clients=scenario.client_ids(), aggregator=peer.key,
                       broker_url=plain_broker_url(broker) if broker else "")


def plain_broker_url(url: str) -> str:
    """``url`` as a token holds it: scheme, host and port (no login, no CA file)."""
    address = parse_broker_url(url)
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{address.scheme}://{host}:{address.port}"


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """One ``fedbus invite`` at a time changes a run's authorized_keys."""
    lock = run_dir / KEYS / ".authorized_keys.lock"
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def authorize(run_dir: Path, clients: Sequence[tuple[str, PublicKey]], own_clients: Sequence[str] = ()) -> None:
    """Add ``clients`` to RUN_DIR/keys/authorized_keys (written whole and renamed: a running aggregator never
    reads half a file); :class:`KeyFileError` for an id already there or one of the run's own, and nothing is
    added then."""
    path = authorized_path(run_dir)
    with _locked(run_dir):
        keys = load_authorized(path) if path.exists() else AuthorizedKeys()
        for owner, key in clients:
            if owner in own_clients:
                raise KeyFileError(str(path), f"{owner!r} is one of the run's own clients: choose another id")
            if owner in keys:
                held = fingerprint(keys.get(owner) or key)
                raise KeyFileError(str(path), f"{owner!r} is already invited (key {held}); choose another id, or "
                                   "remove its line first")
            try:
                keys = keys.with_key(owner, key)
            except ValueError as exc:
                raise KeyFileError(str(path), str(exc)) from None
        save_authorized(path, keys)


def invite(run_dir: Path, clients: Sequence[str], *, broker: str | None = None, username: str | None = None,
           password: str | None = None, public: PublicKey | None = None) -> list[str]:
    """Authorize ``clients`` in the run of ``run_dir`` and return one join token each.

    Without ``public``, a key pair is minted for each client and its private half goes in the token (which is then
    the client's credential: hand it over like a password). With ``public`` (one client only), that key is
    authorized and the token holds no private key: the client joins with ``--key`` its own key file."""
    info = read_run(run_dir)
    url = plain_broker_url(broker) if broker else info.broker_url
    if not url:
        raise KeyFileError(str(run_dir / CHECKPOINT), "records no broker: give --broker")
    if public is not None and len(clients) != 1:
        raise ValueError("a public key is one client's")
    minted: dict[str, PrivateKey] = {} if public is not None else {cid: generate() for cid in clients}
    authorize(run_dir, [(cid, public if public is not None else minted[cid].public) for cid in clients],
              info.own_clients)
    tokens = []
    for cid in clients:
        key = minted.get(cid)
        tokens.append(encode_token(JoinToken(
            broker=url, run=info.run_id, client=cid, aggregator_key=info.aggregator, username=username,
            password=password, client_key=None if key is None else key.sign_seed + key.seal_secret)))
    return tokens
