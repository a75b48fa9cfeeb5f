"""``archive erase``: a data subject's erasure from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from archive.archiver import Archiver
from archive.erase import (
    SIDES,
    ErasureFailed,
    ErasureRefused,
    Side,
    blocking_holds,
    erased_by,
    plan_erasure,
)
from archive.erase_reused import reused_in_plan
from archive.hold_cli import Handler
from archive.keys import BadKey, parse_key
from archive.ledger import has_running
from archive.reflection import UnknownTable
from sediment.core.commandline import (
    EXIT_ERROR,
    EXIT_LOCK_BUSY,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    instant,
)

LABELS = {"primary": "PRIMARY", "archive": "ARCHIVE"}


def add_erase_command(archive_commands: Any, handler: Handler) -> None:
    """Add ``erase`` under ``archive``."""
    erase = archive_commands.add_parser(
        "erase", help="erase a data subject's rows from PRIMARY and ARCHIVE",
        description="Find the subject's row and every row that references it through "
        "foreign keys, to any depth, in PRIMARY and in ARCHIVE, and delete them all (tables "
        "named in erasure.null_out keep their rows with those columns set to NULL). Held "
        "rows stop the erasure. The ledger records tables, counts and keyed digests, never "
        "the data. Safe to re-run: erasing the same subject again finishes an interrupted "
        "erasure.")
    erase.add_argument("--table", required=True, help="the subject's table, e.g. customers")
    erase.add_argument("--key", required=True, help="the subject's key, e.g. 42")
    erase.add_argument("--now", type=instant, metavar="ISO-8601",
                       help="record the erasure at this instant instead of the clock")
    erase.add_argument("--dry-run", action="store_true",
                       help="print what would be erased, per database and table; change nothing")
    erase.set_defaults(handler=handler(cmd_erase))


def cmd_erase(args: argparse.Namespace, archiver: Archiver) -> int:
    try:
        tables, twins = archiver.erasure_tables(args.table)
        subject = tables[args.table]
        key = parse_key(subject, args.key)
        plan = plan_erasure(archiver.engines, tables, twins, subject, key,
                            archiver.settings.erasure.null_out)
    except UnknownTable as exc:
        reason = exc.reason if exc.view else "PRIMARY has no such table"
        return fail(f"--table {args.table!r}: {reason}", EXIT_USAGE)
    except BadKey as exc:
        return fail(f"--key {exc}", EXIT_USAGE)
    except ErasureRefused as exc:
        return fail(str(exc), EXIT_USAGE)
    # Nothing found after an erasure that was killed once its rows were gone: erasing again,
    # as the operator was told to, succeeds (and marks the killed run interrupted).
    if not any(rows.keys for rows in plan.found.values()) \
            and not has_running(archiver.engines.archive, "erase"):
        done_by = erased_by(archiver.engines.archive, subject, key,
                            archiver.settings.service.secret_key)
        if done_by is not None:
            print(f"{args.table} {args.key} was erased by run {done_by}; nothing is left "
                  "to erase")
            return EXIT_OK
        return fail(f"--key {args.key}: no {args.table} row with this key, and no row "
                     "referencing it, in PRIMARY or ARCHIVE: nothing to erase", EXIT_ERROR)
    if args.dry_run:
        print(f"dry run: erasing {args.table} {args.key} would touch:")
        _print_counts({place: len(rows.keys) for place, rows in plan.found.items()}, plan.null_out)
        for line in [*reused_in_plan(archiver.engines, twins, plan),
                     *blocking_holds(archiver.engines, tables, twins, plan)]:
            print(f"blocked: {line}")
        return EXIT_OK
    try:
        outcome = archiver.erase(args.table, args.key, args.now or datetime.now(UTC))
    except ErasureRefused as exc:
        return fail(f"erasure refused, nothing changed: {exc}", EXIT_ERROR)
    except ErasureFailed as exc:
        return fail(f"erasure failed: {exc}", EXIT_ERROR)
    if outcome.status == "lock_busy":
        return fail(f"erasure not started: {outcome.error}", EXIT_LOCK_BUSY)
    print(f"erased {args.table} {args.key} (run {outcome.run_id}):")
    _print_counts(outcome.erased, archiver.settings.erasure.null_out)
    return EXIT_OK


def _print_counts(counts: Mapping[tuple[Side, str], int],
                  null_out: Mapping[str, tuple[str, ...]]) -> None:
    for side in SIDES:
        shown = [(name, count) for (where, name), count in counts.items()
                 if where == side and count]
        for name, count in shown:
            verb = f"nulled {', '.join(null_out[name])} in" if name in null_out else "deleted"
            print(f"  {LABELS[side]:<8} {name:<24} {verb} {count:,} "
                  f"{'row' if count == 1 else 'rows'}")

