"""The composition root: the ``sediment`` / ``run_service.py`` command line.

This module and :mod:`sediment.service` are the only code that imports both
:mod:`reporting` and :mod:`archive`. They load the settings, let the Flask app configure
the engines, resolve the archival policies, and hand each part what it needs.

Commands print what a person needs (URLs, progress bars, summaries) to the terminal and
leave operational history to the logs. Exit codes are those of
:mod:`sediment.core.commandline`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator, Sequence

import sqlalchemy as sa

from archive import cli as archive_cli
from archive.preflight import check_conditions
from archive.scheduler import start_in_background
from reporting import token_commands
from reporting.csv_export import check_row_cap, stream_csv
from reporting.listen import CannotListen, check_address
from reporting.report_error import ReportError
from reporting.request import parse_request
from reporting.server import serve_in_process, serve_with_workers
from reporting.sql_reports import ReportFileError
from reporting.state import state_of
from sediment.core.commandline import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    MOST_SEEDED_CUSTOMERS,
    count,
    customer_count,
    instant,
    port,
    progress_bar,
    worker_count,
)
from sediment.core.databases import Engines
from sediment.core.error_text import first_line
from sediment.core.logs import configure_logging
from sediment.core.migrations import (
    MigrationRefused,
    SchemaIncomplete,
    ensure_complete,
    upgrade_all,
)
from sediment.core.preflight import DatabaseUnreachable
from sediment.core.public_bind import public_bind_problems
from sediment.core.schema.archive import archived_tables
from sediment.core.seed import SeedError, SeedPlan, SeedResult, seed
from sediment.core.settings import Settings, SettingsError, load_settings
from sediment.export_file import (
    ExportRefused,
    check_target,
    is_stream,
    protected_files,
    write_export,
)
from sediment.service import (
    Service,
    build_archiver,
    build_service,
    check_reports,
    reload_catalog,
    resolve_policies_of,
    warn_unknown_allowed,
)

logger = logging.getLogger(__name__)


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
        configure_logging(args.log_level or settings.service.log_level,
                          settings.service.log_format)
        if settings.database.primary_schema == "demo":
            resolve_policies_of(settings)  # a bad policy stops every command, naming its key
        args.settings_obj = settings
        return handler(args)
    except (SettingsError, ReportFileError) as exc:
        print(f"sediment: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"sediment: {exc}", file=sys.stderr)
        return exc.exit_code
    except (DatabaseUnreachable, SchemaIncomplete, MigrationRefused, CannotListen) as exc:
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
    serve.add_argument("--port", type=port, help="port to listen on (default: [service] port)")
    serve.add_argument("--workers", type=worker_count, metavar="N",
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
    seed_parser.add_argument("--customers", type=customer_count, default=defaults.customers,
                             help=f"customers to create (default {defaults.customers:,}; "
                             f"at most {MOST_SEEDED_CUSTOMERS:,})")
    seed_parser.add_argument("--orders", type=count, default=defaults.orders,
                             help=f"orders, with 1-8 items each (default {defaults.orders:,})")
    seed_parser.add_argument("--events", type=count, default=defaults.events,
                             help=f"audit events to create (default {defaults.events:,})")
    seed_parser.add_argument("--seed", type=int, default=defaults.seed,
                             help=f"random seed (default {defaults.seed})")
    seed_parser.add_argument("--until", type=instant, metavar="ISO-8601",
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
    report.add_argument("--csv", required=True, metavar="FILE",
                        help="file to write (whole or not at all), or - for standard output")
    report.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        type=_name_value, help="a parameter or filter (repeatable)")
    report.add_argument("--sort", help="sort key, - prefix for descending")
    report.add_argument("--source", choices=("primary", "archive", "all"),
                        help="which database(s) (default: all)")
    report.add_argument("--formula", choices=("escape", "raw"), default="escape",
                        help="escape cells a spreadsheet would run as formulas (default)")
    report.set_defaults(handler=cmd_report)

    check = commands.add_parser(
        "reports-check", help="check the SQL report files against both databases",
        description="Parse every SQL report file (reports.sql_folder, and the demo's) and "
        "prepare each on the databases it reads, as serve does at startup and on SIGHUP; "
        "print the reports and tables that would be served. Exit 2 naming the file and line "
        "of the first bad one.")
    check.set_defaults(handler=cmd_reports_check)

    archive_cli.add_commands(commands, build_archiver)
    token_commands.add_commands(commands)
    return parser


def _name_value(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def service_for(args: argparse.Namespace) -> Service:
    """The app and archiver of the settings the command line chose, after checking that
    both databases answer and are two different databases."""
    return build_service(args.settings_obj)


def migrated_service(args: argparse.Namespace) -> Service:
    """:func:`service_for`, for a command that reads Sediment's tables: the databases it
    migrates checked to be at their head, so that one never migrated stops the command
    naming 'migrate' rather than the first table missing."""
    service = service_for(args)
    ensure_complete(service.engines, primary_schema=args.settings_obj.database.primary_schema)
    return service


def cmd_migrate(args: argparse.Namespace) -> int:
    service = service_for(args)
    engines = service.engines
    primary_schema = service.archiver.settings.database.primary_schema
    upgrade_all(engines, primary_schema=primary_schema)
    repaired = ensure_complete(engines, repair=args.repair, primary_schema=primary_schema)
    check_conditions(engines.primary, service.archiver.policies)
    for label, tables in repaired.items():
        print(f"re-created missing {label} tables, empty: {', '.join(tables)}")
    if primary_schema == "demo":
        print("both databases are at the newest schema")
        return EXIT_OK
    changes = apply_twin_plan(service)
    print(f"ARCHIVE is at the newest schema; {changes} twin changes applied; PRIMARY (an "
          "existing application's database) was not touched")
    return EXIT_OK


def apply_twin_plan(service: Service) -> int:
    """Create or evolve the twins of an existing PRIMARY's tables; return the changes made.

    :raises CommandError: naming every type change no twin can follow.
    """
    plan = service.archiver.plan_twins()
    if plan.conflicts:
        raise CommandError("; ".join(map(str, plan.conflicts)))
    for change in plan.changes:
        print(f"ARCHIVE twin: {change}")
    service.archiver.apply_twins(plan)
    return len(plan.changes)


def cmd_seed(args: argparse.Namespace) -> int:
    if args.settings_obj.database.primary_schema == "existing":
        raise CommandError("database.primary_schema is \"existing\": seed writes the demo "
                           "shop, and Sediment never writes an application's database",
                           EXIT_USAGE)
    plan = SeedPlan(customers=args.customers, orders=args.orders, events=args.events,
                    seed=args.seed, until=args.until)
    result = run_seed(service_for(args).engines, plan, append=args.append)
    print(
        f"seeded {result.total:,} rows in {result.seconds:.1f}s "
        f"({result.rows_per_second:,.0f} rows/s): "
        + ", ".join(f"{name} {count:,}" for name, count in result.rows.items())
    )
    return EXIT_OK


def run_seed(engines: Engines, plan: SeedPlan, *, append: bool) -> SeedResult:
    """Seed with a progress bar."""
    with progress_bar(total=plan.estimated_rows, desc="seeding", delay=0.5) as bar:
        try:
            result = seed(engines.primary, plan, archive=engines.archive,
                          archive_tables=archived_tables, append=append, progress=bar.update)
        except SeedError as exc:
            raise CommandError(str(exc)) from exc
        bar.total = bar.n
    return result


def cmd_reports_check(args: argparse.Namespace) -> int:
    service = migrated_service(args)
    check_reports(service.app, service.report_files)
    warn_unknown_allowed(service.app)
    state = state_of(service.app)
    print(f"{len(state.reports)} reports ({len(service.report_files)} from SQL files): "
          f"{', '.join(state.reports) or 'none'}")
    print(f"{len(state.tables)} tables: {', '.join(state.tables) or 'none'}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Write a report's CSV to a file, atomically (a failed export leaves no partial file),
    or to standard output (``--csv -``) or a pipe as it streams."""
    service = migrated_service(args)
    check_reports(service.app, service.report_files)
    state = state_of(service.app)
    if args.name not in state.reports:
        raise CommandError(f"no report named {args.name!r} (known: "
                           f"{', '.join(state.reports) or 'none'})", EXIT_USAGE)
    query = {name: [value] for name, value in args.param}
    query.update({k: [v] for k, v in (("sort", args.sort), ("source", args.source),
                                       ("formula", args.formula)) if v})
    settings = state.settings.reports
    databases = state.report_databases
    try:
        check_target(args.csv, protected_files(args.settings, args.settings_obj))
    except ExportRefused as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    try:
        request = parse_request(state.reports[args.name], query, default_limit=1,
                                max_limit=settings.max_limit, export=True)
        total = check_row_cap(databases, request, settings.csv_max_rows)
    except ReportError as exc:
        where = f" ({exc.param})" if exc.param else ""
        raise CommandError(f"{exc.detail}{where}", EXIT_USAGE) from exc
    with progress_bar(total=total, desc=f"report {args.name}") as bar:
        def counted() -> Iterator[bytes]:
            header = 1  # a line, not a row
            for chunk in stream_csv(databases, request):
                yield chunk
                lines = chunk.count(b"\n")
                bar.update(lines - min(header, lines))
                header -= min(header, lines)
        try:
            write_export(args.csv, counted())
        except ExportRefused as exc:
            raise CommandError(str(exc), EXIT_USAGE if exc.usage else EXIT_ERROR) from exc
    print(f"wrote {total:,} rows of {args.name} to {args.csv}",
          file=sys.stderr if is_stream(args.csv) else sys.stdout)
    return EXIT_OK


