"""The UI's pages: home, the catalog, a page per report and table, the archive dashboard,
a run's detail, and signing in and out."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from flask import Blueprint, abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from reporting import auth
from reporting.operations import policy_overviews, recent_runs, rows_per_day, run_detail
from reporting.report_error import ReportError
from reporting.reports import Report
from reporting.state import current_state
from reporting.stored_values import blob_text
from reporting.ui.chart import stacked_bars
from reporting.ui.query import (
    FIRST_PAGE,
    PAGE_SIZES,
    api_query,
    back_trail,
    filter_fields,
    link,
    without,
)
from reporting.views import (
    authorize,
    build_request,
    fetch_page,
    find_report,
    find_table,
    listed,
    may_read,
)
from sediment.core.error_text import first_line

logger = logging.getLogger(__name__)

blueprint = Blueprint("ui", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/static")

#: Query parameters that start a listing afresh when changed (a cursor belongs to one query).
_POSITION = ("cursor",)


def signed_in(scope: str | None = None) -> auth.Principal:
    """The page's principal; without a session, a redirect to the sign-in page.

    :raises ReportError: 403 when ``scope`` is not among the principal's.
    """
    principal = auth.current_principal()
    if principal is None:
        abort(redirect(url_for("ui.sign_in", next=request.full_path.rstrip("?"))))
    if scope is not None and scope not in principal.scopes:
        raise ReportError(403, "insufficient_scope", f"this page needs a token with the "
                          f"{scope!r} scope; {principal.name!r} has "
                          f"{', '.join(sorted(principal.scopes)) or 'none'}")
    return principal


@blueprint.app_context_processor
def _page_context() -> dict[str, Any]:
    tokens = current_state().tokens
    return {"auth_enabled": tokens.enabled, "principal": auth.current_principal_or_none(),
            "csrf_token": auth.csrf_token}


@blueprint.app_template_filter("cell")
def _cell(value: Any) -> str:
    """A value as a table cell shows it."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = value.astimezone(UTC) if value.tzinfo else value
        return str(value.isoformat(sep=" ", timespec="seconds")).replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return blob_text(value)
    return str(value)


@blueprint.app_template_filter("when")
def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@blueprint.get("/")
def home() -> str:
    principal = signed_in()
    state = current_state()
    databases, healthy = state.health.get()
    policies, ledger_error = None, None
    if "archive" in principal.scopes:
        try:
            policies = policy_overviews(state.settings, _ledger_engine(), state.backlog)
        except sa.exc.SQLAlchemyError as exc:
            logger.warning("home page: the ledger could not be read: %s", first_line(exc))
            ledger_error = "The archive's ledger could not be read; see the service log."
    return render_template("ui/home.html", databases=databases, healthy=healthy,
                           policies=policies, ledger_error=ledger_error,
                           now=datetime.now(UTC))


@blueprint.get("/reports")
def catalog() -> str:
    principal = signed_in()
    state = current_state()
    return render_template(
        "ui/catalog.html",
        reports=[r for r in state.reports.values() if listed(principal, r)],
        tables=[t for t in state.tables.values() if listed(principal, t)],
        pages=lambda report: may_read(principal, report),
        downloads=lambda report: may_read(principal, report, export=True))


@blueprint.get("/reports/<name>")
def report_page(name: str) -> str:
    signed_in()
    return _listing(find_report(name))


@blueprint.get("/tables/<name>")
def table_page(name: str) -> str:
    signed_in()
    return _listing(find_table(name))


def _listing(report: Report) -> str:
    """One page of ``report`` as a table, with its form, sort links, pager and CSV link."""
    authorize(report)
    query = api_query(request.args)
    report_request = build_request(report, args={k: [v] for k, v in query.items()})
    page, next_token = fetch_page(report_request)
    trail = back_trail(request.args)
    here = quote(request.path)  # a table's name may hold spaces, % or #
    sorted_by = report_request.sort
    start = without(query, *_POSITION)

    def sort_link(column: str) -> str:
        descending = not report_request.descending if column == sorted_by else False
        return link(here, {**start, "sort": ("-" if descending else "") + column})

    previous = None
    if trail:
        earlier = trail[-1]
        previous = link(here, {**start, **({} if earlier == FIRST_PAGE else
                                           {"cursor": earlier})}, trail[:-1])
    following = (link(here, {**start, "cursor": next_token},
                      [*trail, query.get("cursor", FIRST_PAGE)])
                 if next_token is not None else None)
    collection = "api.table_csv" if report.collection == "tables" else "api.report_csv"
    csv_query = without(query, "cursor", "limit", "count")
    return render_template(
        "ui/report.html", report=report, page=page, request_=report_request,
        fields=filter_fields(report, query), query=query,
        sortable=set(report.sort_keys_for(report_request.params)),
        sort_link=sort_link, previous=previous, following=following,
        first=link(here, start) if trail else None,
        sources=[(source, link(here, {**start, "source": source}))
                 for source in report.sources],
        count_link=link(here, {**query, "count": "exact"}, trail),
        csv_link=link(url_for(collection, name=report.name), csv_query),
        page_sizes=PAGE_SIZES, position=len(trail) + 1, here=here)


@blueprint.get("/archive")
def archive_dashboard() -> str:
    signed_in("archive")
    state = current_state()
    engine = _ledger_engine()
    policy = request.args.get("policy") or None
    known = [p.name for p in state.settings.policies]
    if policy is not None and policy not in known:
        raise ReportError(404, "unknown_policy", f"there is no policy {policy!r}; "
                          f"configured: {', '.join(known) or 'none'}")
    today = datetime.now(UTC).date()
    chart = stacked_bars(rows_per_day(engine, days=90), today, days=90)
    return render_template("ui/archive.html", chart=chart, runs=recent_runs(engine, 50, policy),
                           policies=known, policy=policy)


# A run id past a 64-bit integer is no run (SQLite's driver raised OverflowError: a 500).
@blueprint.get("/archive/runs/<int(max=9223372036854775807):run_id>")
def archive_run(run_id: int) -> str:
    signed_in("archive")
    found = run_detail(_ledger_engine(), run_id)
    if found is None:
        raise ReportError(404, "unknown_run", f"the ledger has no run {run_id}")
    run, tables = found
    return render_template("ui/run.html", run=run, tables=tables)


@blueprint.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Response | tuple[str, int] | str:
    if not current_state().tokens.enabled:
        return redirect(url_for("ui.home"))
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("ui/sign_in.html", target=target, error=None)
    auth.check_csrf(request.form.get("csrf"))
    principal = auth.sign_in(request.form.get("token", ""))
    if principal is None:
        logger.warning("UI sign-in refused: unknown token (from %s)", request.remote_addr)
        return render_template("ui/sign_in.html", target=target,
                               error="That token is not valid: it is unknown or was revoked."
                               ), 401
    logger.info("UI sign-in as token %r", principal.name)
    return redirect(target)


@blueprint.post("/sign-out")
def sign_out() -> Response:
    auth.check_csrf(request.form.get("csrf"))
    auth.sign_out()
    return redirect(url_for("ui.sign_in"))


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this site only (never ``//host``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("ui.home")
    return target


def _ledger_engine() -> sa.Engine:
    return current_state().report_databases.engines["archive"]
