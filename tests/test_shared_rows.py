"""Rows caught in both databases by a batch that died between its two commits.

Merged reports must stay as cheap as a page (never load a run's keys), and the next run
must settle the ledger of the run that died, so that nothing looks in flight for ever.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from archive.ledger import run_tables, runs
from archive.locks import RunnerLock
from archive.runner import RunOutcome
from archive.verify import verify_archive
from reporting.execution import STREAM_CHUNK
from reporting.state import state_of
from sediment.core.databases import PRIMARY
from tests.archiving import assert_invariants, run, seed_shop, small_batches, snapshot
from tests.support import settings_of, walk_pages

BATCH = 400


def left_in_both(primary: sa.Engine) -> int:
    """Rows a run failing in its first batch leaves in both databases: that batch and, on
    PostgreSQL, the next one, copied while the first one's deletes ran."""
    return BATCH * RunnerLock(primary, "events").lanes


def _fail_on(engine: sa.Engine, fragment: str) -> Any:
    def fail(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if fragment in statement:
            raise sa.exc.OperationalError(statement, parameters, RuntimeError("injected"))
    sa.event.listen(engine, "before_cursor_execute", fail)
    return fail


def _run_failing_at(app: Flask, primary: sa.Engine, archive: sa.Engine, engine: sa.Engine,
                    fragment: str) -> RunOutcome:
    """One events run whose first batch fails at the first statement containing
    ``fragment`` (no retry), as a process killed there would leave it."""
    events = small_batches(app, events=BATCH)[1]
    one_try = dataclasses.replace(settings_of(app).archive, retry_attempts=1)
    fail = _fail_on(engine, fragment)
    try:
        report = run(app, primary, archive, events, archive_settings=one_try)
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail)
    assert report.status == "error"
    return report


def _counters(archive: sa.Engine) -> list[tuple[Any, ...]]:
    with archive.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.select(
            run_tables.c.run_id, run_tables.c.copied, run_tables.c.deleted,
            run_tables.c.pending_low).order_by(run_tables.c.run_id))]


@pytest.fixture
def caught(app: Flask, primary: sa.Engine, archive: sa.Engine) -> Iterator[Flask]:
    """A batch of events copied to ARCHIVE and still in PRIMARY (delete failed)."""
    seed_shop(primary, archive)
    _run_failing_at(app, primary, archive, primary, "DELETE")
    in_both = snapshot(primary)["events"].keys() & snapshot(archive, twins=True)["events"].keys()
    assert len(in_both) == left_in_both(primary)
    yield app


