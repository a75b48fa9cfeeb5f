"""Overlapped batches: batch N's deletes run while batch N+1 is copied, and nothing else
about a batch changes (commit order, counts, recovery after a failed delete)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from archive import ledger
from archive.locks import RunnerLock
from archive.verify import verify_archive
from tests.archiving import assert_invariants, run, seed_shop, small_batches, snapshot
from tests.support import on_statements


def test_batches_overlap_on_postgresql_and_end_in_order(
    app: Flask, primary: sa.Engine, archive: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL batch N is counted only after batch N+1 was copied, its deletes ran on
    another thread than the copies; on SQLite (one writer) each batch ends before the next
    starts. Either way every batch is counted once, in order, and the archive verifies."""
    seed_shop(primary, archive)
    original = snapshot(primary)
    events = small_batches(app)[1]
    steps: list[str] = []
    delete_threads: set[str] = set()
    record_copy, record_delete = ledger.record_copy, ledger.record_delete

    def copied(*args: Any, **kwargs: Any) -> None:
        steps.append("copy")
        record_copy(*args, **kwargs)

    def counted(*args: Any, **kwargs: Any) -> bool:
        steps.append("delete")
        return record_delete(*args, **kwargs)

    def on_statement(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("DELETE"):
            delete_threads.add(threading.current_thread().name)

    monkeypatch.setattr(ledger, "record_copy", copied)
    monkeypatch.setattr(ledger, "record_delete", counted)
    with on_statements(primary, on_statement):
        outcome = run(app, primary, archive, events)
    assert outcome.status == "done" and outcome.batches > 3
    assert steps.count("copy") == steps.count("delete") == outcome.batches
    if RunnerLock(primary, events.name).lanes == 2:
        assert steps[:3] == ["copy", "copy", "delete"]  # batch 1 counted after 2 was copied
        assert delete_threads and all(n.startswith("sediment-") for n in delete_threads)
        assert threading.current_thread().name not in delete_threads
    else:
        assert steps == ["copy", "delete"] * outcome.batches
    assert_invariants(original, primary, archive, [events])


def test_a_failed_delete_sends_the_cursor_back_and_the_retry_moves_both_batches(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    """Batch 2's deletes fail once (a dropped connection): batch 3, already copied on
    PostgreSQL, is rolled back in PRIMARY, and the retry moves both from batch 1's last key,
    taking over their ARCHIVE copies. The run ends ``done``, nothing lost or doubled, and
    the ledger balances."""
    seed_shop(primary, archive)
    original = snapshot(primary)
    events = small_batches(app)[1]
    deletes = 0

    def fail_second_delete(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        nonlocal deletes
        if statement.lstrip().upper().startswith("DELETE FROM EVENTS"):
            deletes += 1
            if deletes == 2:
                raise sa.exc.OperationalError(statement, None, RuntimeError("injected"))

    with on_statements(primary, fail_second_delete):
        outcome = run(app, primary, archive, events)
    assert outcome.status == "done", outcome.error
    assert deletes > 2
    assert_invariants(original, primary, archive, [events])
    found = verify_archive(primary, archive, [events])
    assert found.ok, found.problems
