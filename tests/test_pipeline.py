"""Overlapped batches: batch N+1 is selected while batch N is copied, and copied while N's
deletes run, and nothing else about a batch changes (commit order, counts, recovery after a
failed copy or delete)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from archive import attached, ledger, mover, pipeline
from archive.locks import RunnerLock
from archive.verify import verify_archive
from tests.archiving import assert_invariants, run, seed_shop, small_batches, snapshot
from tests.support import on_statements


def test_batches_overlap_on_postgresql_and_end_in_order(
    app: Flask, primary: sa.Engine, archive: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL batch N+1 is selected before batch N is counted, copies run in the
    copier thread and deletes in the deleter thread, never the caller's; on SQLite (one
    writer) each batch ends before the next starts. Either way every batch is copied before
    it is counted, counted once, in order, and the archive verifies."""
    seed_shop(primary, archive)
    original = snapshot(primary)
    events = small_batches(app)[1]
    steps: list[str] = []
    threads: dict[str, set[str]] = {"copy": set(), "delete": set()}
    record_copy, record_delete = ledger.record_copy, ledger.record_delete
    select_batch = pipeline.select_batch

    def selected(*args: Any, **kwargs: Any) -> Any:
        steps.append("select")
        return select_batch(*args, **kwargs)

    def copied(*args: Any, **kwargs: Any) -> None:
        steps.append("copy")
        threads["copy"].add(threading.current_thread().name)
        record_copy(*args, **kwargs)

    def counted(*args: Any, **kwargs: Any) -> bool:
        steps.append("count")
        return record_delete(*args, **kwargs)

    def on_statement(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("DELETE"):
            threads["delete"].add(threading.current_thread().name)

    monkeypatch.setattr(pipeline, "select_batch", selected)
    monkeypatch.setattr(ledger, "record_copy", copied)
    monkeypatch.setattr(ledger, "record_delete", counted)
    with on_statements(primary, on_statement):
        outcome = run(app, primary, archive, events)
    assert outcome.status == "done" and outcome.batches > 3
    assert steps.count("copy") == steps.count("count") == outcome.batches
    copies = [i for i, step in enumerate(steps) if step == "copy"]
    counts = [i for i, step in enumerate(steps) if step == "count"]
    assert all(copy < count for copy, count in zip(copies, counts, strict=True))
    caller = threading.current_thread().name
    if RunnerLock(primary, events.name).lanes == 2:
        without_copies = [step for step in steps if step != "copy"]
        assert without_copies[:3] == ["select", "select", "count"]  # 2 selected, then 1 counted
        assert threads["copy"] == {f"sediment-{events.name}-copy_0"}
        assert threads["delete"] == {f"sediment-{events.name}-delete_0"}
    else:
        assert steps == ["copy", "count"] * outcome.batches
        assert threads["copy"] == threads["delete"] == {caller}
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


def test_a_failed_copy_abandons_the_next_one_and_the_retry_moves_both_batches(
    app: Flask, primary: sa.Engine, archive: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch 2's copy into ARCHIVE fails once (a dropped connection). On PostgreSQL batch 3
    was selected meanwhile: its copy is abandoned, not run after the failed one, and the
    retry copies batch 2 again first. The run ends ``done``, nothing lost or doubled."""
    seed_shop(primary, archive)
    original = snapshot(primary)
    events = small_batches(app)[1]
    copied: list[Any] = []
    copy, attached_copy = mover.SelectedBatch.copy, attached.copy_batch

    def fail_second(key: Any) -> None:
        copied.append(key)
        if len(copied) == 2:
            raise sa.exc.OperationalError("COPY", None, RuntimeError("injected"))

    def failing_copy(batch: mover.SelectedBatch, *args: Any) -> mover.CopiedBatch:
        fail_second(batch.last_key)
        return copy(batch, *args)

    def failing_attached_copy(*args: Any, **kwargs: Any) -> Any:
        fail_second(kwargs["after_key"])
        return attached_copy(*args, **kwargs)

    monkeypatch.setattr(mover.SelectedBatch, "copy", failing_copy)
    monkeypatch.setattr(attached, "copy_batch", failing_attached_copy)
    outcome = run(app, primary, archive, events)
    assert outcome.status == "done", outcome.error
    assert copied[1] == copied[2]  # batch 2 again, batch 3's copy never started before it
    assert len(copied) == len(set(copied)) + 1  # and no other batch copied twice
    assert_invariants(original, primary, archive, [events])
    found = verify_archive(primary, archive, [events])
    assert found.ok, found.problems
