"""``archive hold add|release|list``: legal holds from the command line.

A hold names a row of one of the policies' tables by its key; while it is in force no
purge or expiry deletes that row, its root or any row of that root. Holds are placed only
on rows that exist (in PRIMARY or in ARCHIVE), checked in the transaction that records
them, so a hold never silently names a row a sweep has just deleted.
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from archive.archiver import Archiver
from archive.holds import add_holds, list_holds, release_holds
from archive.keys import BadKey, Key, key_columns, key_filters, key_text, parse_key
from archive.policy import ArchivePolicy
from sediment.core.commandline import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    positive_int,
    words,
)

Handler = Callable[[Callable[[argparse.Namespace, Archiver], int]],
                   Callable[[argparse.Namespace], int]]


def add_hold_commands(archive_commands: Any, handler: Handler) -> None:
    """Add ``hold`` and its actions under ``archive``."""
    hold = archive_commands.add_parser(
        "hold", help="place, release and list legal holds",
        description="A held row, its root and the root's other rows are never purged or "
        "expired while the hold is in force. Holds are kept in ARCHIVE with who placed "
        "them, when and why.")
    actions = hold.add_subparsers(title="hold actions", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add", help="hold rows by key",
        description="Hold rows of a policy's table by key. A composite key is written as "
        "its values separated by commas (7,3), or as a JSON list when a value holds a comma.")
    add.add_argument("--table", required=True, help="a table one of the policies names")
    add.add_argument("--key", required=True, action="append", metavar="KEY",
                     help="the row's key (repeatable)")
    add.add_argument("--reason", required=True, type=words,
                     help="why the rows are held (kept with the hold)")
    add.add_argument("--by", type=words, default=getpass.getuser(),
                     help="who places the hold (default: the user running the command)")
    add.set_defaults(handler=handler(cmd_hold_add))

    release = actions.add_parser("release", help="release holds by id",
                                 description="Release holds; their rows may go again.")
    release.add_argument("ids", type=positive_int, nargs="+", metavar="ID",
                         help="hold ids, as 'archive hold list' shows them")
    release.add_argument("--reason", default="", help="why the hold ends (kept with it)")
    release.add_argument("--by", type=words, default=getpass.getuser(),
                         help="who releases it (default: the user running the command)")
    release.set_defaults(handler=handler(cmd_hold_release))

    listing = actions.add_parser("list", help="show the holds in force",
                                 description="Show the holds in force, oldest first.")
    listing.add_argument("--all", action="store_true", help="include released holds")
    listing.set_defaults(handler=handler(cmd_hold_list))


def cmd_hold_add(args: argparse.Namespace, archiver: Archiver) -> int:
    found = _policy_table(archiver, archiver.local_name(args.table))
    if found is None:
        names = sorted({table.fullname for policy in archiver.policies
                        for table in policy.tables})
        return fail(f"--table {args.table!r} is not one of the policies' tables "
                    f"({', '.join(names)})", EXIT_USAGE)
    policy, table = found
    try:
        keys = [parse_key(table, text) for text in args.key]
    except BadKey as exc:
        return fail(f"--key {exc}", EXIT_USAGE)
    places: dict[Key, list[str]] = {}

    def check_rows(connection: sa.Connection) -> None:
        """Inside the hold's transaction: where each row is (none may be missing)."""
        for key in keys:
            places[key] = _places(archiver, policy, table, key, connection)
        missing = [key for key, where in places.items() if not where]
        if missing:
            raise _Missing(missing)

    try:
        placed, existing = add_holds(archiver.engines.archive, table.fullname, keys,
                                     reason=args.reason, held_by=args.by,
                                     now=datetime.now(UTC), before_commit=check_rows)
    except _Missing as exc:
        shown = ", ".join(_shown(key) for key in exc.keys)
        return fail(f"--key {shown}: no {table.fullname} row with this key in PRIMARY or "
                    "ARCHIVE; nothing was held", EXIT_ERROR)
    by_shown = {_shown(key): key for key in keys}  # one look-up per hold, not a scan
    for hold in placed:
        where = " and ".join(places[by_shown[hold.shown_key]])
        print(f"hold {hold.id} placed on {hold.table} {hold.shown_key} (in {where}) by "
              f"{hold.held_by}: {hold.reason}")
    for hold in existing:
        print(f"{hold.table} {hold.shown_key} is already held by hold {hold.id} "
              f"({hold.held_by}, {hold.held_at:%Y-%m-%d}: {hold.reason})")
    return EXIT_OK


def cmd_hold_release(args: argparse.Namespace, archiver: Archiver) -> int:
    released, unknown = release_holds(archiver.engines.archive, args.ids, released_by=args.by,
                                      reason=args.reason, now=datetime.now(UTC))
    for hold in released:
        print(f"hold {hold.id} on {hold.table} {hold.shown_key} released by {args.by}")
    if unknown:
        return fail(f"no hold in force with id {', '.join(map(str, unknown))} (see "
                    "'archive hold list --all')", EXIT_USAGE)
    return EXIT_OK


def cmd_hold_list(args: argparse.Namespace, archiver: Archiver) -> int:
    shown = list_holds(archiver.engines.archive, released=args.all)
    if not shown:
        print("no holds in force" if not args.all else "no holds recorded")
        return EXIT_OK
    print(f"{'id':>5}  {'table':<16} {'key':<14} {'held (UTC)':<17} {'by':<12} reason")
    for hold in shown:
        print(f"{hold.id:>5}  {hold.table:<16} {hold.shown_key:<14} "
              f"{hold.held_at:%Y-%m-%d %H:%M}  {hold.held_by:<12} {hold.reason}")
        if hold.released_at is not None:
            note = f": {hold.release_reason}" if hold.release_reason else ""
            print(f"{'':>7}released {hold.released_at:%Y-%m-%d %H:%M} by "
                  f"{hold.released_by}{note}")
    return EXIT_OK


class _Missing(Exception):
    def __init__(self, keys: list[Key]) -> None:
        super().__init__()
        self.keys = keys


def _policy_table(archiver: Archiver, name: str) -> tuple[ArchivePolicy, sa.Table] | None:
    for policy in archiver.policies:
        for table in policy.tables:
            if name in (table.fullname, table.name):
                return policy, table
    return None


def _places(archiver: Archiver, policy: ArchivePolicy, table: sa.Table, key: Key,
            archive: sa.Connection) -> list[str]:
    """``PRIMARY`` and/or ``ARCHIVE``: where the row with ``key`` is now."""
    places = []
    with archiver.engines.primary.connect() as primary:
        if _exists(primary, table, key):
            places.append("PRIMARY")
    if policy.archives and _exists(archive, policy.twins[table.fullname], key):
        places.append("ARCHIVE")
    return places


def _exists(connection: sa.Connection, table: sa.Table, key: Key) -> bool:
    (condition,) = key_filters(key_columns(table), [key], connection.dialect)
    return connection.execute(sa.select(sa.literal(1)).select_from(table).where(condition)
                              .limit(1)).first() is not None


def _shown(key: Key) -> str:
    return ",".join(key_text(value) for value in key)
