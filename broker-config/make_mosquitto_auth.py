#!/usr/bin/env python3
"""Write a mosquitto password file and ACL file for one fedbus federation: who may publish and read what.

    python broker-config/make_mosquitto_auth.py --out /etc/mosquitto/fedbus --aggregator agg --clients alice bob
    python broker-config/make_mosquitto_auth.py --out DIR --aggregator agg --count 20        # client-0 .. client-19
    python broker-config/make_mosquitto_auth.py --out DIR --aggregator agg --clients alice --secrets-dir KEYS

writes DIR/fedbus.passwd (0600, PBKDF2-SHA512 hashes in mosquitto_passwd's ``$7$`` format) and DIR/fedbus.acl,
and hands each user's new password out once: printed to stdout as ``USER PASSWORD`` lines, or, with
``--secrets-dir``, written to one 0600 file per user there (a folder other than --out) and not printed.
mosquitto started as root reads the password file after switching to its own user: give ``--owner mosquitto``
(as root) or chown it. No plain password is kept next to the ACL. Then, in mosquitto.conf (see mosquitto-tls.conf):

    allow_anonymous false
    password_file DIR/fedbus.passwd
    acl_file DIR/fedbus.acl

Standard library only (no fedbus import): run it on the broker's machine. The hashes are computed here
rather than with ``mosquitto_passwd -b USER PASSWORD``, which would show every password to ``ps``; the
format is the one mosquitto 2.x's mosquitto_passwd writes (PBKDF2-SHA512, 101 iterations, 12-byte salt).
To add a client later: ``mosquitto_passwd DIR/fedbus.passwd carol`` and send mosquitto a SIGHUP; the ACL
is made of patterns on the user name, so it needs no change.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import secrets
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

# fedbus's id rule (fedbus/protocol/ids.py): one safe topic level. A user name is a client id, so it must
# match too; mosquitto skips a %u pattern for a name holding '+', '#' or '/'.
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED = "aggregator"  # the aggregator's client id in fedbus topics: no client may use it
PASSWD_NAME = "fedbus.passwd"
ACL_NAME = "fedbus.acl"
ITERATIONS = 101  # mosquitto_passwd's default (mosquitto 2.0)
SALT_BYTES = 12


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """The ``$7$`` hash mosquitto 2.x checks: PBKDF2-HMAC-SHA512, salt and key in standard base64."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def new_password() -> str:
    """32 random characters of the URL-safe alphabet: usable as is in mqtt://USER:PASSWORD@HOST:PORT."""
    return secrets.token_urlsafe(24)


def render_acl(aggregator: str, clients: Sequence[str], observer: str | None) -> str:
    """The ACL: per-client rights as patterns on the user name, the aggregator's and observer's per user."""
    lines = [
        "# fedbus ACL for mosquitto 2.x, written by broker-config/make_mosquitto_auth.py.",
        "# Topics: docs/PROTOCOL.md. The user name of a client IS its fedbus client id (alice logs in as alice",
        "# and runs `fedbus client --id alice`); the aggregator and the observer have user names of their own.",
        "#",
        "# Identity is bound through the user name (%u), not through the MQTT client identifier (%c):",
        "# fedbus connects as '{run}.{client}.{nonce}' (and '{run}.aggregator.{nonce}', '{run}.{client}.check',",
        "# '{run}.check',",
        "# 'fedbus-observer-<hex>'), so the client id is one topic level of a longer identifier, which no",
        "# mosquitto pattern can take apart. use_username_as_clientid would replace the identifier by the user",
        "# name: one session per user across all runs, the '.check' and observer connections knocking the",
        "# running one off, and the self-probe topic fedbus/probe/{identifier} no longer the connection's own.",
        "# So a client can only publish as itself (the aggregator also requires a message's 'client' field to",
        "# equal the topic's). The identifier stays unbound: alice MAY connect as '{run}.bob'. That knocks bob's",
        "# connection off and takes over its persistent session, losing the tasks queued in it (bob reconnects",
        "# and knocks her off in turn), but mosquitto checks every delivery, queued ones included, against the",
        "# connected user's ACL: alice receives none of bob's tasks.",
        "# What mosquitto 2.0 does with what this file denies: a subscription is granted anyway (SUBACK QoS 1)",
        "# and each message is checked on delivery; a publish is dropped, still acknowledged (MQTT 3.1.1 has",
        "# no negative PUBACK) and logged as 'Denied PUBLISH'; a Last Will is accepted and dropped when it fires.",
        "",
        "# The aggregator: publishes the global state, its own presence, tasks and receipts; reads every",
        "# client's presence, updates and metrics. It reads the global before a run (a run id is used once)",
        "# and its own presence (the heartbeat's echo). It does not write clients' presences: after a finished",
        "# run `fedbus run` empties the retained presences its clients left (identity.py clear_retained), and",
        "# the broker drops that here, so the clients' last 'offline' presences stay retained (harmless: only",
        "# 'online' keeps an id from joining). Add 'topic write fedbus/v1/+/presence/+' to have them cleared;",
        "# it also lets clients that log in as the aggregator (fedbus run's own) announce themselves.",
        f"user {aggregator}",
        "topic readwrite fedbus/v1/+/global",
        "topic readwrite fedbus/v1/+/aggregator",
        "topic write fedbus/v1/+/task/+",
        "topic write fedbus/v1/+/receipt/+",
        "topic read fedbus/v1/+/presence/+",
        "topic read fedbus/v1/+/update/+",
        "topic read fedbus/v1/+/metrics/+",
        "",
    ]
    if observer is not None:
        lines += [
            "# A read-only watcher (dashboards, mosquitto_sub): the global states and the aggregator's presence,",
            "# from the patterns below. The patterns give every user the rights of a client of its own name,",
            "# so these denials, checked before any grant, keep the observer from acting as a client.",
            f"user {observer}",
            *(f"topic deny fedbus/v1/+/{channel}/{observer}" for channel in ("update", "presence", "metrics")),
            "",
        ]
    lines += [
        "# Every client, by its user name. Patterns apply to every user; the aggregator's name and the",
        "# observer's must not be client ids in use.",
        "pattern write fedbus/v1/+/update/%u",
        "pattern write fedbus/v1/+/metrics/%u",
        "# its own presence: written (online, offline, the Last Will) and read (`fedbus client` refuses to start",
        "# when its id is already online)",
        "pattern readwrite fedbus/v1/+/presence/%u",
        "pattern read fedbus/v1/+/task/%u",
        "pattern read fedbus/v1/+/receipt/%u",
        "# every user reads the global states and the aggregator's presence (mosquitto warns at start that these",
        "# two patterns hold neither %c nor %u: intended)",
        "pattern read fedbus/v1/+/global",
        "pattern read fedbus/v1/+/aggregator",
        "# the self-probe of a reconnected connection (fedbus/runtime/bus.py PROBE_ROOT): a message to itself,",
        "# on a fresh random topic under its own user name",
        "pattern readwrite fedbus/probe/%u/+",
        "",
        f"# {len(clients)} client(s) generated with this file: {' '.join(clients) or '(none)'}",
        "",
    ]
    return "\n".join(lines)