def test_a_merged_page_looks_up_only_its_own_rows(caught: Flask, primary: sa.Engine) -> None:
    sources = state_of(caught).report_databases
    seen: list[tuple[sa.Engine, str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append((conn.engine, statement, parameters))

    for engine in sources.engines.values():
        sa.event.listen(engine, "before_cursor_execute", record)
    try:
        body = caught.test_client().get("/api/v1/reports/events?sort=id&limit=10").get_json()
    finally:
        for engine in sources.engines.values():
            sa.event.remove(engine, "before_cursor_execute", record)
    ids = [row["id"] for row in body["rows"]]
    assert ids == sorted(set(ids)) and len(ids) == 10
    with primary.connect() as connection:
        lowest = list(connection.execute(sa.text("SELECT id FROM events ORDER BY id LIMIT 10"))
                      .scalars())
    assert ids == lowest  # rows in both appear once; PRIMARY's are the lowest ids here
    # Never a query by run (which reads every row the run archived) ...
    assert not any("archive_run_id" in statement for _, statement, _ in seen)
    # ... only the page's own ARCHIVE rows are looked up in PRIMARY.
    lookups = [parameters for engine, statement, parameters in seen
               if engine is sources.engines[PRIMARY] and "FROM events" in statement]
    assert lookups, "the page's ARCHIVE rows in the pending range were not checked"
    # A page's worth of keys first (limit and two); past a stretch of shared rows, growing
    # chunks (a few queries, each bounded by the stream's chunk, never by the run).
    sizes = [len(p["keys"] if isinstance(p, dict) else p) for p in lookups]
    assert sizes[0] <= 12 and max(sizes) <= STREAM_CHUNK and len(sizes) <= 5, sizes


def test_exact_counts_and_aggregates_count_rows_in_both_once(caught: Flask) -> None:
    client = caught.test_client()
    body = client.get("/api/v1/reports/events?count=exact&limit=1").get_json()
    assert body["count"] == {"value": 900, "kind": "exact"}
    summary = client.get("/api/v1/reports/events.csv")
    assert summary.headers["X-Row-Count"] == "900"
    assert len(summary.get_data(as_text=True).splitlines()) == 901


def test_the_next_run_settles_a_batch_left_in_both(
    caught: Flask, primary: sa.Engine, archive: sa.Engine,
) -> None:
    (_, copied, deleted, pending), = _counters(archive)
    assert (copied, deleted) == (left_in_both(primary), 0) and pending is not None
    original = snapshot(primary)
    events = small_batches(caught, events=BATCH)[1]
    assert run(caught, primary, archive, events).status == "done"
    for run_id, copied, deleted, pending in _counters(archive):
        assert copied == deleted and pending is None, run_id
    assert_invariants(original, primary, archive, [events])


def test_the_next_run_settles_deletes_the_ledger_never_recorded(
    app: Flask, primary: sa.Engine, archive: sa.Engine,
) -> None:
    """Killed after the PRIMARY commit, before the ledger counted the deletes: the counters
    stayed short for ever, and every merged page paid for it."""
    seed_shop(primary, archive)
    original = snapshot(primary)
    _run_failing_at(app, primary, archive, archive, "SET deleted")
    (_, copied, deleted, pending), = _counters(archive)
    assert (copied, deleted) == (left_in_both(primary), 0) and pending is not None
    events = small_batches(app, events=BATCH)[1]
    unsettled = verify_archive(primary, archive, [events])
    assert any("not settled" in problem for problem in unsettled.problems)
    assert run(app, primary, archive, events).status == "done"
    for run_id, copied, deleted, pending in _counters(archive):
        assert copied == deleted and pending is None, run_id
    assert_invariants(original, primary, archive, [events])


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_both_rows_under_a_key_primary_reused_are_on_the_merged_pages(
        shop: Flask, primary: sa.Engine, archive: sa.Engine, limit: int) -> None:
    """A key PRIMARY reused after archiving (which the archiver refuses to move until the
    row gets another key) puts two rows in one place of a merged page's order. A page
    ending between them gave a cursor after the first, which skipped the second."""
    with archive.connect() as connection:
        reused = connection.execute(sa.text("SELECT min(id) FROM orders")).scalar_one()
    with primary.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO orders (id, customer_id, status, placed_at, closed_at) SELECT :id, "
            "customer_id, 'pending', placed_at, NULL FROM orders WHERE id = "
            "(SELECT max(id) FROM orders)"), {"id": reused})
    window = f"id[gte]={reused - 3}&id[lte]={reused + 3}"
    expected = []
    for engine in (primary, archive):
        with engine.connect() as connection:
            expected += connection.execute(sa.text(
                "SELECT id, customer_id FROM orders WHERE id BETWEEN :low AND :high"),
                {"low": reused - 3, "high": reused + 3}).all()
    assert len(expected) >= 4
    client = shop.test_client()
    for sort in ("id", "-id"):
        rows = walk_pages(client, "/api/v1/tables/orders", f"sort={sort}&{window}", limit)
        assert sorted((row["id"], row["customer_id"]) for row in rows) == sorted(expected)
        assert [row["id"] for row in rows] == sorted((row["id"] for row in rows),
                                                     reverse=sort == "-id")


def test_verify_tells_a_batch_left_in_both_from_rows_primary_holds_again(
        caught: Flask, primary: sa.Engine, archive: sa.Engine, archiver: Any) -> None:
    """Keys a killed batch left in both databases (inside its run's pending window) are for
    the next run to finish; verify no longer says the same of archived rows PRIMARY holds
    again, which no run moves."""
    found = verify_archive(primary, archive, archiver.policies)
    events = [problem for problem in found.problems if problem.startswith("events:")]
    assert len(events) == 1, found.problems
    assert events[0].startswith(f"events: {left_in_both(primary):,} keys in both databases, "
                                "left by a batch that did not finish, e.g. [")
    assert events[0].endswith("run 'archive run' to finish moving them")
    with archive.begin() as connection:  # as while that run is still going
        connection.execute(sa.update(runs).values(status="running"))
    found = verify_archive(primary, archive, archiver.policies)
    assert not any(problem.startswith("events:") for problem in found.problems)
    assert any(check.startswith(f"events: {left_in_both(primary):,} keys in both databases")
               and check.endswith("while a run is going") for check in found.checks)