def refuse_unsafe_public_bind(settings: Settings, host: str) -> None:
    """Stop ``serve`` on a public address with the demo's unsafe settings, one line per
    setting to change (or warn loudly, with ``service.allow_insecure``).

    :raises CommandError: exit code 2, naming each setting.
    """
    problems = public_bind_problems(settings, host)
    if problems and settings.service.allow_insecure:
        for problem in problems:
            logger.warning("INSECURE: serving on %s although %s (service.allow_insecure)",
                           host, problem)
    elif problems:
        raise CommandError(f"refusing to serve on {host}: " + "\nsediment: ".join(problems),
                           EXIT_USAGE)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = args.settings_obj
    serving = settings.service
    host = getattr(args, "host", None) or serving.host
    refuse_unsafe_public_bind(settings, host)
    port_number = getattr(args, "port", None) or serving.port
    check_address(host, port_number)  # before any migration, seeding or scheduling
    service = service_for(args)
    workers = getattr(args, "workers", None) or serving.workers
    if workers != serving.workers:
        serving = dataclasses.replace(serving, workers=workers)
    primary_schema = settings.database.primary_schema
    if serving.migrate_on_start:
        upgrade_all(service.engines, primary_schema=primary_schema)
    ensure_complete(service.engines, primary_schema=primary_schema)
    if primary_schema == "existing" and serving.migrate_on_start:
        apply_twin_plan(service)
    elif serving.seed_when_empty and primary_schema == "demo":
        try:
            run_seed(service.engines, SeedPlan(), append=False)
        except CommandError:
            logger.info("databases hold data: demo seeding skipped")
    check_conditions(service.engines.primary, service.archiver.policies)
    check_reports(service.app, service.report_files)
    warn_unknown_allowed(service.app)
    scheduler = None
    if settings.scheduler.enabled and not getattr(args, "no_scheduler", False):
        # In this process only: gunicorn's workers serve HTTP and never schedule.
        scheduler = start_in_background(service.archiver)

    def announce() -> None:
        how = f"{workers} worker processes" if workers > 1 else f"{serving.threads} threads"
        print(f"Sediment is serving on http://{host}:{port_number}/  (health: "
              f"http://{host}:{port_number}/healthz; {how})", flush=True)

    code = EXIT_OK
    try:
        if workers > 1:
            code = serve_with_workers(host, port_number, serving, settings.source, announce)
        else:
            serve_in_process(service.app, host, port_number, serving, announce,
                             on_reload=lambda: reload_catalog(service))
    finally:
        if scheduler is not None:
            logger.info("waiting for running archival batches to finish")
            scheduler.shutdown()
    logger.info("stopped")
    return code
