"""The read-only HTTP API: a thin GET-only blueprint over the report registry.

It knows nothing about individual reports: it parses, runs and serialises whatever the
registry holds. Routes accept GET and HEAD only; anything else is a 405 problem. With
authentication on, every route needs a credential (a 401 before any name is looked up),
and each report the scope it declares (``csv`` for downloads); the catalogs list only what
the caller's token may read.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from flask import Blueprint, Response, jsonify, request, url_for

from reporting.auth import Principal, require, require_signed_in
from reporting.csv_export import check_row_cap, export_filename, stream_csv
from reporting.execution import Page, run_page
from reporting.metrics import count_served, metered
from reporting.openapi import openapi_document
from reporting.pagination import decode_cursor, encode_cursor
from reporting.report_databases import databases_of
from reporting.report_error import ReportError
from reporting.reports import Report
from reporting.request import ReportRequest, parse_request
from reporting.state import current_state

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")
_GET = {"provide_automatic_options": False}


@blueprint.before_request
def _signed_in() -> None:
    require_signed_in()


def required_scopes(report: Report, *, export: bool = False) -> tuple[str, ...]:
    """The scopes reading ``report`` needs: its own (``archive`` for the ledger), and ``csv``
    instead of ``reports`` for a download."""
    if not export:
        return (report.scope,)
    return ("csv",) if report.scope == "reports" else ("csv", report.scope)


def authorize(report: Report, *, export: bool = False) -> None:
    """Check the caller may read ``report``: its scope, and ``csv`` for a download."""
    for scope in required_scopes(report, export=export):
        require(scope, report.name)


def may_read(principal: Principal, report: Report, *, export: bool = False) -> bool:
    """Whether ``principal`` may read ``report`` (as pages, or as a download)."""
    return principal.may_read(report.name) and set(
        required_scopes(report, export=export)) <= principal.scopes


def listed(principal: Principal, report: Report) -> bool:
    """Whether a catalog shows ``report`` to ``principal``: one it may read somehow."""
    return may_read(principal, report) or may_read(principal, report, export=True)


def find_report(name: str) -> Report:
    reports = current_state().reports
    if name not in reports:
        # Only the names this caller may read: an allow-list hides the others' names too.
        known = [report.name for report in visible(reports.values())]
        raise ReportError(404, "unknown_report", f"there is no report {name!r}; "
                          f"GET /api/v1/reports lists them: {', '.join(known) or 'none'}")
    return reports[name]


def find_table(name: str) -> Report:
    tables = current_state().tables
    if name not in tables:
        # Never a list here: a hidden table's name is not for every client to learn.
        raise ReportError(404, "unknown_table", f"there is no table {name!r} served here; "
                          "GET /api/v1/tables lists those that are")
    return tables[name]


def build_request(report: Report, *, export: bool = False,
                  args: dict[str, list[str]] | None = None) -> ReportRequest:
    """Validate the current request's query string (or ``args``) for ``report``."""
    settings = current_state().settings.reports
    return parse_request(report, args if args is not None else request.args.to_dict(flat=False),
                         default_limit=settings.default_limit, max_limit=settings.max_limit,
                         export=export)


def cursor_types(report_request: ReportRequest) -> list[str]:
    """The declared types of what a cursor holds: the sort column, then the key columns."""
    declared = {c.name: c.type for c in report_request.report.columns}
    return [declared.get(c, "string") for c in (report_request.sort, *report_request.key)]


@blueprint.get("/", **_GET)
def index() -> Response:
    """Links to everything; no database work (the benchmark's trivial endpoint)."""
    return jsonify(reports=url_for("api.catalog"), tables=url_for("api.table_catalog"),
                   openapi=url_for("api.openapi"))


@blueprint.get("/reports", **_GET)
def catalog() -> Response:
    state = current_state()
    return jsonify(reports=[describe(report) for report in visible(state.reports.values())],
                   tables=[describe(table) for table in visible(state.tables.values())])


@blueprint.get("/tables", **_GET)
def table_catalog() -> Response:
    return jsonify(tables=[describe(table) for table in visible(current_state().tables.values())])


def visible(reports: Iterable[Report]) -> list[Report]:
    """Those of ``reports`` the caller's token may read."""
    principal = require_signed_in()
    return [report for report in reports if listed(principal, report)]


@blueprint.get("/reports/<name>", **_GET)
def report_page(name: str) -> Response:
    return page_of(find_report(name))


@blueprint.get("/tables/<name>", **_GET)
def table_page(name: str) -> Response:
    return page_of(find_table(name))


