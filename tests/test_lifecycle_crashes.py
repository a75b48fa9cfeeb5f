"""Kill the real ``archive run`` of a purge policy, the real ``archive expire`` and the
real ``archive restore`` at every point of a batch, many times; a completed run then leaves
exactly the rows it should, held rows untouched, and a ledger that adds up.

Quick mode kills 3 times per point and backend; ``--full`` 10 times (each kill restarts
the CLI: 25, as the archive's own crash tests do, would double the CI run for little more
coverage of one-transaction batches).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from archive.holds import add_holds
from archive.ledger import run_tables, runs
from archive.restore import RestoreRequest
from archive.sweep import expiry_of
from archive.verify import verify_archive
from reporting.app import create_app
from sediment.core.migrations import upgrade_all
from tests.archiving import NOW, Snapshot, seed_shop, snapshot
from tests.support import (
    REPO,
    DatabaseFactory,
    archiver_of,
    empty_all_tables,
    engines_of,
    make_settings,
)
from tests.test_crashes import crash_once, wait_for_lock
from tests.test_lifecycle import CHILDREN, Shop, busy_customer, children_of, subject_rows

FULL_KILLS = 10
POINTS = {"purge": ("before_delete", "before_delete_commit", "after_delete_commit", "random"),
          "expire": ("before_delete", "before_delete_commit", "random")}


@pytest.mark.parametrize(("kind", "point"), [(kind, point) for kind, points in POINTS.items()
                                             for point in points])
def test_sweeps_killed_anywhere_delete_exactly_their_rows(
        databases: DatabaseFactory, kind: str, point: str,
        request: pytest.FixtureRequest) -> None:
    wanted = FULL_KILLS if request.config.getoption("--full") else 3
    overrides = {"SEDIMENT_POLICY__ORDERS__BATCH_SIZE": "3",
                 **({"SEDIMENT_POLICY__ORDERS__MODE": "purge"} if kind == "purge"
                    else {"SEDIMENT_POLICY__ORDERS__RETENTION": "500d"})}
    urls = databases.pair(f"sweep_{kind}_{point}")
    app = create_app(make_settings(*urls, **overrides))
    env = {**os.environ, "SEDIMENT_DATABASE__PRIMARY_URL": urls[0],
           "SEDIMENT_DATABASE__ARCHIVE_URL": urls[1], "SEDIMENT_SERVICE__LOG_LEVEL": "WARNING",
           "CRASH_DRIVER_DELETES": "primary" if kind == "purge" else "archive",
           "CRASH_DRIVER_COMMAND": "run" if kind == "purge" else "expire", **overrides}
    if point == "random":
        env["SEDIMENT_ARCHIVE__THROTTLE"] = "15ms"
    engines = engines_of(app)
    upgrade_all(engines)
    archiver = archiver_of(app)
    policy = archiver.policy("orders")
    rng = random.Random(f"{kind}-{point}-{databases.backend}")
    killed = rounds = 0
    while killed < wanted:
        rounds += 1
        assert rounds <= 2 * wanted, "runs keep finishing before the crash point"
        empty_all_tables(engines)
        seed_shop(engines.primary, engines.archive)
        if kind == "expire":
            assert archiver.run("orders", NOW).status == "done"
        side = engines.primary if kind == "purge" else engines.archive
        table = policy.root if kind == "purge" else policy.archive_root
        expiry = expiry_of(policy, NOW)
        condition = policy.aged(policy.cutoff(NOW)) if kind == "purge" else (
            expiry.condition if expiry else sa.false())
        with side.connect() as connection:
            going = sorted(connection.execute(sa.select(table.c.id).where(condition)).scalars())
        before = {"primary": snapshot(engines.primary),
                  "archive": snapshot(engines.archive, twins=True)}
        rows = before["primary" if kind == "purge" else "archive"]
        held_item = min(children_of(rows, "order_items", {going[5]}))
        add_holds(engines.archive, "orders", [(going[2],)], reason="r", held_by="t", now=NOW)
        add_holds(engines.archive, "order_items", [(held_item,)], reason="r", held_by="t",
                  now=NOW)
        gone = set(going) - {going[2], going[5]}
        while killed < wanted:
            code = crash_once(point, rng, env, ["--policy", "orders"])
            if code == 0:
                break
            assert code == -9, f"the CLI exited {code} instead of being killed"
            killed += 1
        wait_for_lock(engines.primary, "orders")
        finish = archiver.run if kind == "purge" else archiver.expire
        outcome = finish("orders", NOW)
        assert outcome is not None and outcome.status == "done"
        assert_swept(engines, kind, before, gone)
        assert_ledger(engines.archive, kind, rows, gone)
        assert verify_archive(engines.primary, engines.archive, archiver.policies).ok
    engines.dispose()


def assert_swept(engines: object, kind: str, before: dict[str, Snapshot],
                 gone: set[int]) -> None:
    """The swept database lost exactly the roots ``gone`` and their children, every other
    row (held ones included) is unchanged, and the other database is untouched."""
    swept, other = ("primary", "archive") if kind == "purge" else ("archive", "primary")
    now = {"primary": snapshot(engines.primary),  # type: ignore[attr-defined]
           "archive": snapshot(engines.archive, twins=True)}  # type: ignore[attr-defined]
    assert now[other] == before[other], f"{kind} changed {other}"
    expected = {name: dict(rows) for name, rows in before[swept].items()}
    for key in gone:
        del expected["orders"][key]
    for table in CHILDREN:
        for key in children_of(before[swept], table, gone):
            del expected[table][key]
    assert now[swept] == expected


def assert_ledger(archive: sa.Engine, kind: str, rows: Snapshot, gone: set[int]) -> None:
    """No run is left ``running``. An expiry counts exactly what it deleted (and the archive
    run that had copied it counts it removed); a purge killed between its PRIMARY commit and
    its count may undercount, never overcount."""
    counts = {"orders": len(gone),
              **{table: len(children_of(rows, table, gone)) for table in CHILDREN}}
    with archive.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(runs).where(
            runs.c.status == "running")).scalar_one() == 0
        deleted = dict(connection.execute(
            sa.select(run_tables.c.table_name, sa.func.sum(run_tables.c.deleted))
            .join(runs, runs.c.id == run_tables.c.run_id)
            .where(runs.c.kind == kind).group_by(run_tables.c.table_name)).all())
        removed = dict(connection.execute(
            sa.select(run_tables.c.table_name, sa.func.sum(run_tables.c.removed))
            .group_by(run_tables.c.table_name)).all())
    if kind == "expire":
        assert {name: deleted[name] for name in counts} == counts
        assert {name: removed[name] for name in counts} == counts
    else:
        assert all(deleted[name] <= counts[name] for name in counts), (deleted, counts)


RESTORE_POINTS = ("before_insert_commit", "before_delete", "before_delete_commit", "random")


@pytest.mark.parametrize("point", RESTORE_POINTS)
def test_restores_killed_anywhere_lose_and_duplicate_nothing(
        databases: DatabaseFactory, point: str, request: pytest.FixtureRequest) -> None:
    """Kill ``archive restore --run N`` at every point of a batch; a completed restore then
    leaves every row of the run back in PRIMARY, value for value, and none in ARCHIVE."""
    wanted = FULL_KILLS if request.config.getoption("--full") else 3
    overrides = {"SEDIMENT_POLICY__ORDERS__BATCH_SIZE": "3"}
    urls = databases.pair(f"restore_{point}")
    app = create_app(make_settings(*urls, **overrides))
    env = {**os.environ, "SEDIMENT_DATABASE__PRIMARY_URL": urls[0],
           "SEDIMENT_DATABASE__ARCHIVE_URL": urls[1], "SEDIMENT_SERVICE__LOG_LEVEL": "WARNING",
           "CRASH_DRIVER_DELETES": "archive", "CRASH_DRIVER_COMMAND": "restore", **overrides}
    if point == "random":
        env["SEDIMENT_ARCHIVE__THROTTLE"] = "15ms"
    engines = engines_of(app)
    upgrade_all(engines)
    archiver = archiver_of(app)
    rng = random.Random(f"restore-{point}-{databases.backend}")
    killed = rounds = 0
    while killed < wanted:
        rounds += 1
        assert rounds <= 2 * wanted, "restores keep finishing before the crash point"
        empty_all_tables(engines)
        seed_shop(engines.primary, engines.archive)
        original = snapshot(engines.primary)
        archived_by = archiver.run("orders", NOW)
        assert archived_by.status == "done" and archived_by.run_id is not None
        moved = dict(archived_by.moved)
        while killed < wanted:
            code = crash_once(point, rng, env, ["--run", str(archived_by.run_id)])
            if code == 0:
                break
            assert code == -9, f"the CLI exited {code} instead of being killed"
            killed += 1
        wait_for_lock(engines.primary, "orders")
        outcome = archiver.restore(RestoreRequest(run=archived_by.run_id), NOW)
        assert outcome.status == "done", outcome.error
        assert snapshot(engines.primary) == original
        assert all(not rows for name, rows in snapshot(engines.archive, twins=True).items()
                   if name != "events")
        with engines.archive.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(runs).where(
                runs.c.status == "running")).scalar_one() == 0
            restored = dict(connection.execute(
                sa.select(run_tables.c.table_name, sa.func.sum(run_tables.c.deleted))
                .join(runs, runs.c.id == run_tables.c.run_id)
                .where(runs.c.kind == "restore").group_by(run_tables.c.table_name)).all())
            removed = dict(connection.execute(
                sa.select(run_tables.c.table_name, run_tables.c.removed)
                .where(run_tables.c.run_id == archived_by.run_id)).all())
        assert restored == moved and removed == moved
        assert verify_archive(engines.primary, engines.archive, archiver.policies).ok
    engines.dispose()


ERASE_CASES = [("archive", "before_delete"), ("archive", "before_delete_commit"),
               ("archive", "after_delete_commit"), ("primary", "before_delete"),
               ("primary", "before_delete_commit"), ("archive", "random")]


@pytest.mark.parametrize(("side", "point"), ERASE_CASES)
def test_erasures_killed_anywhere_finish_when_run_again(
        databases: DatabaseFactory, side: str, point: str,
        request: pytest.FixtureRequest) -> None:
    """Kill ``archive erase`` in either database's part of the procedure; erasing the same
    subject again leaves nothing of it in either database and every other row as it was."""
    rounds = 5 if request.config.getoption("--full") else 2
    urls = databases.pair(f"erase_{side}_{point}")
    app = create_app(make_settings(*urls))
    env = {**os.environ, "SEDIMENT_DATABASE__PRIMARY_URL": urls[0],
           "SEDIMENT_DATABASE__ARCHIVE_URL": urls[1], "SEDIMENT_SERVICE__LOG_LEVEL": "WARNING",
           "CRASH_DRIVER_DELETES": side, "CRASH_DRIVER_COMMAND": "erase"}
    engines = engines_of(app)
    upgrade_all(engines)
    archiver = archiver_of(app)
    shop = Shop(archiver, urls)
    rng = random.Random(f"erase-{side}-{point}-{databases.backend}")
    for _ in range(rounds):
        empty_all_tables(engines)
        seed_shop(engines.primary, engines.archive)
        archiver.run("orders", NOW)
        archiver.run("events", NOW)
        customer = busy_customer(shop)
        subject = subject_rows(shop, customer)
        before = (snapshot(engines.primary), snapshot(engines.archive, twins=True))
        args = [sys.executable, "-m", "tests.crash_driver", point, "1", "--table", "customers",
                "--key", str(customer), "--now", NOW.isoformat()]
        if point == "random":
            args[3:5] = ["none", "0"]
            process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3, 1.2))
            process.kill()
            assert process.wait(timeout=60) in (0, -9)
        else:
            killed = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                                    timeout=120)
            assert killed.returncode == -9, killed.stderr[-2000:]
        wait_for_lock(engines.primary, "erase")
        assert archiver.erase("customers", str(customer), NOW).status == "done"
        assert not any(subject_rows(shop, customer).values())
        after = (snapshot(engines.primary), snapshot(engines.archive, twins=True))
        for was, now in zip(before, after, strict=True):
            for table, rows in was.items():
                assert now[table].items() <= rows.items(), table
        assert sum(len(was[table]) - len(now[table]) for was, now in zip(before, after,
                                                                          strict=True)
                   for table in was) == sum(count for place, count in subject.items()
                                            if place != "primary:customers")
        with engines.archive.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(runs).where(
                runs.c.status == "running")).scalar_one() == 0
        assert verify_archive(engines.primary, engines.archive, archiver.policies).ok
    engines.dispose()
