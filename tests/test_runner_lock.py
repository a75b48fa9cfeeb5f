"""The runner lock survives what a PostgreSQL restart does to it: its connection dies.

``pg_terminate_backend`` on the lock's connection stands in for the restart. A runner that
lost its lock takes it back only if nobody else took it or ran the policy meanwhile;
otherwise it stops ``lock_lost``. Two runners never move rows of one policy, and the exit
status always agrees with the ledger.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from archive.ledger import runs
from archive.locks import LOCK_NAMESPACE, RunnerLock, lock_key
from archive.mover import BatchResult
from reporting.state import state_of
from tests.archiving import NOW, assert_invariants, run, seed_shop, small_batches, snapshot
from tests.support import REPO, settings_of

pytestmark = pytest.mark.postgres


def terminate_lock_holder(primary: sa.Engine, policy: str) -> int:
    """End the backends holding the policy's advisory lock (both halves), as a server
    restart would, and wait until the server has freed it: ``pg_terminate_backend`` only
    signals, and a runner starting at once could still find the lock held."""
    held = sa.text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
                   "AND classid = :namespace AND objid = :key")
    params = {"namespace": LOCK_NAMESPACE, "key": lock_key(policy)}
    with primary.connect() as connection:
        ended = connection.execute(sa.text(
            f"SELECT count(pg_terminate_backend(pid)) FROM ({held.text}) AS holders"),
            params).scalar_one()
        connection.commit()
        deadline = time.monotonic() + 10
        while connection.execute(held, params).first() is not None:
            connection.commit()
            assert time.monotonic() < deadline, "the terminated backends kept the lock"
            time.sleep(0.02)
        connection.commit()
    return int(ended)


def wait_for_a_batch(archive: sa.Engine, seconds: float = 60) -> None:
    """Wait until a run has recorded its first batch in the ledger."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with archive.connect() as connection:
            if connection.execute(sa.select(sa.func.max(runs.c.batches))).scalar():
                return
        time.sleep(0.05)
    pytest.fail(f"no batch recorded within {seconds}s")


def cli_environment(primary: sa.Engine, archive: sa.Engine, **settings: str) -> dict[str, str]:
    """The process environment of an ``archive run`` on these databases."""
    return {**os.environ,
            "SEDIMENT_DATABASE__PRIMARY_URL": primary.url.render_as_string(hide_password=False),
            "SEDIMENT_DATABASE__ARCHIVE_URL": archive.url.render_as_string(hide_password=False),
            "SEDIMENT_POLICY__EVENTS__BATCH_SIZE": "40", "SEDIMENT_SERVICE__LOG_LEVEL": "WARNING",
            **settings}


def run_with(app: Flask, primary: sa.Engine, archive: sa.Engine,
             after_first_batch: Callable[[], None]) -> tuple[str, dict[str, object]]:
    events = small_batches(app, events=60)[1]
    fired = []

    def progress(_result: BatchResult) -> None:
        if not fired:
            fired.append(True)
            after_first_batch()

    report = run(app, primary, archive, events, progress=progress)
    with archive.connect() as connection:
        row = connection.execute(sa.select(runs).where(runs.c.id == report.run_id)).one()
    return report.status, dict(row._mapping)