def page_of(report: Report) -> Response:
    """One JSON page of ``report`` for the current request."""
    authorize(report)
    report_request = build_request(report)
    page, next_token = fetch_page(report_request)
    response = jsonify(envelope(report_request, page, next_token))
    count_served(report.name, "json", len(page.rows), response.content_length or 0)
    if next_token is not None:
        args = {k: v for k, v in request.args.items() if k != "cursor"} | {"cursor": next_token}
        # Relative (RFC 8288 resolves it against the request): right behind any proxy.
        response.headers["Link"] = f'<{quote(request.path)}?{urlencode(args)}>; rel="next"'
    return response


def fetch_page(report_request: ReportRequest) -> tuple[Page, str | None]:
    """Run one page of a validated request; return it with the signed cursor of the next."""
    state = current_state()
    secret, databases = state.settings.service.secret_key, state.report_databases
    types = cursor_types(report_request)
    # Only SQLite keeps a value against its column's type (PostgreSQL's are always typed).
    in_sqlite = all(databases.engines[name].dialect.name == "sqlite"
                    for name in databases_of(report_request))
    cursor = None
    if report_request.cursor is not None:
        cursor = decode_cursor(report_request, report_request.cursor, secret, types,
                               as_stored=in_sqlite)
    page = run_page(databases, report_request, cursor)
    next_token = (encode_cursor(report_request, page.next_cursor, secret,
                                types if in_sqlite else ())
                  if page.next_cursor is not None else None)
    return page, next_token


@blueprint.get("/reports/<name>.csv", **_GET)
def report_csv(name: str) -> Response:
    return csv_of(find_report(name))


@blueprint.get("/tables/<name>.csv", **_GET)
def table_csv(name: str) -> Response:
    return csv_of(find_table(name))


def csv_of(report: Report) -> Response:
    """Every row of ``report`` for the current request, as a streamed CSV download."""
    authorize(report, export=True)
    report_request = build_request(report, export=True)
    state = current_state()
    databases = state.report_databases
    slot = state.exports.acquire()
    try:
        rows = check_row_cap(databases, report_request, state.settings.reports.csv_max_rows)
        body = stream_csv(databases, report_request)
    except BaseException:
        slot.release()
        raise
    response = Response(slot.guard(metered(body, report.name, rows)), mimetype="text/csv")
    response.call_on_close(slot.release)
    filename = export_filename(report_request, datetime.now(UTC).date())
    response.headers["Content-Type"] = "text/csv; charset=utf-8"
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["X-Row-Count"] = str(rows)
    return response


@blueprint.get("/openapi.json", **_GET)
def openapi() -> Response:
    state = current_state()
    return jsonify(openapi_document({r.name: r for r in visible(state.reports.values())},
                                    {t.name: t for t in visible(state.tables.values())}))


def envelope(report_request: ReportRequest, page: Page, next_token: str | None) -> dict[str, Any]:
    """The page as the response body; timestamps are written by the JSON provider."""
    return {
        "rows": page.rows,
        "page": {"limit": report_request.limit, "has_more": page.has_more,
                 "next_cursor": next_token},
        "count": {"value": page.count, "kind": page.count_kind},
        "meta": {"report": report_request.report.name, "params": report_request.normalised(),
                 "sort": ("-" if report_request.descending else "") + report_request.sort,
                 "sources": page.databases, "columns": page.columns, "took_ms": page.took_ms,
                 **({"computed_at": page.computed_at} if page.computed_at else {})},
    }


def describe(report: Report) -> dict[str, Any]:
    """A report's catalog entry: everything a client needs to build a valid request."""
    page, csv = (("api.table_page", "api.table_csv") if report.collection == "tables"
                 else ("api.report_page", "api.report_csv"))
    return {
        "name": report.name, "title": report.title, "description": report.description,
        "kind": report.kind, "sources": list(report.sources),
        "columns": [{"name": c.name, "type": c.type, "description": c.description,
                     "nullable": c.nullable} for c in report.columns],
        "params": [{"name": p.name, "type": p.type, "default": p.default,
                    "choices": list(p.choices) if p.choices else None,
                    "description": p.description} for p in report.params],
        "filters": [{"column": f.column, "type": f.type, "operators": list(f.operators),
                     "choices": list(f.choices) if f.choices else None,
                     "description": f.description} for f in report.filters],
        "sort_keys": list(report.sort_keys), "default_sort": report.default_sort,
        "key": list(report.key),
        "links": {"self": url_for(page, name=report.name), "csv": url_for(csv, name=report.name)},
    }
