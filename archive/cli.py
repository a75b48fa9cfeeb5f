"""``archive run|status|verify`` and ``scheduler``: the archiver's command line.

The commands are handed an :class:`~archive.archiver.Archiver` by the composition root
(:mod:`sediment.cli`). Exit codes are those of :mod:`sediment.core.commandline`; the code
always agrees with the status the ledger records.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from archive.archiver import Archiver
from archive.ledger import run_tables, runs
from archive.mover import BatchResult
from archive.runner import RunLimits, RunOutcome, plan_run
from archive.scheduler import start_in_background
from archive.twins import recent_changes
from archive.verify import verify_archive
from sediment.core.commandline import (
    EXIT_ERROR,
    EXIT_LOCK_BUSY,
    EXIT_OK,
    duration,
    instant,
    on_stop_signals,
    positive_int,
    progress_bar,
)
from sediment.core.settings import Settings

#: Builds the archiver of the settings a command line chose (from the composition root).
ArchiverFactory = Callable[[Settings], Archiver]
ArchiveCommand = Callable[[argparse.Namespace, Archiver], int]


def add_commands(commands: Any, archiver_for: ArchiverFactory) -> None:
    """Add ``archive`` and ``scheduler`` to the top-level subparsers."""
    def handler(command: ArchiveCommand) -> Callable[[argparse.Namespace], int]:
        return lambda args: command(args, archiver_for(args.settings_obj))

    archive = commands.add_parser(
        "archive", help="move aged rows to ARCHIVE; inspect and verify the ledger",
        description="Archival commands. See each one's --help.")
    sub = archive.add_subparsers(title="archive commands", metavar="ACTION", required=True)

    run = sub.add_parser(
        "run", help="run archival policies now",
        description="Move aged rows PRIMARY -> ARCHIVE in paired transactions. Safe to "
        "interrupt and re-run: an interrupted batch is finished by the next run.")
    run.add_argument("--policy", action="append", metavar="NAME",
                     help="policy to run (repeatable; default: every enabled policy)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the cutoff and per-table counts that would move; write nothing")
    run.add_argument("--max-rows", type=positive_int, metavar="N",
                     help="stop after about N root rows (children travel with their root)")
    run.add_argument("--max-runtime", type=duration, metavar="DURATION",
                     help="stop starting new batches after this long, e.g. 10m")
    run.add_argument("--now", type=instant, metavar="ISO-8601",
                     help="compute cutoffs from this instant instead of the clock")
    run.set_defaults(handler=handler(cmd_run))

    status = sub.add_parser("status", help="show recent runs from the ledger",
                            description="Show the most recent runs, newest first.")
    status.add_argument("--limit", type=positive_int, default=20,
                        help="runs to show (default 20)")
    status.set_defaults(handler=handler(cmd_status))

    verify = sub.add_parser(
        "verify", help="check archival invariants in both databases",
        description="Check that no key is in both databases, no archived child lacks its "
        "parent, the ledger matches the archived rows, and finished runs left nothing aged.")
    verify.set_defaults(handler=handler(cmd_verify))

    schema = sub.add_parser(
        "schema", help="show (or apply) what ARCHIVE needs for the policies' twins",
        description="Compare the ARCHIVE twins of the policies' tables with PRIMARY's tables "
        "as they are now, and print the plan: twins to create, columns to add, columns to "
        "make nullable, types to widen, and type changes no twin can follow. With "
        "database.primary_schema = \"demo\" the twins are Alembic's ('migrate').")
    schema.add_argument("--apply", action="store_true",
                        help="make the planned changes, each recorded in the ledger")
    schema.set_defaults(handler=handler(cmd_schema))

    scheduler = commands.add_parser(
        "scheduler", help="run the archival schedule without the HTTP service",
        description="Run every enabled policy on its cron schedule until SIGTERM/SIGINT.")
    scheduler.set_defaults(handler=handler(cmd_scheduler))


def cmd_run(args: argparse.Namespace, archiver: Archiver) -> int:
    names = args.policy or archiver.enabled
    for name in names:
        archiver.policy(name)  # an unknown name stops here, before anything runs
    now = args.now or datetime.now(UTC)
    if args.dry_run:
        return _dry_run(archiver, names, now)
    stop = threading.Event()

    def request_stop(received: signal.Signals) -> None:
        print(f"\n{received.name}: stopping after the current batch", file=sys.stderr,
              flush=True)
        stop.set()

    outcomes: list[RunOutcome] = []
    with on_stop_signals(request_stop):
        for name in names:
            if stop.is_set():
                break
            outcomes.append(_run_with_progress(archiver, name, now, args, stop))
    _print_summary(outcomes)
    if any(r.status in ("error", "schema_drift") for r in outcomes):
        return EXIT_ERROR
    if any(r.status in ("lock_busy", "lock_lost") for r in outcomes):
        return EXIT_LOCK_BUSY
    return EXIT_OK


def _dry_run(archiver: Archiver, names: list[str], now: datetime) -> int:
    for name in names:
        plan = plan_run(archiver.engines.primary, archiver.policy(name), now)
        counts = ", ".join(f"{table} {count:,}" for table, count in plan.counts.items())
        print(f"dry run: policy {name}: cutoff {plan.cutoff.isoformat()}: would move {counts}")
    return EXIT_OK


def _run_with_progress(archiver: Archiver, name: str, now: datetime,
                       args: argparse.Namespace, stop: threading.Event) -> RunOutcome:
    policy = archiver.policy(name)
    planned = plan_run(archiver.engines.primary, policy, now).counts
    total = sum(planned.values())
    if args.max_rows is not None and planned[policy.root.fullname]:
        total = min(total, round(total * args.max_rows / planned[policy.root.fullname]))
    with progress_bar(total=total, desc=f"archive {name}") as bar:
        def advance(result: BatchResult) -> None:
            bar.update(result.rows)
        return archiver.run(name, now, limits=RunLimits(args.max_rows, args.max_runtime),
                            stop=stop, progress=advance)


def _print_summary(outcomes: list[RunOutcome]) -> None:
    print(f"{'policy':<10} {'run':>5} {'status':<15} {'batches':>8} {'rows':>10} {'rows/s':>9}  "
          "moved")
    for r in outcomes:
        rate = f"{r.rows_per_second:,.0f}" if r.rows_per_second else "-"
        moved = ", ".join(f"{t} {n:,}" for t, n in r.moved.items())
        print(f"{r.policy:<10} {r.run_id or '-':>5} {r.status:<15} {r.batches:>8} {r.rows:>10,} "
              f"{rate:>9}  {moved}")
        if r.error:
            print(f"  error: {r.error}")


def cmd_status(args: argparse.Namespace, archiver: Archiver) -> int:
    with archiver.engines.archive.connect() as connection:
        recent = connection.execute(
            sa.select(runs).order_by(runs.c.id.desc()).limit(args.limit)).all()
        counters = connection.execute(sa.select(run_tables).where(
            run_tables.c.run_id.in_([r.id for r in recent]))).all()
    if not recent:
        print("no archival runs recorded yet")
        return EXIT_OK
    per_run: dict[int, list[str]] = {}
    for c in counters:
        per_run.setdefault(c.run_id, []).append(
            f"{c.table_name} {c.deleted:,}/{c.copied:,}")
    print(f"{'run':>5} {'policy':<10} {'status':<15} {'started (UTC)':<20} {'secs':>7} "
          f"{'rows':>10} {'rows/s':>9}  deleted/copied per table")
    for r in recent:
        seconds = (r.finished_at - r.started_at).total_seconds() if r.finished_at else None
        print(f"{r.id:>5} {r.policy:<10} {r.status:<15} {r.started_at:%Y-%m-%d %H:%M:%S}  "
              f"{seconds if seconds is None else round(seconds, 1)!s:>7} {r.rows_moved:>10,} "
              f"{(f'{r.rows_per_second:,.0f}' if r.rows_per_second else '-'):>9}  "
              + ", ".join(per_run.get(r.id, [])))
        if r.error:
            print(f"      {r.error}")
    changes = recent_changes(archiver.engines.archive, args.limit)
    if changes:
        print("\nARCHIVE twin changes, newest first:")
        for change in changes:
            print(f"  {change['changed_at']:%Y-%m-%d %H:%M:%S}  {change['table_name']}: "
                  f"{change['detail']}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, archiver: Archiver) -> int:
    if archiver.settings.database.primary_schema == "demo":
        print("PRIMARY holds the demo schema: its ARCHIVE twins are migrated by 'migrate'")
        return EXIT_OK
    plan = archiver.plan_twins()
    for conflict in plan.conflicts:
        print(f"conflict: {conflict}")
    for change in plan.changes:
        print(f"{'applied' if args.apply and not plan.conflicts else 'planned'}: {change}")
    if plan.conflicts:
        print(f"{len(plan.conflicts)} type changes cannot be followed: nothing applied",
              file=sys.stderr)
        return EXIT_ERROR
    if not plan.changes:
        print(f"ARCHIVE twins are up to date ({len(archiver.twins)} tables)")
    elif args.apply:
        archiver.apply_twins(plan)
        print(f"{len(plan.changes)} changes applied and recorded in the ledger")
    else:
        print(f"{len(plan.changes)} changes planned; 'archive schema --apply' or 'migrate' "
              "makes them")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, archiver: Archiver) -> int:
    missing = sorted({change.table for change in archiver.plan_twins().changes
                      if change.kind == "create_table"})
    if missing:
        print(f"ARCHIVE has no twin of {', '.join(missing)} yet: run 'migrate' (or 'archive "
              "schema --apply') first", file=sys.stderr)
        return EXIT_ERROR
    verification = verify_archive(archiver.engines.primary, archiver.engines.archive,
                            archiver.policies)
    for line in verification.checks:
        print(f"ok    {line}")
    for line in verification.problems:
        print(f"FAIL  {line}")
    print("archive verified: all checks passed" if verification.ok
          else f"archive verify found {len(verification.problems)} problem(s)")
    return EXIT_OK if verification.ok else EXIT_ERROR


def cmd_scheduler(args: argparse.Namespace, archiver: Archiver) -> int:
    """Run the schedule until SIGTERM/SIGINT, then let running batches finish.

    The signal only sets a flag: a signal that arrives while APScheduler is still starting
    must not ask a scheduler that is not running yet to shut down.
    """
    requested = threading.Event()
    with on_stop_signals(lambda _received: requested.set()):
        background = start_in_background(archiver)
        print("archival scheduler running; SIGTERM or Ctrl-C stops it", flush=True)
        while not requested.wait(1.0):
            pass
        print("stopping: running batches finish first", file=sys.stderr, flush=True)
        background.shutdown()
    return EXIT_OK
