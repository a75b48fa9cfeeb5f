"""Two SQLite files: SQLite copies the rows itself, from PRIMARY attached to ARCHIVE."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask

from archive.attached import ATTACHED
from tests.archiving import assert_invariants, run, seed_shop, small_batches, snapshot
from tests.support import on_statements


@pytest.mark.sqlite
def test_rows_travel_inside_sqlite_and_keep_their_stored_form(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    """Every copy reads PRIMARY through the attachment, and a value the application stored
    in a form of its own (a timestamp without microseconds) reaches ARCHIVE exactly as
    stored, which a round trip through Python's ``datetime`` would rewrite."""
    seed_shop(primary, archive)
    with primary.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE events SET occurred_at = '2023-01-02 03:04:05' "
            "WHERE id = (SELECT min(id) FROM events)")
        victim = connection.exec_driver_sql("SELECT min(id) FROM events").scalar_one()
    original = snapshot(primary)
    statements: list[str] = []

    def record(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    events = small_batches(app)[1]
    with on_statements(archive, record):
        outcome = run(app, primary, archive, events)
    assert outcome.status == "done" and outcome.batches > 1
    copies = [s for s in statements if s.startswith("INSERT INTO main.events")]
    assert len(copies) == outcome.batches
    assert all(f"FROM {ATTACHED}.events" in s for s in copies)
    with archive.connect() as connection:
        stored = connection.exec_driver_sql(
            "SELECT occurred_at FROM events WHERE id = ?", (victim,)).scalar_one()
    assert stored == "2023-01-02 03:04:05"
    assert_invariants(original, primary, archive, [events])
    with archive.connect() as connection:  # the attachment went with the batch
        databases = {row[1] for row in connection.exec_driver_sql("PRAGMA database_list")}
    assert ATTACHED not in databases
