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
from archive.erase_cli import add_erase_command
from archive.hold_cli import add_hold_commands
from archive.keys import BadKey
from archive.ledger import has_running, run_tables, runs
from archive.mover import BatchResult
from archive.policy import unreferenced_by_others
from archive.restore import (
    RestoreRefused,
    RestoreRequest,
    plan_restore,
    policy_of,
    unfinished_restores,
)
from archive.runner import FAILED, SAFE_AGAIN, ProgressCallback, RunLimits, RunOutcome, plan_run
from archive.scheduler import NO_ENABLED_POLICY, start_in_background
from archive.sweep import SweepPlan, expiry_of, plan_sweep, purge_of
from archive.twins import recent_changes
from archive.verify import verify_archive
from sediment.core.commandline import (
    EXIT_ERROR,
    EXIT_LOCK_BUSY,
    EXIT_OK,
    EXIT_USAGE,
    duration,
    fail,
    instant,
    on_stop_signals,
    positive_int,
    progress_bar,
)
from sediment.core.databases import ARCHIVE
from sediment.core.error_text import first_line
from sediment.core.migrations import ensure_complete
from sediment.core.settings import Settings
from sediment.core.sql_condition import condition_problem

#: Builds the archiver of the settings a command line chose (from the composition root).
ArchiverFactory = Callable[[Settings], Archiver]
ArchiveCommand = Callable[[argparse.Namespace, Archiver], int]


def add_commands(commands: Any, archiver_for: ArchiverFactory) -> None:
    """Add ``archive`` and ``scheduler`` to the top-level subparsers."""
    def handler(command: ArchiveCommand) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            archiver = archiver_for(args.settings_obj)
            if command is not cmd_schema or args.apply:  # a plan of the twins reads no ledger
                ensure_complete(archiver.engines, databases=[ARCHIVE],
                                primary_schema=args.settings_obj.database.primary_schema)
            return command(args, archiver)
        return run

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

    expire = sub.add_parser(
        "expire", help="delete ARCHIVE rows that outlived their policy's retention",
        description="Delete, in batches, the ARCHIVE rows of each policy with a 'retention' "
        "whose age column is older than the retention period, with their children; held rows "
        "stay. The schedule does this after each successful run of the policy. Each batch is "
        "one ARCHIVE transaction: safe to interrupt and re-run.")
    expire.add_argument("--policy", action="append", metavar="NAME",
                        help="policy to expire (repeatable; default: every enabled policy "
                        "with a retention)")
    expire.add_argument("--dry-run", action="store_true",
                        help="print the cutoff and per-table counts that would go; write nothing")
    expire.add_argument("--now", type=instant, metavar="ISO-8601",
                        help="compute cutoffs from this instant instead of the clock")
    expire.set_defaults(handler=handler(cmd_expire))

    restore = sub.add_parser(
        "restore", help="bring archived rows back to PRIMARY",
        description="Move archived roots, with their children, back to PRIMARY: insert, read "
        "back and compare, commit PRIMARY, then delete from ARCHIVE. A row PRIMARY already "
        "holds with other values stops the batch, never overwritten. A restored root ages "
        "again from the moment of its restore: its policy leaves it in PRIMARY for "
        "older_than. Safe to interrupt: the next restore of the policy finishes it.")
    chosen = restore.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--run", type=positive_int, metavar="N",
                        help="the roots archive run N moved (or: finish restore run N)")
    chosen.add_argument("--table", help="a table of a policy: restore the roots of its rows "
                        "given by --key or --where")
    restore.add_argument("--key", action="append", metavar="KEY", default=[],
                         help="a row's key (repeatable; composite keys comma-separated)")
    restore.add_argument("--where", default="", metavar="SQL",
                         help="a condition on --table's archived rows, e.g. "
                         "\"customer_id = 42\"")
    restore.add_argument("--dry-run", action="store_true",
                         help="print the per-table counts that would come back; write nothing")
    restore.add_argument("--now", type=instant, metavar="ISO-8601",
                         help="restore as of this instant (the rows age again from it)")
    restore.set_defaults(handler=handler(cmd_restore))

    add_hold_commands(sub, handler)
    add_erase_command(sub, handler)

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
    if not names:
        print(f"nothing to run: {NO_ENABLED_POLICY}", file=sys.stderr)
        return EXIT_OK
    for name in names:
        archiver.policy(name)  # an unknown name stops here, before anything runs
    now = args.now or datetime.now(UTC)
    if args.dry_run:
        return _dry_run(archiver, names, now)
    limits = RunLimits(args.max_rows, args.max_runtime)
    return _run_all(names, lambda name, stop: _with_progress(
        archiver, name, "run", now, stop, lambda progress: archiver.run(
            name, now, limits=limits, stop=stop, progress=progress), args.max_rows))


