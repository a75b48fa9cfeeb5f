"""The ``run_service.py`` command line: serve, migrate, seed, archive, scheduler.

Commands print what a person needs (URLs, progress bars, summaries) to the terminal and
leave operational history to the logs. Exit codes: 0 success, 1 failure, 2 bad usage or
bad settings, 3 archival lock busy.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from flask import Flask
from tqdm import tqdm

from archive import cli as archive_cli
from archive.models import archived_tables
from reporting.app import create_checked_app, settings_of
from reporting.csv_export import check_row_cap, stream_csv
from reporting.db import ARCHIVE, PRIMARY, db
from reporting.error_text import first_line
from reporting.errors import ReportError
from reporting.logs import configure_logging
from reporting.migrations import SchemaIncomplete, ensure_complete, upgrade_all
from reporting.preflight import DatabaseUnreachable
from reporting.reports import REPORTS
from reporting.request import parse_request
from reporting.seed import SeedError, SeedPlan, SeedResult, seed
from reporting.server import serve_in_process, serve_with_workers
from reporting.settings import Settings, SettingsError, load_settings
from reporting.views import report_sources

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A command failed in a way the user can act on; printed as one line."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = getattr(args, "handler", cmd_serve)
    try:
        settings = load_settings(args.settings)
        configure_logging(args.log_level or settings.service.log_level)
        args.settings_obj = settings
        return handler(args)
    except SettingsError as exc:
        print(f"sediment: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"sediment: {exc}", file=sys.stderr)
        return exc.exit_code
    except (DatabaseUnreachable, SchemaIncomplete) as exc:
        print(f"sediment: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("sediment: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except sa.exc.DBAPIError as exc:
        # One line for the operator; the driver's traceback is for DEBUG.
        logger.debug("command failed", exc_info=True)
        print(f"sediment: database error: {first_line(exc)} (--log-level DEBUG shows where)",
              file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        logger.exception("command failed")
        print(f"sediment: {type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_service.py",
        description="Sediment: archive aged rows from PRIMARY to ARCHIVE, and report over both.",
        epilog="With no command, 'serve' runs. Each command has its own --help.",
    )
    parser.add_argument("--settings", metavar="PATH", help="settings file (default: settings.toml)")
    parser.add_argument(
        "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper,
        help="override [service] log_level",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the HTTP service (the default)",
        description="Migrate, seed demo data into empty databases, start the archival "
        "scheduler if enabled, and serve the API with a production WSGI server.",
    )
    serve.add_argument("--host", help="address to listen on (default: [service] host)")
    serve.add_argument("--port", type=_port, help="port to listen on (default: [service] port)")
    serve.add_argument("--workers", type=_positive_int, metavar="N",
                       help="worker processes (default: [service] workers); more than 1 "
                       "serves with gunicorn, the scheduler staying in this process")
    serve.add_argument("--no-scheduler", action="store_true",
                       help="do not run archival policies in this process")
    serve.set_defaults(handler=cmd_serve)

    migrate = commands.add_parser(
        "migrate", help="upgrade both databases to the newest schema",
        description="Run the Alembic migrations of PRIMARY and ARCHIVE up to head.",
    )
    migrate.add_argument("--repair", action="store_true",
                         help="re-create, empty, tables a database lacks although its "
                         "revision says it has them (otherwise that stops the command)")
    migrate.set_defaults(handler=cmd_migrate)

    seed_parser = commands.add_parser(
        "seed", help="generate deterministic demo data",
        description="Generate three years of demo data into PRIMARY. The same --seed and "
        "--until give the same rows. Refuses non-empty databases unless --append.",
    )
    defaults = SeedPlan()
    seed_parser.add_argument("--customers", type=_count, default=defaults.customers,
                             help=f"customers to create (default {defaults.customers:,})")
    seed_parser.add_argument("--orders", type=_count, default=defaults.orders,
                             help=f"orders, with 1-8 items each (default {defaults.orders:,})")
    seed_parser.add_argument("--events", type=_count, default=defaults.events,
                             help=f"audit events to create (default {defaults.events:,})")
    seed_parser.add_argument("--seed", type=int, default=defaults.seed,
                             help=f"random seed (default {defaults.seed})")
    seed_parser.add_argument("--until", type=parse_instant, metavar="ISO-8601",
                             help="last day of the generated history (default: today, UTC)")
    seed_parser.add_argument("--append", action="store_true",
                             help="add to existing data instead of refusing")
    seed_parser.set_defaults(handler=cmd_seed)

    report = commands.add_parser(
        "report", help="write a report as CSV",
        description="Write every row of a report as CSV, exactly as GET "
        "/api/v1/reports/NAME.csv would, with a progress bar. Filters and parameters as in "
        "the API, e.g. --param status=closed --param 'placed_at[gte]=2025-01-01'.")
    report.add_argument("name", help="report name (GET /api/v1/reports lists them)")
    report.add_argument("--csv", required=True, metavar="FILE", help="file to write")
    report.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        type=_name_value, help="a parameter or filter (repeatable)")
    report.add_argument("--sort", help="sort key, - prefix for descending")
    report.add_argument("--source", choices=("primary", "archive", "all"),
                        help="which database(s) (default: all)")
    report.add_argument("--formula", choices=("escape", "raw"), default="escape",
                        help="escape cells a spreadsheet would run as formulas (default)")
    report.set_defaults(handler=cmd_report)

    archive_cli.add_commands(commands)
    return parser


def _name_value(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def parse_instant(text: str) -> datetime:
    """Parse an ISO-8601 instant; a value without a zone is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 date or time, e.g. 2026-01-31T00:00:00Z"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _positive_int(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return value


