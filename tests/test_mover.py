"""The paired-transaction batch and the run: invariants, limits, conflicts, failures."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from archive.locks import RunnerLock
from archive.mover import same_rows
from archive.runner import RunLimits, plan_run
from archive.verify import verify_archive
from sediment.core.databases import Engines
from sediment.core.schema.archive import archived_tables
from sediment.core.schema.primary import Event
from tests.archiving import (
    NOW,
    assert_invariants,
    run,
    seed_shop,
    small_batches,
    snapshot,
)
from tests.support import empty_all_tables, settings_of


def test_runs_move_every_aged_row_once_and_nothing_else(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    original = snapshot(primary)
    policies = small_batches(app)
    plans = {p.name: plan_run(primary, p, NOW).counts for p in policies}
    assert plans["orders"]["orders"] > 20 and plans["events"]["events"] > 200
    for policy in policies:
        report = run(app, primary, archive, policy)
        assert report.status == "done", report.error
        assert report.moved == plans[policy.name]
        assert report.batches > 1
    assert_invariants(original, primary, archive, policies)
    for policy in policies:
        again = run(app, primary, archive, policy)
        assert again.status == "done" and again.rows == 0


def test_children_travel_with_their_parent(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    orders = small_batches(app)[0]
    run(app, primary, archive, orders)
    with archive.connect() as connection:
        archived_orders = set(connection.execute(sa.select(archived_tables["orders"].c.id))
                              .scalars())
        for child in ("order_items", "payments"):
            parents = set(connection.execute(sa.select(archived_tables[child].c.order_id))
                          .scalars())
            assert parents <= archived_orders
    with primary.connect() as connection:
        for child in ("order_items", "payments"):
            orphans = connection.execute(sa.text(
                f"SELECT count(*) FROM {child} c LEFT JOIN orders o ON o.id = c.order_id "
                "WHERE o.id IS NULL")).scalar_one()
            assert orphans == 0


def test_dry_run_writes_nothing(app: Flask, primary: sa.Engine, archive: sa.Engine) -> None:
    seed_shop(primary, archive)
    before = snapshot(primary), snapshot(archive, twins=True)
    for policy in small_batches(app):
        plan = plan_run(primary, policy, NOW)
        assert plan.cutoff == NOW - policy.older_than
        assert plan.counts[policy.root.name] > 0
    assert (snapshot(primary), snapshot(archive, twins=True)) == before
    with archive.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM archive_runs")).scalar() == 0


def test_max_rows_stops_after_that_many_roots(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    events = small_batches(app)[1]
    report = run(app, primary, archive, events, limits=RunLimits(max_rows=150))
    assert report.status == "max_rows"
    assert report.moved == {"events": 150}
    rest = run(app, primary, archive, events)
    assert rest.status == "done" and rest.rows > 0


def test_max_runtime_and_stop_request_end_cleanly(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    import threading

    seed_shop(primary, archive)
    events = small_batches(app)[1]
    timed = run(app, primary, archive, events, limits=RunLimits(max_runtime=timedelta(0)))
    assert timed.status == "max_runtime" and timed.rows == 0
    stop = threading.Event()
    stopped = run(app, primary, archive, events, stop=stop,
                  progress=lambda result: stop.set())
    # The batch that asked, and on PostgreSQL the one copied while its deletes ran: a
    # batch already in ARCHIVE is finished, not left in both databases.
    assert stopped.status == "stop_requested"
    assert stopped.batches == RunnerLock(primary, "events").lanes
    assert verify_archive(primary, archive, [events]).ok


def test_rows_not_yet_aged_stay(app: Flask, primary: sa.Engine, archive: sa.Engine) -> None:
    seed_shop(primary, archive)
    events = small_batches(app)[1]
    cutoff = NOW - events.older_than
    young = sa.select(sa.func.count()).where(Event.occurred_at >= cutoff)
    with primary.connect() as connection:
        young_before = connection.execute(young).scalar_one()
    run(app, primary, archive, events)
    with primary.connect() as connection:
        assert connection.execute(young).scalar_one() == young_before > 0
        total = connection.execute(sa.select(sa.func.count()).select_from(Event)).scalar_one()
    assert total == young_before


def test_stale_archive_copy_is_overwritten_by_primary(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    """A copy left by a run killed before its delete is replaced by PRIMARY's newer row."""
    seed_shop(primary, archive)
    events = small_batches(app)[1]
    with primary.connect() as connection:
        victim = connection.execute(sa.text(
            "SELECT id FROM events ORDER BY occurred_at LIMIT 1")).scalar_one()
    fail_deletes = _fail_first(primary, "DELETE")
    try:
        failed = run(app, primary, archive, events,
                     archive_settings=dataclasses.replace(settings_of(app).archive,
                                                          retry_attempts=1))
    finally:
        sa.event.remove(primary, "before_cursor_execute", fail_deletes)
    assert failed.status == "error"
    in_both = snapshot(archive, twins=True)["events"]
    assert victim in in_both and victim in snapshot(primary)["events"]
    with primary.begin() as connection:
        connection.execute(sa.text("UPDATE events SET detail = 'edited after the crash' "
                                   "WHERE id = :id"), {"id": victim})
    original = snapshot(primary)
    done = run(app, primary, archive, events)
    assert done.status == "done"
    assert snapshot(archive, twins=True)["events"][victim][-1] == "edited after the crash"
    assert_invariants(original, primary, archive, [events])