def _run_all(names: list[str],
             run_one: Callable[[str, threading.Event], RunOutcome | None]) -> int:
    """Run each named policy in turn until a stop signal; print the summary; the exit code
    follows the worst outcome."""
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
            outcome = run_one(name, stop)
            if outcome is not None:
                outcomes.append(outcome)
    _print_summary(outcomes)
    if any(r.status in ("error", "schema_drift") for r in outcomes):
        return EXIT_ERROR
    if any(r.status in ("lock_busy", "lock_lost") for r in outcomes):
        return EXIT_LOCK_BUSY
    return EXIT_OK


def _dry_run(archiver: Archiver, names: list[str], now: datetime) -> int:
    for name in names:
        policy = archiver.policy(name)
        if not policy.archives:
            _print_sweep_plan(plan_sweep(archiver.engines, purge_of(policy, now)))
            continue
        plan = plan_run(archiver.engines.primary, archiver.as_of(name, now), now)
        counts = ", ".join(f"{table} {count:,}" for table, count in plan.counts.items())
        print(f"dry run: policy {name}: cutoff {plan.cutoff.isoformat()}: would move {counts}")
        if unreferenced_by_others(policy.root):
            print(f"  (aged {policy.root.fullname} rows that other rows of it reference are not "
                  "counted: they move in the same run, once those rows have left)")
    return EXIT_OK


def _print_sweep_plan(plan: SweepPlan) -> None:
    verb = {"purge": "would purge from PRIMARY", "expire": "would expire from ARCHIVE"}
    counts = ", ".join(f"{table} {count:,}" for table, count in plan.counts.items())
    held = f"; {plan.held:,} held root rows stay" if plan.held else ""
    print(f"dry run: policy {plan.sweep.policy.name}: cutoff {plan.sweep.cutoff.isoformat()}: "
          f"{verb[plan.sweep.kind]} {counts}{held}")


def cmd_restore(args: argparse.Namespace, archiver: Archiver) -> int:
    if args.table is not None and bool(args.key) == bool(args.where.strip()):
        return _usage("--table needs either --key or --where")
    if args.run is not None and (args.key or args.where):
        return _usage("--run restores a whole run; --key and --where go with --table")
    problem = condition_problem(args.where)
    if problem is not None:
        return _usage(f"--where {args.where!r} is not one condition: {problem}")
    table = archiver.local_name(args.table) if args.table is not None else None
    request = RestoreRequest(run=args.run, table=table, keys=tuple(args.key),
                             where=args.where.strip())
    now = args.now or datetime.now(UTC)
    try:
        policy = policy_of(archiver.policies, archiver.engines.archive, request)
        if args.dry_run:
            counts = plan_restore(archiver.engines, policy, request)
            shown = ", ".join(f"{table} {count:,}" for table, count in counts.items())
            print(f"dry run: policy {policy.name}: {request.describe()}: would restore {shown}")
            with archiver.engines.archive.connect() as connection:
                unfinished = unfinished_restores(connection, policy)
            if unfinished:  # counted above: they were otherwise a mystery
                runs = "run" if len(unfinished) == 1 else "runs"
                print(f"  (counting the roots left by unfinished restore {runs} "
                      f"{', '.join(map(str, unfinished))}, which every restore of policy "
                      f"{policy.name} takes up first)")
            return EXIT_OK
        planned = sum(plan_restore(archiver.engines, policy, request).values())
        # Nothing left after a restore that was killed once its rows were back: the re-run
        # the operator was told is safe succeeds (and marks the killed run interrupted).
        if not planned and not has_running(archiver.engines.archive, "restore", policy.name):
            if request.run is not None:  # the run exists: its rows have all left ARCHIVE
                print(f"run {request.run}: none of its rows is left in ARCHIVE (restored or "
                      "expired already); nothing to restore")
                return EXIT_OK
            return fail(f"{request.describe()}: nothing archived matches; nothing to restore",
                        EXIT_ERROR)
    except RestoreRefused as exc:
        return _usage(str(exc))
    except BadKey as exc:
        return _usage(f"--key {exc}")
    except sa.exc.DBAPIError as exc:
        if args.where:
            return _usage(f"--where {args.where!r}: ARCHIVE refused it: {first_line(exc)}")
        raise
    return _run_all([policy.name], lambda name, stop: _bar(
        planned, f"restore {name}", lambda progress: archiver.restore(
            request, now, stop=stop, progress=progress)))


def _usage(message: str) -> int:
    return fail(message, EXIT_USAGE)