def make_app(args: argparse.Namespace) -> Flask:
    """Create the app from the settings the command line chose, and check that both of its
    databases answer and are two different databases."""
    settings: Settings = args.settings_obj
    return create_checked_app(settings)


def cmd_migrate(args: argparse.Namespace) -> int:
    app = make_app(args)
    with app.app_context():
        upgrade_all()
        repaired = ensure_complete(repair=args.repair)
    for label, tables in repaired.items():
        print(f"re-created missing {label} tables, empty: {', '.join(tables)}")
    print("both databases are at the newest schema")
    return EXIT_OK


def cmd_seed(args: argparse.Namespace) -> int:
    plan = SeedPlan(customers=args.customers, orders=args.orders, events=args.events,
                    seed=args.seed, until=args.until)
    app = make_app(args)
    with app.app_context():
        result = run_seed(plan, append=args.append)
    print(
        f"seeded {result.total:,} rows in {result.seconds:.1f}s "
        f"({result.rows_per_second:,.0f} rows/s): "
        + ", ".join(f"{name} {count:,}" for name, count in result.rows.items())
    )
    return EXIT_OK


def run_seed(plan: SeedPlan, *, append: bool) -> SeedResult:
    """Seed with a progress bar. Call inside an app context."""
    with tqdm(total=plan.estimated_rows, unit=" rows", unit_scale=True, desc="seeding",
              file=sys.stderr, mininterval=0.5, delay=0.5) as bar:
        try:
            result = seed(db.engines[PRIMARY], plan, archive=db.engines[ARCHIVE],
                          archive_tables=archived_tables, append=append, progress=bar.update)
        except SeedError as exc:
            raise CommandError(str(exc)) from exc
        bar.total = bar.n
    return result


def cmd_report(args: argparse.Namespace) -> int:
    """Write a report's CSV to a file, atomically: a failed export leaves no partial file."""
    if args.name not in REPORTS:
        raise CommandError(f"no report named {args.name!r} (known: {', '.join(REPORTS)})",
                           EXIT_USAGE)
    query = {name: [value] for name, value in args.param}
    query.update({k: [v] for k, v in (("sort", args.sort), ("source", args.source)) if v})
    app = make_app(args)
    settings = settings_of(app).reports
    target = Path(args.csv)
    partial = target.with_name(f".{target.name}.partial")
    with app.app_context():
        sources = report_sources(app)
        try:
            request = parse_request(REPORTS[args.name], query, default_limit=1,
                                    max_limit=settings.max_limit)
            total = check_row_cap(sources, request, settings.csv_max_rows)
        except ReportError as exc:
            where = f" ({exc.param})" if exc.param else ""
            raise CommandError(f"{exc.detail}{where}", EXIT_USAGE) from exc
        with open(partial, "wb") as out, tqdm(total=total, unit=" rows", unit_scale=True,
                                              desc=f"report {args.name}", file=sys.stderr,
                                              mininterval=0.5) as bar:
            for chunk in stream_csv(sources, request, escape=args.formula == "escape"):
                out.write(chunk)
                bar.update(chunk.count(b"\n"))
    partial.replace(target)
    print(f"wrote {total:,} rows of {args.name} to {target}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    app = make_app(args)
    settings = settings_of(app)
    service = settings.service
    host = getattr(args, "host", None) or service.host
    port = getattr(args, "port", None) or service.port
    workers = getattr(args, "workers", None) or service.workers
    if workers != service.workers:
        service = dataclasses.replace(service, workers=workers)
    with app.app_context():
        if service.migrate_on_start:
            upgrade_all()
        ensure_complete()
        if service.seed_when_empty:
            try:
                run_seed(SeedPlan(), append=False)
            except CommandError:
                logger.info("databases hold data: demo seeding skipped")
    scheduler = None
    if settings.scheduler.enabled and not getattr(args, "no_scheduler", False):
        # In this process only: gunicorn's workers serve HTTP and never schedule.
        scheduler = archive_cli.start_scheduler(app)

    def announce() -> None:
        how = f"{workers} worker processes" if workers > 1 else f"{service.threads} threads"
        print(f"Sediment is serving on http://{host}:{port}/  (health: "
              f"http://{host}:{port}/healthz; {how})", flush=True)

    code = EXIT_OK
    try:
        if workers > 1:
            code = serve_with_workers(host, port, service, settings.source, announce)
        else:
            previous = {sig: signal.signal(sig, _stop_serving)
                        for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                # Returns when a signal handler raises SystemExit; the sockets close then.
                serve_in_process(app, host, port, service, announce)
            except SystemExit:
                pass
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    finally:
        if scheduler is not None:
            logger.info("waiting for running archival batches to finish")
            scheduler.shutdown()
    logger.info("stopped")
    return code


def _stop_serving(signum: int, _frame: object) -> None:
    """Leave the WSGI server's loop: waitress shuts down cleanly on SystemExit only."""
    logger.info("%s received: shutting down", signal.Signals(signum).name)
    raise SystemExit(EXIT_OK)
