"""``archive run|status|verify`` and ``scheduler``: the archiver's command line.

Exit codes: 0 the run ended cleanly (done or a limit reached), 1 error, 2 bad usage,
3 another runner holds the lock (``lock_busy``), or took it while this run had lost it
(``lock_lost``). The code always agrees with the status the ledger records.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from flask import Flask
from tqdm import tqdm

from archive.jobs import run_configured_policy
from archive.ledger import run_tables, runs
from archive.mover import BatchResult
from archive.runner import RunLimits, RunReport, plan_run
from archive.scheduler import build_scheduler
from archive.verify import verify_archive
from reporting.app import create_checked_app, policies_of, settings_of
from reporting.db import ARCHIVE, PRIMARY, db
from reporting.settings import parse_duration

EXIT_OK, EXIT_ERROR, EXIT_LOCK_BUSY = 0, 1, 3


def add_commands(commands: Any) -> None:
    """Add ``archive`` and ``scheduler`` to the top-level subparsers."""
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
    run.add_argument("--max-rows", type=_positive, metavar="N",
                     help="stop after about N root rows (children travel with their root)")
    run.add_argument("--max-runtime", type=_duration, metavar="DURATION",
                     help="stop starting new batches after this long, e.g. 10m")
    run.add_argument("--now", type=_instant, metavar="ISO-8601",
                     help="compute cutoffs from this instant instead of the clock")
    run.set_defaults(handler=cmd_run)

    status = sub.add_parser("status", help="show recent runs from the ledger",
                            description="Show the most recent runs, newest first.")
    status.add_argument("--limit", type=_positive, default=20, help="runs to show (default 20)")
    status.set_defaults(handler=cmd_status)

    verify = sub.add_parser(
        "verify", help="check archival invariants in both databases",
        description="Check that no key is in both databases, no archived child lacks its "
        "parent, the ledger matches the archived rows, and finished runs left nothing aged.")
    verify.set_defaults(handler=cmd_verify)

    scheduler = commands.add_parser(
        "scheduler", help="run the archival schedule without the HTTP service",
        description="Run every enabled policy on its cron schedule until SIGTERM/SIGINT.")
    scheduler.set_defaults(handler=cmd_scheduler)


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value


def _duration(text: str) -> Any:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 instant, e.g. 2026-01-31T00:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Turn SIGTERM and SIGINT into a clean stop after the current batch."""
    def request_stop(signum: int, _frame: Any) -> None:
        print(f"\n{signal.Signals(signum).name}: stopping after the current batch",
              file=sys.stderr, flush=True)
        stop.set()
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_run(args: argparse.Namespace) -> int:
    app = create_checked_app(args.settings_obj)
    settings = settings_of(app)
    names = args.policy or [p.name for p in policies_of(app) if p.enabled]
    for name in names:
        settings.policy(name)  # an unknown name stops here, before anything runs
    now = args.now or datetime.now(UTC)
    if args.dry_run:
        return _dry_run(app, names, now)
    stop = threading.Event()
    reports: list[RunReport] = []
    with stop_on_signals(stop):
        for name in names:
            if stop.is_set():
                break
            reports.append(_run_with_progress(app, name, now, args, stop))
    _print_summary(reports)
    if any(r.status == "error" for r in reports):
        return EXIT_ERROR
    if any(r.status in ("lock_busy", "lock_lost") for r in reports):
        return EXIT_LOCK_BUSY
    return EXIT_OK


def _dry_run(app: Flask, names: list[str], now: datetime) -> int:
    policies = {p.name: p for p in policies_of(app)}
    with app.app_context():
        for name in names:
            plan = plan_run(db.engines[PRIMARY], policies[name], now)
            counts = ", ".join(f"{table} {count:,}" for table, count in plan.counts.items())
            print(f"dry run: policy {name}: cutoff {plan.cutoff.isoformat()}: would move {counts}")
    return EXIT_OK


def _run_with_progress(app: Flask, name: str, now: datetime, args: argparse.Namespace,
                       stop: threading.Event) -> RunReport:
    policy = next(p for p in policies_of(app) if p.name == name)
    with app.app_context():
        planned = plan_run(db.engines[PRIMARY], policy, now).counts
    total = sum(planned.values())
    if args.max_rows is not None and planned[policy.root.name]:
        total = min(total, round(total * args.max_rows / planned[policy.root.name]))
    with tqdm(total=total, desc=f"archive {name}", unit=" rows", unit_scale=True,
              file=sys.stderr, mininterval=0.5) as bar:
        def advance(result: BatchResult) -> None:
            bar.update(result.rows)
        return run_configured_policy(
            app, name, now, limits=RunLimits(args.max_rows, args.max_runtime), stop=stop,
            progress=advance)


def _print_summary(reports: list[RunReport]) -> None:
    print(f"{'policy':<10} {'run':>5} {'status':<15} {'batches':>8} {'rows':>10} {'rows/s':>9}  "
          "moved")
    for r in reports:
        rate = f"{r.rows_per_second:,.0f}" if r.rows_per_second else "-"
        moved = ", ".join(f"{t} {n:,}" for t, n in r.moved.items())
        print(f"{r.policy:<10} {r.run_id or '-':>5} {r.status:<15} {r.batches:>8} {r.rows:>10,} "
              f"{rate:>9}  {moved}")
        if r.error:
            print(f"  error: {r.error}")


def cmd_status(args: argparse.Namespace) -> int:
    app = create_checked_app(args.settings_obj)
    with app.app_context(), db.engines[ARCHIVE].connect() as connection:
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
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    app = create_checked_app(args.settings_obj)
    with app.app_context():
        report = verify_archive(db.engines[PRIMARY], db.engines[ARCHIVE], policies_of(app))
    for line in report.checks:
        print(f"ok    {line}")
    for line in report.problems:
        print(f"FAIL  {line}")
    print("archive verified: all checks passed" if report.ok
          else f"archive verify found {len(report.problems)} problem(s)")
    return EXIT_OK if report.ok else EXIT_ERROR


@dataclass
class BackgroundArchiver:
    """The archival schedule running in this process, and the flag that stops its jobs."""

    scheduler: BackgroundScheduler
    stop: threading.Event

    def shutdown(self) -> None:
        """Ask running jobs to stop after their current batch, then wait for them."""
        self.stop.set()
        self.scheduler.shutdown(wait=True)


def start_scheduler(app: Flask) -> BackgroundArchiver:
    """Start the archival schedule in a background thread of this process."""
    stop = threading.Event()
    scheduler = BackgroundScheduler(timezone=settings_of(app).scheduler.timezone)
    build_scheduler(policies_of(app), settings_of(app).scheduler,
                    lambda name, now: run_configured_policy(app, name, now, stop=stop),
                    scheduler)
    scheduler.start()
    return BackgroundArchiver(scheduler, stop)


def cmd_scheduler(args: argparse.Namespace) -> int:
    app = create_checked_app(args.settings_obj)
    stop = threading.Event()
    scheduler = build_scheduler(
        policies_of(app), settings_of(app).scheduler,
        lambda name, now: run_configured_policy(app, name, now, stop=stop),
        BlockingScheduler(timezone=settings_of(app).scheduler.timezone))

    def request_stop(signum: int, _frame: Any) -> None:
        stop.set()
        scheduler.shutdown(wait=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    print("archival scheduler running; SIGTERM or Ctrl-C stops it", flush=True)
    scheduler.start()
    return EXIT_OK