def cmd_expire(args: argparse.Namespace, archiver: Archiver) -> int:
    for name in args.policy or ():
        if archiver.policy(name).retention is None:
            return _usage(f"policy {name!r} has no retention: its ARCHIVE rows are kept for "
                          "ever; set policy.<name>.retention (e.g. \"7y\") to expire them")
    names = args.policy or [name for name in archiver.enabled
                            if archiver.policy(name).retention is not None]
    now = args.now or datetime.now(UTC)
    if not names:
        print("no enabled policy has a retention: nothing expires")
        return EXIT_OK
    if args.dry_run:
        for name in names:
            expiry = expiry_of(archiver.policy(name), now)
            assert expiry is not None
            _print_sweep_plan(plan_sweep(archiver.engines, expiry))
        return EXIT_OK
    return _run_all(names, lambda name, stop: _with_progress(
        archiver, name, "expire", now, stop, lambda progress: archiver.expire(
            name, now, stop=stop, progress=progress)))


def _with_progress(archiver: Archiver, name: str, action: str, now: datetime,
                   stop: threading.Event, run: Callable[[ProgressCallback], RunOutcome | None],
                   max_rows: int | None = None) -> RunOutcome | None:
    """Run one policy's ``action`` under a progress bar sized by what a dry run counts."""
    policy = archiver.policy(name)
    if action == "expire":
        expiry = expiry_of(policy, now)
        assert expiry is not None
        planned, label = plan_sweep(archiver.engines, expiry).counts, f"expire {name}"
    elif not policy.archives:
        planned = plan_sweep(archiver.engines, purge_of(policy, now)).counts
        label = f"purge {name}"
    else:
        planned = plan_run(archiver.engines.primary, archiver.as_of(name, now), now).counts
        label = f"archive {name}"
    total = sum(planned.values())
    roots = next(iter(planned.values()), 0)
    if max_rows is not None and roots:
        total = min(total, round(total * max_rows / roots))
    return _bar(total, label, run)


def _bar(total: int, label: str,
         run: Callable[[ProgressCallback], RunOutcome | None]) -> RunOutcome | None:
    with progress_bar(total=total, desc=label) as bar:
        def advance(result: BatchResult) -> None:
            bar.update(result.rows)
        return run(advance)


def _print_summary(outcomes: list[RunOutcome]) -> None:
    print(f"{'policy':<10} {'kind':<8} {'run':>5} {'status':<15} {'batches':>8} {'rows':>10} "
          f"{'rows/s':>9}  rows per table")
    for r in outcomes:
        rate = f"{r.rows_per_second:,.0f}" if r.rows_per_second else "-"
        moved = ", ".join(f"{t} {n:,}" for t, n in r.moved.items())
        print(f"{r.policy:<10} {r.kind:<8} {r.run_id or '-':>5} {r.status:<15} {r.batches:>8} "
              f"{r.rows:>10,} {rate:>9}  {moved}")
        if r.held:
            print(f"  kept {r.held:,} held {next(iter(r.moved), 'root')} rows (and their "
                  "children): see 'archive hold list'")
        if r.error:
            print(f"  error: {r.error}")
    if any(r.status in FAILED for r in outcomes):
        print(f"  {SAFE_AGAIN}")


def cmd_status(args: argparse.Namespace, archiver: Archiver) -> int:
    with archiver.engines.archive.connect() as connection:
        recent = connection.execute(
            sa.select(runs).order_by(runs.c.id.desc()).limit(args.limit)).all()
        if not recent:
            print("no archival runs recorded yet")
            return EXIT_OK
        # The runs shown are every run between the oldest and the newest of them: a range,
        # where an IN list of their ids exceeded SQLite's parameters per statement.
        counters = connection.execute(sa.select(run_tables).where(
            run_tables.c.run_id.between(recent[-1].id, recent[0].id))).all()
    kinds = {r.id: r.kind for r in recent}
    per_run: dict[int, list[str]] = {}
    for c in counters:  # archive runs: deleted from PRIMARY/copied; others: deleted
        per_run.setdefault(c.run_id, []).append(
            f"{c.table_name} {c.deleted:,}/{c.copied:,}" if kinds[c.run_id] == "archive"
            else f"{c.table_name} {c.deleted:,}")
    print(f"{'run':>5} {'policy':<10} {'kind':<8} {'status':<15} {'started (UTC)':<20} "
          f"{'secs':>7} {'rows':>10} {'rows/s':>9}  per table: deleted/copied (archive), deleted")
    for r in recent:
        seconds = (r.finished_at - r.started_at).total_seconds() if r.finished_at else None
        print(f"{r.id:>5} {r.policy:<10} {r.kind:<8} {r.status:<15} "
              f"{r.started_at:%Y-%m-%d %H:%M:%S}  "
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
        print(f"{len(plan.conflicts)} conflicts (above) stop the twins: nothing applied",
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
