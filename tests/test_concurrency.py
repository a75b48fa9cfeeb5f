"""One runner per policy at a time, and no update lost to a concurrent writer."""

from __future__ import annotations

import dataclasses
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from archive.locks import runner_lock
from archive.runner import RunOutcome
from tests.archiving import NOW, assert_invariants, run, seed_shop, small_batches, snapshot
from tests.support import settings_of


def test_two_runners_started_together_exactly_one_moves_rows(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    original = snapshot(primary)
    events = small_batches(app, events=20)[1]
    slow = dataclasses.replace(settings_of(app).archive, throttle=timedelta(milliseconds=20))
    start = threading.Barrier(2)
    reports: list[RunOutcome] = []

    def runner() -> None:
        start.wait()
        reports.append(run(app, primary, archive, events, archive_settings=slow))

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(r.status for r in reports) == ["done", "lock_busy"]
    busy = next(r for r in reports if r.status == "lock_busy")
    assert busy.rows == 0
    assert_invariants(original, primary, archive, [events])
    with archive.connect() as connection:
        statuses = connection.execute(sa.text("SELECT status FROM archive_runs ORDER BY status"))
        assert list(statuses.scalars()) == ["done", "lock_busy"]


def test_lock_is_released_when_the_run_ends(app: Flask, primary: sa.Engine) -> None:
    with runner_lock(primary, "orders") as first:
        assert first
        with runner_lock(primary, "orders") as second:
            assert not second
        with runner_lock(primary, "events") as other_policy:
            assert other_policy
    with runner_lock(primary, "orders") as again:
        assert again


@pytest.mark.postgres
def test_a_writer_holding_an_aged_order_loses_no_update(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    """SKIP LOCKED leaves the order the application holds; its update reaches the archive."""
    seed_shop(primary, archive)
    orders = small_batches(app)[0]
    with primary.connect() as connection:
        victim = connection.execute(
            sa.select(*orders.key).where(orders.aged(orders.cutoff(NOW))).order_by(*orders.key)
            .offset(5).limit(1)).scalar_one()
    writer = primary.connect()
    transaction = writer.begin()
    writer.execute(sa.text("SELECT id FROM orders WHERE id = :id FOR UPDATE"), {"id": victim})
    writer.execute(sa.text("UPDATE order_items SET quantity = 99 WHERE order_id = :id"),
                   {"id": victim})
    try:
        first = run(app, primary, archive, orders)
        assert first.status == "done"
        assert victim in snapshot(primary)["orders"], "a locked order must be skipped"
    finally:
        transaction.commit()
        writer.close()
    live, archived = snapshot(primary), snapshot(archive, twins=True)
    original = {name: {**archived[name], **live[name]} for name in live}
    second = run(app, primary, archive, orders)
    assert second.status == "done" and second.moved["orders"] == 1
    archived_items = snapshot(archive, twins=True)["order_items"]
    quantities = {row[3] for row in archived_items.values() if row[1] == victim}  # quantity
    assert quantities == {99}
    assert_invariants(original, primary, archive, [orders])


@pytest.mark.postgres
def test_a_writer_holding_a_child_row_skips_its_order_not_the_run(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    """``SELECT ... FROM payments ... FOR UPDATE`` held by an application: its order stays
    for a later run, counted ``skipped_locked``, and everything else moves."""
    from archive.verify import verify_archive

    seed_shop(primary, archive)
    orders = small_batches(app)[0]
    with primary.connect() as connection:
        payment, victim = connection.execute(sa.text(
            "SELECT p.id, p.order_id FROM payments p JOIN orders o ON o.id = p.order_id "
            "WHERE o.status IN ('closed', 'cancelled') AND o.closed_at < :cutoff "
            "ORDER BY o.id LIMIT 1"), {"cutoff": orders.cutoff(NOW)}).one()
    quick = dataclasses.replace(settings_of(app).archive, retry_backoff=timedelta(0))
    writer = primary.connect()
    transaction = writer.begin()
    writer.execute(sa.text("SELECT id FROM payments WHERE id = :id FOR UPDATE"), {"id": payment})
    try:
        first = run(app, primary, archive, orders, archive_settings=quick)
        assert first.status == "done", first.error
        assert first.skipped_locked == 1 and first.moved["orders"] > 0
        assert victim in snapshot(primary)["orders"]
        report = verify_archive(primary, archive, [orders])
        assert report.ok, report.problems
        assert any("skipped because a writer held them" in line for line in report.checks)
    finally:
        transaction.commit()
        writer.close()
    with archive.connect() as connection:
        skipped = connection.execute(sa.text(
            "SELECT skipped_locked FROM archive_run_tables WHERE table_name = 'orders'"
        )).scalar_one()
    assert skipped == 1
    second = run(app, primary, archive, orders, archive_settings=quick)
    assert second.status == "done" and second.moved["orders"] == 1
    assert victim in snapshot(archive, twins=True)["orders"]
    assert verify_archive(primary, archive, [orders]).ok