def _fail_first(engine: sa.Engine, verb: str):  # type: ignore[no-untyped-def]
    def fail(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith(verb):
            raise sa.exc.OperationalError(statement, parameters, RuntimeError("injected"))
    sa.event.listen(engine, "before_cursor_execute", fail)
    return fail


def test_verification_mismatch_stops_the_run_and_deletes_nothing(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    events = small_batches(app)[1]
    before = snapshot(primary)

    def tamper(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        # Right after the batch lands: the upsert (from the attached PRIMARY when both are
        # SQLite files), or the savepoint around PostgreSQL's COPY.
        if any(f"INSERT INTO {twin} " in statement for twin in ("events", "main.events")) \
                or statement.startswith("RELEASE SAVEPOINT"):
            cursor.execute("UPDATE events SET detail = 'tampered' WHERE id = "
                           "(SELECT min(id) FROM events)")

    sa.event.listen(archive, "after_cursor_execute", tamper)
    try:
        report = run(app, primary, archive, events)
    finally:
        sa.event.remove(archive, "after_cursor_execute", tamper)
    assert report.status == "error"
    assert "verification failed for table 'events'" in (report.error or "")
    assert snapshot(primary) == before
    assert snapshot(archive, twins=True)["events"] == {}


@pytest.mark.parametrize(("found", "expected", "same"), [
    (["b", "a"], ["a", "b"], True),             # order does not matter
    (["a"], ["a", "b"], False),                 # a row missing
    (["a", "b", "c"], ["a", "b"], False),       # a row more
    (["a", "a"], ["a", "b"], False),            # as many rows, one twice, one missing
    (["a", "c"], ["a", "b"], False),            # as many rows, one changed
    (["a", "a", "b"], ["a", "b", "a"], True),   # repeated rows are counted
    (["a", "b", "b"], ["a", "b", "a"], False),
    ([(1, "x"), (2, None)], [(2, None), (1, "x")], True),  # the ORM transfer's tuples
], ids=lambda value: repr(value))
def test_verification_compares_rows_as_multisets(found: list[object], expected: list[object],
                                                 same: bool) -> None:
    assert same_rows(found, expected) is same


@pytest.mark.parametrize("policy_index", [0, 1], ids=["orders", "events"])
def test_failure_at_every_statement_leaves_databases_consistent(
    app: Flask, engines: Engines, policy_index: int
) -> None:
    """Inject a failure at statement N, for every N of a small run; the next run completes."""
    primary, archive = engines.primary, engines.archive
    plan = dataclasses.replace(
        __import__("tests.archiving", fromlist=["SMALL_SHOP"]).SMALL_SHOP,
        customers=5, orders=30, events=80)
    policy = small_batches(app, orders=4, events=9)[policy_index]
    one_try = dataclasses.replace(settings_of(app).archive, retry_attempts=1)
    counter = {"n": 0, "fail_at": 0}
    failed: list[str] = []

    executed: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        counter["n"] += 1
        if counter["n"] == counter["fail_at"]:
            failed.append(statement)
            raise sa.exc.OperationalError(statement, parameters, RuntimeError("injected"))
        if not failed or counter["n"] < counter["fail_at"]:
            executed.append(statement)  # what ran before the failure

    statements = None
    n = 1
    while statements is None or n <= statements:
        empty_all_tables(engines)
        seed_shop(primary, archive, plan)
        original = snapshot(primary)
        counter.update(n=0, fail_at=n)
        executed.clear()
        failed.clear()
        for engine in (primary, archive):
            sa.event.listen(engine, "before_cursor_execute", count)
        try:
            status = run(app, primary, archive, policy, archive_settings=one_try).status
        except sa.exc.SQLAlchemyError:
            status = "raised"  # the ledger itself could not be written: surfaced, not hidden
        finally:
            for engine in (primary, archive):
                sa.event.remove(engine, "before_cursor_execute", count)
        if counter["n"] < n:  # the run finished before reaching statement n
            statements = n - 1
            assert status == "done"
        elif "pg_locks" in failed[-1] or any(st.startswith("UPDATE archive_runs SET status")
                                               for st in executed):
            # The check of the runner lock before a batch: a failing connection there means
            # the lock went with it, and the runner takes it again on a new one. After the
            # ledger recorded the end: ANALYZE refreshes statistics, and a failed release
            # discards the lock's connection, which releases it too.
            assert status == "done", failed[-1]
        else:
            assert status in ("error", "raised"), failed[-1]
        final = run(app, primary, archive, policy)
        assert final.status == "done", final.error
        assert_invariants(original, primary, archive, [policy])
        if statements is None and n > 2000:
            pytest.fail("run never finished")
        n += 1
    assert statements is not None and statements > 10


def test_dropped_connection_retries_the_whole_batch(
    app: Flask, primary: sa.Engine, archive: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection lost mid-batch (here: at the first delete) is retried, and succeeds."""
    seed_shop(primary, archive)
    original = snapshot(primary)
    events = small_batches(app)[1]
    fail_once = {"armed": True}

    def drop(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if fail_once["armed"] and statement.lstrip().upper().startswith("DELETE"):
            fail_once["armed"] = False
            raise sa.exc.OperationalError(statement, parameters, RuntimeError("connection lost"))

    quick = dataclasses.replace(settings_of(app).archive, retry_backoff=timedelta(milliseconds=10))
    sa.event.listen(primary, "before_cursor_execute", drop)
    try:
        report = run(app, primary, archive, events, archive_settings=quick)
    finally:
        sa.event.remove(primary, "before_cursor_execute", drop)
    assert report.status == "done"
    assert "retry 1 of 2" in caplog.text
    assert_invariants(original, primary, archive, [events])