def test_a_lost_lock_nobody_took_is_taken_back_and_the_run_finishes(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    original = snapshot(primary)
    status, ledger = run_with(app, primary, archive,
                              lambda: terminate_lock_holder(primary, "events"))
    assert (status, ledger["status"]) == ("done", "done")
    assert_invariants(original, primary, archive, small_batches(app)[1:])


def test_a_lost_lock_another_runner_holds_stops_the_run_lock_lost(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    original = snapshot(primary)
    other = RunnerLock(primary, "events")

    def lose_it() -> None:
        assert terminate_lock_holder(primary, "events") == other.lanes  # both halves
        assert other.acquire(), "the terminated backend still held the lock"

    try:
        status, ledger = run_with(app, primary, archive, lose_it)
    finally:
        other.release()
    assert (status, ledger["status"]) == ("lock_lost", "lock_lost")
    assert "another runner holds it" in str(ledger["error"])
    live, archived = snapshot(primary), snapshot(archive, twins=True)
    assert live["events"].keys() | archived["events"].keys() == original["events"].keys()
    # The batch copied while the first one's deletes ran lost its PRIMARY transaction with
    # the lock: its rows may be in both databases, which the next run settles.
    events = small_batches(app, events=60)[1]
    assert run(app, primary, archive, events).status == "done"
    assert_invariants(original, primary, archive, [events])


def test_a_runner_whose_policy_ran_while_it_had_no_lock_stops_lock_lost(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    original = snapshot(primary)
    events = small_batches(app, events=60)[1]
    second: list[str] = []

    def another_runner_meanwhile() -> None:
        terminate_lock_holder(primary, "events")
        second.append(run(app, primary, archive, events).status)

    status, ledger = run_with(app, primary, archive, another_runner_meanwhile)
    assert second == ["done"]
    assert (status, ledger["status"]) == ("lock_lost", "lock_lost")
    assert "interrupted" in str(ledger["error"])
    assert_invariants(original, primary, archive, [events])


def test_a_batch_counted_late_after_another_runner_settled_the_run_is_not_counted_twice(
    app: Flask, primary: sa.Engine, archive: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner pauses between a batch's PRIMARY commit and the ledger's count of it (a
    long throttle, or batch N counted only once N+1 is copied); meanwhile its lock dies and
    another runner settles the run from both databases, deletes included. The late count
    must not add them again: the run stops ``lock_lost`` and the ledger still balances."""
    from archive import ledger

    seed_shop(primary, archive)
    original = snapshot(primary)
    events = small_batches(app, events=60)[1]
    real_record = ledger.record_delete
    second: list[str] = []

    def record_after_a_takeover(*args: object, **kwargs: object) -> bool:
        if not second:
            second.append("running")
            terminate_lock_holder(primary, "events")
            monkeypatch.setattr(ledger, "record_delete", real_record)
            second[0] = run(app, primary, archive, events).status
        return real_record(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger, "record_delete", record_after_a_takeover)
    first = run(app, primary, archive, events)
    assert second == ["done"]
    assert (first.status, first.batches) == ("lock_lost", 0), first
    assert "interrupted" in str(first.error)
    assert_invariants(original, primary, archive, [events])


def test_cli_runners_across_a_dropped_connection_never_both_move_rows(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    """Every connection of a throttled ``archive run`` is terminated mid-run and a second
    run starts: one of them stops (``lock_busy`` or ``lock_lost``, exit 3), and each exit
    code matches what the ledger says."""
    seed_shop(primary, archive)
    original = snapshot(primary)
    env = cli_environment(primary, archive)
    command = [sys.executable, "run_service.py", "archive", "run", "--policy", "events",
               "--now", NOW.isoformat()]
    with primary.connect() as connection:
        started = connection.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
    first = subprocess.Popen(command, cwd=REPO, env={**env, "SEDIMENT_ARCHIVE__THROTTLE": "1s"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_a_batch(archive)
    with primary.connect() as connection:
        ended = connection.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname IN (:primary, :archive) AND pid <> pg_backend_pid() "
            "AND application_name = 'sediment' AND backend_start > :started"),
            {"primary": primary.url.database, "archive": archive.url.database,
             "started": started}).scalar_one()
    assert ended >= 1
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    _, first_err = first.communicate(timeout=120)
    with archive.connect() as connection:
        statuses = dict(connection.execute(sa.select(runs.c.pid, runs.c.status)).all())
    assert sorted(statuses.values()) in (["done", "lock_lost"], ["done", "lock_busy"]), \
        (statuses, first_err, second.stderr)
    second_status = next(s for pid, s in statuses.items() if pid != first.pid)
    for status, code in ((statuses[first.pid], first.returncode),
                         (second_status, second.returncode)):
        assert code == (0 if status == "done" else 3), (status, code, first_err, second.stderr)
    assert "Traceback" not in first_err + second.stderr
    assert_invariants(original, primary, archive, small_batches(app)[1:])


def test_the_lock_of_a_finished_run_is_free_and_no_connection_keeps_it(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    fast = dataclasses.replace(settings_of(app).archive, throttle=timedelta(0))
    assert run(app, primary, archive, small_batches(app)[1], archive_settings=fast).status \
        == "done"
    with primary.connect() as connection:
        held = connection.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :n"),
            {"n": LOCK_NAMESPACE}).scalar_one()
    assert held == 0


def test_a_real_postgresql_restart_mid_run(
    app: Flask, primary: sa.Engine, archive: sa.Engine, request: pytest.FixtureRequest
) -> None:
    """The server itself restarts while ``archive run`` is between batches: the run takes its
    lock back and finishes, its exit code and ledger agree, and nothing is lost."""
    if not request.config.getoption("--full"):
        pytest.skip("restarts the PostgreSQL server: full suite only (--full, as CI runs it)")
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or not os.access("/etc/postgresql", os.W_OK):
        pytest.fail("no local PostgreSQL cluster this test may restart (pg_ctlcluster, root)")
    seed_shop(primary, archive)
    original = snapshot(primary)
    env = cli_environment(primary, archive, SEDIMENT_ARCHIVE__THROTTLE="300ms",
                          SEDIMENT_ARCHIVE__RETRY_ATTEMPTS="6")
    runner = subprocess.Popen(
        [sys.executable, "run_service.py", "archive", "run", "--policy", "events", "--now",
         NOW.isoformat()], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    wait_for_a_batch(archive)
    restarted = subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1],
                                "main", "restart", "-m", "fast"], capture_output=True, text=True,
                               timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    out, err = runner.communicate(timeout=180)
    for engine in state_of(app).report_databases.engines.values():
        engine.dispose()  # the session's report pools hold connections the restart ended
    with archive.connect() as connection:
        status = connection.execute(sa.select(runs.c.status).order_by(runs.c.id.desc())
                                    .limit(1)).scalar_one()
    assert (runner.returncode, status) == (0, "done"), (out, err)
    assert "Traceback" not in err
    assert_invariants(original, primary, archive, small_batches(app)[1:])