def _check_names(aggregator: str, clients: Sequence[str], observer: str | None) -> str | None:
    """What is wrong with the user names (None: nothing)."""
    everyone = [aggregator, *clients, *([observer] if observer is not None else [])]
    for name in everyone:
        if not ID.fullmatch(name):
            return f"user name {name!r}: use 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit"
    if RESERVED in clients:
        return f"{RESERVED!r} is the aggregator's client id in fedbus topics; no client may use it"
    seen: set[str] = set()
    for name in everyone:
        if name in seen:
            return f"user name {name!r} given twice (the aggregator, observer and clients need names of their own)"
        seen.add(name)
    return None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    path.chmod(0o600)  # O_CREAT's mode does not change a file that existed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {PASSWD_NAME} and {ACL_NAME}")
    parser.add_argument("--aggregator", default="agg", help="the aggregator's user name (default agg)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--clients", nargs="+", metavar="ID", help="client ids; each is also that client's user name")
    who.add_argument("--count", type=int, metavar="N", help="N clients named PREFIX-0 .. PREFIX-(N-1)")
    parser.add_argument("--prefix", default="client", help="with --count: the name prefix (default client, "
                                                           "as fedbus scenarios name their clients)")
    parser.add_argument("--observer", default="observer", help="a read-only user for the global states "
                                                               "(default observer)")
    parser.add_argument("--no-observer", action="store_true", help="no observer user")
    parser.add_argument("--secrets-dir", type=Path, help="write each password to a 0600 file SECRETS_DIR/USER "
                                                         "instead of printing it; must not be --out")
    parser.add_argument("--owner", help="chown the password file to this user: mosquitto started as root reads "
                                        "it after switching to its own user (Debian: --owner mosquitto)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files (every password changes)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.count is not None:
        if args.count < 1:
            print("--count must be >= 1", file=sys.stderr)
            return 2
        clients = [f"{args.prefix}-{i}" for i in range(args.count)]
    else:
        clients = list(args.clients)
    observer = None if args.no_observer else args.observer
    problem = _check_names(args.aggregator, clients, observer)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    out: Path = args.out
    passwd, acl = out / PASSWD_NAME, out / ACL_NAME
    users = [args.aggregator, *([observer] if observer is not None else []), *clients]
    secrets_dir: Path | None = args.secrets_dir
    targets = [passwd, acl, *((secrets_dir / user for user in users) if secrets_dir is not None else ())]
    if secrets_dir is not None and secrets_dir.resolve() == out.resolve():
        print("--secrets-dir must not be --out: plain passwords do not belong next to the ACL", file=sys.stderr)
        return 2
    existing = [str(path) for path in targets if path.exists()]
    if existing and not args.force:
        print(f"refusing to overwrite {', '.join(existing)} (--force replaces them and every password)",
              file=sys.stderr)
        return 2
    passwords = {user: new_password() for user in users}
    out.mkdir(parents=True, exist_ok=True)
    _write_private(passwd, "".join(f"{user}:{hash_password(pw)}\n" for user, pw in passwords.items()))
    if args.owner:
        try:
            shutil.chown(passwd, user=args.owner)
        except (LookupError, OSError) as exc:
            print(f"--owner {args.owner}: {exc}", file=sys.stderr)
            return 1
    acl.write_text(render_acl(args.aggregator, clients, observer), encoding="utf-8")
    acl.chmod(0o644)
    if secrets_dir is not None:
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for user, pw in passwords.items():
            _write_private(secrets_dir / user, pw + "\n")
        where = f"one 0600 file per user in {secrets_dir}"
    else:
        for user, pw in passwords.items():
            print(f"{user} {pw}")
        where = "stdout above (shown once: hand each user its own line)"
    print(f"wrote {passwd} and {acl} for {len(users)} users; passwords: {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
