"""The archive's lifecycle: purge policies, retention (expiry) and legal holds, on both
backends, through the archiver and through the real command line."""

from __future__ import annotations

import argparse
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from archive.archiver import Archiver
from archive.cli import cmd_status
from archive.erase import ErasureRefused, erase, plan_erasure
from archive.holds import add_holds, list_holds, release_holds
from archive.keys import parse_key
from archive.ledger import run_tables, runs
from archive.policy import ArchivePolicy
from archive.restore import RestoreRequest
from archive.runner import plan_run
from archive.sweep import expiry_of, plan_sweep, purge_of
from archive.verify import verify_archive
from reporting.app import create_app
from sediment.core.databases import Engines
from sediment.core.migrations import upgrade_all
from sediment.core.schema.archive import archived_tables
from sediment.core.settings import Retention, SettingsError, parse_retention
from sediment.service import resolve_policies_of
from tests.archiving import NOW, Snapshot, normalise, seed_shop, snapshot
from tests.support import (
    DatabaseFactory,
    archiver_of,
    engines_of,
    env_for,
    make_settings,
    own_schema,
    run_cli,
)

CHILDREN = ("order_items", "payments")


@dataclass
class Shop:
    """A seeded demo shop on a fresh pair of databases, with its archiver."""

    archiver: Archiver
    urls: tuple[str, str]

    @property
    def engines(self) -> Engines:
        return self.archiver.engines

    def policy(self, name: str) -> ArchivePolicy:
        return self.archiver.policy(name)

    def order_ids(self, engine: sa.Engine, condition: sa.ColumnElement[bool]) -> list[int]:
        table = self.policy("orders").root if engine is self.engines.primary \
            else self.policy("orders").archive_root
        with engine.connect() as connection:
            return sorted(connection.execute(sa.select(table.c.id).where(condition)).scalars())


@pytest.fixture
def make_shop(databases: DatabaseFactory) -> Iterator[Any]:
    made: list[Engines] = []

    def make(label: str, **overrides: str) -> Shop:
        urls = databases.pair(label)
        app = create_app(make_settings(*urls, **overrides))
        engines = engines_of(app)
        upgrade_all(engines)
        seed_shop(engines.primary, engines.archive)
        made.append(engines)
        return Shop(archiver_of(app), urls)

    yield make
    for engines in made:
        engines.dispose()


def children_of(rows: Snapshot, table: str, orders: set[int]) -> set[int]:
    position = [c.name for c in archived_tables[table].columns].index("order_id")
    return {key for key, row in rows[table].items() if row[position] in orders}


def ledger_rows(engine: sa.Engine, run_id: int) -> dict[str, tuple[int, int, int]]:
    """A run's per-table ``(copied, deleted, removed)``."""
    with engine.connect() as connection:
        return {row.table_name: (row.copied, row.deleted, row.removed) for row in
                connection.execute(sa.select(run_tables).where(run_tables.c.run_id == run_id))}


def test_purge_deletes_aged_roots_with_children_copies_nothing_and_keeps_held_rows(
        make_shop: Any) -> None:
    shop = make_shop("purge", SEDIMENT_POLICY__ORDERS__MODE="purge",
                     SEDIMENT_POLICY__ORDERS__BATCH_SIZE="7")
    primary, archive = shop.engines.primary, shop.engines.archive
    policy = shop.policy("orders")
    aged = shop.order_ids(primary, policy.aged(policy.cutoff(NOW)))
    assert len(aged) > 20
    before = snapshot(primary)
    item_of_second = min(children_of(before, "order_items", {aged[1]}))
    add_holds(archive, "orders", [(aged[0],)], reason="audit", held_by="t", now=NOW)
    add_holds(archive, "order_items", [(item_of_second,)], reason="dispute", held_by="t",
              now=NOW)
    plan = plan_sweep(shop.engines, purge_of(policy, NOW))
    assert plan.held == 2

    outcome = shop.archiver.run("orders", NOW)

    assert (outcome.kind, outcome.status, outcome.held) == ("purge", "done", 2)
    gone = set(aged) - {aged[0], aged[1]}
    after = snapshot(primary)
    assert after["orders"].keys() == before["orders"].keys() - gone
    for table in CHILDREN:
        assert after[table].keys() == before[table].keys() - children_of(before, table, gone)
    assert after["events"] == before["events"]
    assert outcome.moved == plan.counts
    assert outcome.moved["orders"] == len(gone)
    assert all(not rows for name, rows in snapshot(archive, twins=True).items()
               if name != "events")
    assert {name: deleted for name, (_, deleted, _) in ledger_rows(archive, outcome.run_id)
            .items()} == outcome.moved
    assert shop.archiver.run("orders", NOW).rows == 0
    assert verify_archive(primary, archive, shop.archiver.policies).ok


def test_expiry_deletes_archived_rows_past_retention_and_keeps_the_ledger_exact(
        make_shop: Any) -> None:
    shop = make_shop("expire", SEDIMENT_POLICY__ORDERS__RETENTION="500d",
                     SEDIMENT_POLICY__ORDERS__BATCH_SIZE="9")
    primary, archive = shop.engines.primary, shop.engines.archive
    policy = shop.policy("orders")
    archived_by = shop.archiver.run("orders", NOW)
    assert archived_by.status == "done" and archived_by.rows
    live, archived = snapshot(primary), snapshot(archive, twins=True)
    expiry = expiry_of(policy, NOW)
    assert expiry is not None and expiry.cutoff == NOW - timedelta(days=500)
    expiring = shop.order_ids(archive, expiry.condition)
    assert 5 < len(expiring) < len(archived["orders"])
    add_holds(archive, "orders", [(expiring[3],)], reason="litigation", held_by="t", now=NOW)
    plan = plan_sweep(shop.engines, expiry)

    outcome = shop.archiver.expire("orders", NOW)

    assert outcome is not None
    assert (outcome.kind, outcome.status, outcome.held) == ("expire", "done", 1)
    gone = set(expiring) - {expiring[3]}
    now_archived = snapshot(archive, twins=True)
    assert now_archived["orders"].keys() == archived["orders"].keys() - gone
    for table in CHILDREN:
        assert now_archived[table].keys() == (archived[table].keys()
                                              - children_of(archived, table, gone))
    assert snapshot(primary) == live
    assert outcome.moved == plan.counts and outcome.moved["orders"] == len(gone)
    # The archive run that copied the rows counts them as removed: its stamped rows match.
    counters = ledger_rows(archive, archived_by.run_id)
    assert {name: removed for name, (_, _, removed) in counters.items()} == outcome.moved
    assert verify_archive(primary, archive, shop.archiver.policies).ok
    assert shop.archiver.expire("orders", NOW).rows == 0  # type: ignore[union-attr]
    assert shop.archiver.expire("events", NOW) is None  # no retention: kept for ever


def test_the_schedule_runs_a_policy_then_expires_it(make_shop: Any) -> None:
    shop = make_shop("scheduled", SEDIMENT_POLICY__ORDERS__RETENTION="500d")
    outcomes = shop.archiver.scheduled("orders", NOW, threading.Event())
    assert [(o.kind, o.status) for o in outcomes] == [("archive", "done"), ("expire", "done")]
    assert outcomes[1].rows > 0
    with shop.engines.archive.connect() as connection:
        kinds = connection.execute(sa.select(runs.c.kind).order_by(runs.c.id)).scalars().all()
    assert kinds == ["archive", "expire"]


def test_a_released_hold_lets_its_rows_go(make_shop: Any) -> None:
    shop = make_shop("released", SEDIMENT_POLICY__ORDERS__MODE="purge")
    primary, archive = shop.engines.primary, shop.engines.archive
    policy = shop.policy("orders")
    first = shop.order_ids(primary, policy.aged(policy.cutoff(NOW)))[0]
    (hold,), _ = add_holds(archive, "orders", [(first,)], reason="r", held_by="t", now=NOW)
    assert shop.archiver.run("orders", NOW).held == 1
    assert first in shop.order_ids(primary, sa.true())
    from archive.holds import release_holds
    release_holds(archive, [hold.id], released_by="t", reason="closed", now=NOW)
    outcome = shop.archiver.run("orders", NOW)
    assert (outcome.held, outcome.moved["orders"]) == (0, 1)
    assert first not in shop.order_ids(primary, sa.true())


def test_the_command_line_places_lists_and_releases_holds(make_shop: Any) -> None:
    shop = make_shop("hold_cli", SEDIMENT_POLICY__ORDERS__RETENTION="500d")
    env = env_for(*shop.urls)
    order = shop.order_ids(shop.engines.primary, sa.true())[0]

    placed = run_cli("archive", "hold", "add", "--table", "orders", "--key", str(order),
                     "--reason", "tax audit 2026", "--by", "legal@example", env=env)
    assert placed.returncode == 0, placed.stderr
    assert f"placed on orders {order} (in PRIMARY) by legal@example: tax audit 2026" \
        in placed.stdout
    again = run_cli("archive", "hold", "add", "--table", "orders", "--key", str(order),
                    "--reason", "again", env=env)
    assert "already held by hold 1" in again.stdout
    listing = run_cli("archive", "hold", "list", env=env)
    assert "tax audit 2026" in listing.stdout and "legal@example" in listing.stdout

    missing = run_cli("archive", "hold", "add", "--table", "orders", "--key", "999999",
                      "--reason", "x", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "sediment: --key 999999: no orders row with this key in PRIMARY or ARCHIVE; nothing "
        "was held"]
    bad = run_cli("archive", "hold", "add", "--table", "orders", "--key", "abc", "--reason",
                  "x", env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("sediment: --key 'abc': 'abc' is not a value of orders.id "
                                  "(BIGINT)")
    unknown = run_cli("archive", "hold", "add", "--table", "customers", "--key", "1",
                      "--reason", "x", env=env)
    assert unknown.returncode == 2 and "not one of the policies' tables" in unknown.stderr

    released = run_cli("archive", "hold", "release", "1", "--reason", "audit closed",
                       "--by", "legal@example", env=env)
    assert released.returncode == 0 and "hold 1 on orders" in released.stdout
    assert "no holds in force" in run_cli("archive", "hold", "list", env=env).stdout
    history = run_cli("archive", "hold", "list", "--all", env=env).stdout
    assert "released" in history and "audit closed" in history
    twice = run_cli("archive", "hold", "release", "1", env=env)
    assert twice.returncode == 2 and "no hold in force with id 1" in twice.stderr
    assert [hold.id for hold in list_holds(shop.engines.archive, released=True)] == [1]


def test_the_command_line_purges_expires_and_shows_every_kind(make_shop: Any) -> None:
    shop = make_shop("kinds_cli", SEDIMENT_POLICY__ORDERS__RETENTION="500d",
                     SEDIMENT_POLICY__EVENTS__MODE="purge")
    env = {**env_for(*shop.urls), "SEDIMENT_POLICY__ORDERS__RETENTION": "500d",
           "SEDIMENT_POLICY__EVENTS__MODE": "purge"}
    now = ["--now", NOW.isoformat()]
    dry = run_cli("archive", "run", "--dry-run", *now, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "policy events: cutoff" in dry.stdout and "would purge from PRIMARY events" \
        in dry.stdout
    ran = run_cli("archive", "run", *now, env=env)
    assert ran.returncode == 0, ran.stderr
    assert [line.split()[:2] for line in ran.stdout.splitlines()[1:3]] == [
        ["orders", "archive"], ["events", "purge"]]
    planned = run_cli("archive", "expire", "--dry-run", *now, env=env)
    assert "would expire from ARCHIVE orders" in planned.stdout
    expired = run_cli("archive", "expire", *now, env=env)
    assert expired.returncode == 0, expired.stderr
    assert expired.stdout.splitlines()[1].split()[:4] == ["orders", "expire", "3", "done"]
    status = run_cli("archive", "status", env=env).stdout
    assert [line.split()[2] for line in status.splitlines()[1:4]] == [
        "expire", "purge", "archive"]
    no_retention = run_cli("archive", "expire", "--policy", "events", env=env)
    assert no_retention.returncode == 2 and "has no retention" in no_retention.stderr
    verified = run_cli("archive", "verify", env=env)
    assert verified.returncode == 0, verified.stdout


def test_the_archive_runs_report_lists_every_kind(make_shop: Any) -> None:
    shop = make_shop("kinds_report", SEDIMENT_POLICY__ORDERS__RETENTION="500d",
                     SEDIMENT_POLICY__EVENTS__MODE="purge")
    shop.archiver.scheduled("orders", NOW, threading.Event())
    shop.archiver.run("events", NOW)
    app = create_app(shop.archiver.settings)
    client = app.test_client()
    body = client.get("/api/v1/reports/archive-runs?sort=id").get_json()
    assert [(row["policy"], row["kind"]) for row in body["rows"]] == [
        ("orders", "archive"), ("orders", "expire"), ("events", "purge")]
    purges = client.get("/api/v1/reports/archive-runs?kind=purge").get_json()["rows"]
    assert [row["policy"] for row in purges] == ["events"]


def test_keys_are_read_as_their_columns_types(make_shop: Any) -> None:
    shop = make_shop("keys")
    orders = shop.policy("orders").root
    assert parse_key(orders, " 42 ") == (42,)
    with pytest.raises(ValueError, match="has 1 column"):
        parse_key(orders, "[1, 2]")
    composite = sa.Table("t", sa.MetaData(), sa.Column("a", sa.Text, primary_key=True),
                         sa.Column("b", sa.Date, primary_key=True))
    assert parse_key(composite, "x, 2026-01-02") == ("x", datetime(2026, 1, 2).date())
    assert parse_key(composite, '["a,b", "2026-01-02"]')[0] == "a,b"


# Settings: no database needed.

def settings_with(tmp_path: Any, **overrides: str) -> Any:
    return make_settings(f"sqlite:///{tmp_path}/p.db", f"sqlite:///{tmp_path}/a.db", **overrides)


@pytest.mark.parametrize(("overrides", "key", "words"), [
    ({"SEDIMENT_POLICY__ORDERS__RETENTION": "7 years"}, "policy.orders.retention",
     "is not a retention period such as '7y'"),
    ({"SEDIMENT_POLICY__ORDERS__RETENTION": "300d"}, "policy.orders.retention",
     "is not longer than older_than (365 days)"),
    ({"SEDIMENT_POLICY__EVENTS__MODE": "purge", "SEDIMENT_POLICY__EVENTS__RETENTION": "2y"},
     "policy.events.retention", "a purge policy keeps nothing in ARCHIVE"),
    ({"SEDIMENT_POLICY__EVENTS__MODE": "erase"}, "policy.events.mode", "'archive' or 'purge'"),
])
def test_bad_lifecycle_settings_name_their_key(tmp_path: Any, overrides: dict[str, str],
                                               key: str, words: str) -> None:
    with pytest.raises(SettingsError) as raised:
        settings_with(tmp_path, **overrides)
    assert raised.value.key == key and words in str(raised.value)


def test_a_purge_of_a_table_another_policy_archives_is_refused(tmp_path: Any) -> None:
    settings = settings_with(tmp_path, SEDIMENT_POLICY__EVENTS__MODE="purge",
                             SEDIMENT_POLICY__EVENTS__TABLE="payments",
                             SEDIMENT_POLICY__EVENTS__AGE_COLUMN="paid_at")
    with pytest.raises(SettingsError) as raised:
        resolve_policies_of(settings)
    assert raised.value.key == "policy.events.mode"
    assert "purges payments, which policy 'orders' archives" in str(raised.value)


def test_retention_counts_calendar_years() -> None:
    assert parse_retention("7y") == Retention(years=7)
    leap = datetime(2028, 2, 29, 12, tzinfo=UTC)
    assert Retention(years=1).cutoff(leap) == datetime(2027, 2, 28, 12, tzinfo=UTC)
    assert Retention(years=7).cutoff(NOW) == datetime(2019, 6, 1, tzinfo=UTC)
    assert parse_retention("400d").cutoff(NOW) == NOW - timedelta(days=400)
    with pytest.raises(ValueError):
        parse_retention("0y")


# Restore.

def test_archive_restore_archive_round_trip_keeps_every_value(make_shop: Any) -> None:
    shop = make_shop("round_trip", SEDIMENT_POLICY__ORDERS__BATCH_SIZE="11")
    primary, archive = shop.engines.primary, shop.engines.archive
    original = snapshot(primary)
    archived_by = shop.archiver.run("orders", NOW)
    moved = set(snapshot(archive, twins=True)["orders"])
    assert archived_by.status == "done" and len(moved) > 20

    restored = shop.archiver.restore(RestoreRequest(run=archived_by.run_id), NOW)

    assert (restored.kind, restored.status) == ("restore", "done")
    assert restored.moved["orders"] == len(moved)
    assert snapshot(primary) == original  # every row back, value for value
    assert all(not rows for name, rows in snapshot(archive, twins=True).items()
               if name != "events")
    counters = ledger_rows(archive, archived_by.run_id)
    assert {name: removed for name, (_, _, removed) in counters.items()} == restored.moved
    assert verify_archive(primary, archive, shop.archiver.policies).ok
    # Restored roots age again from the restore: not archived until older_than has passed.
    assert shop.archiver.run("orders", NOW).rows == 0
    assert "would move orders 0" in _dry_run(shop, NOW)
    later = shop.archiver.run("orders", NOW + timedelta(days=30))  # newly aged orders only
    assert later.rows and not moved & set(snapshot(archive, twins=True)["orders"])
    again = shop.archiver.run("orders", NOW + timedelta(days=366))
    archived_again = snapshot(archive, twins=True)
    assert moved <= set(archived_again["orders"])
    for name, rows in archived_again.items():
        assert all(normalise(row) == normalise(original[name][key])
                   for key, row in rows.items()), name
    assert again.status == "done"


def _dry_run(shop: Shop, now: datetime) -> str:
    result = run_cli("archive", "run", "--dry-run", "--policy", "orders", "--now",
                     now.isoformat(), env=env_for(*shop.urls))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_restore_by_a_childs_key_brings_its_whole_order_and_never_overwrites(
        make_shop: Any) -> None:
    shop = make_shop("restore_key")
    primary, archive = shop.engines.primary, shop.engines.archive
    original = snapshot(primary)
    shop.archiver.run("orders", NOW)
    archived = snapshot(archive, twins=True)
    order = sorted(archived["orders"])[3]
    item = min(children_of(archived, "order_items", {order}))
    outcome = shop.archiver.restore(
        RestoreRequest(table="order_items", keys=(str(item),)), NOW)
    assert outcome.status == "done" and outcome.moved["orders"] == 1
    live = snapshot(primary)
    assert live["orders"][order] == original["orders"][order]
    for table in CHILDREN:
        keys = children_of(original, table, {order})
        assert keys and all(live[table][key] == original[table][key] for key in keys)

    # A different row under a key being restored stops the batch; nothing changes.
    other = sorted(archived["orders"])[4]
    names = [c.name for c in archived_tables["orders"].columns]
    row = dict(zip(names, archived["orders"][other], strict=False))  # data columns come first
    with primary.begin() as connection:  # re-entered by hand, a day off
        connection.execute(shop.policy("orders").root.insert().values(
            {**row, "placed_at": row["placed_at"] + timedelta(days=1)}))
    before = (snapshot(primary), snapshot(archive, twins=True))
    refused = shop.archiver.restore(RestoreRequest(table="orders", keys=(str(other),)), NOW)
    assert refused.status == "error"
    assert f"already holds a different orders row with key {other}" in (refused.error or "")
    assert (snapshot(primary), snapshot(archive, twins=True)) == before
    # Every later restore of the policy takes that root up first: a dry run counting it
    # without a word read as a wrong count ("orders 2" for one order asked for).
    third = sorted(archived["orders"])[5]
    dry = run_cli("archive", "restore", "--table", "orders", "--key", str(third), "--dry-run",
                  env=env_for(*shop.urls))
    assert f"orders keys {third}: would restore orders 2," in dry.stdout
    assert (f"(counting the roots left by unfinished restore run {refused.run_id}, which "
            "every restore of policy orders takes up first)") in dry.stdout


def test_restore_on_the_command_line(make_shop: Any) -> None:
    shop = make_shop("restore_cli")
    env = env_for(*shop.urls)
    archived_by = shop.archiver.run("orders", NOW)
    order = sorted(snapshot(shop.engines.archive, twins=True)["orders"])[0]
    dry = run_cli("archive", "restore", "--run", str(archived_by.run_id), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"policy orders: run {archived_by.run_id}: would restore orders " \
        f"{archived_by.moved['orders']:,}" in dry.stdout
    done = run_cli("archive", "restore", "--table", "orders", "--key", str(order), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[:2] == ["orders", "restore"]
    again = run_cli("archive", "restore", "--table", "orders", "--key", str(order), env=env)
    assert again.returncode == 1
    assert again.stderr.strip() == (f"sediment: orders keys {order}: nothing archived "
                                    "matches; nothing to restore")
    where = run_cli("archive", "restore", "--table", "orders", "--where", "customer_id = 3",
                    "--dry-run", env=env)
    assert where.returncode == 0 and "would restore orders" in where.stdout
    for args, words in [
        (["--table", "orders"], "--table needs either --key or --where"),
        (["--run", "999"], "--run 999: the ledger has no such run"),
        (["--table", "customers", "--key", "1"], "--table 'customers' is not archived"),
        (["--table", "orders", "--key", "x"], "--key 'x': 'x' is not a value of orders.id"),
        # Past a 64-bit integer: SQLite's driver raised OverflowError.
        (["--table", "orders", "--key", "99999999999999999999"],
         "'99999999999999999999' is not a value of orders.id"),
        (["--table", "orders", "--where", "no_such_column = 1"], "ARCHIVE refused it"),
        # Closed Sediment's parentheses: every archived order would have been restored.
        (["--table", "orders", "--where", "customer_id = 3) OR (true"],
         "is not one condition: a ')' closes a parenthesis it never opened"),
        # A second statement: the dry run ended in a NoResultFound traceback.
        (["--table", "orders", "--where", "customer_id = 3; DROP TABLE orders"],
         "is not one condition: it holds ';'"),
    ]:
        refused = run_cli("archive", "restore", *args, env=env)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1 and words in refused.stderr



#: More values than SQLite binds in one statement (32,766).
MORE_THAN_SQLITE_BINDS = 33_000


def test_a_restore_of_more_roots_than_sqlite_binds_leaves_the_policy_working(
        make_shop: Any) -> None:
    """A restore of a whole large run (``archive restore --run N``): its batches marked
    more roots than one SQLite statement binds, and the runs that followed listed every
    marked root in their statements, a parameter each. The restore's first batch failed
    ("too many SQL variables"), and with smaller batches every later run, dry run and
    ``archive verify`` of the policy did, until the marks expired."""
    shop = make_shop("many_restored",
                     SEDIMENT_POLICY__EVENTS__BATCH_SIZE=str(MORE_THAN_SQLITE_BINDS + 100))
    primary, archive = shop.engines.primary, shop.engines.archive
    for engine in (primary, archive):
        _bind_as_sqlite_ships(engine)
    events = shop.policy("events").root
    with primary.begin() as connection:
        first = connection.execute(sa.select(sa.func.max(events.c.id))).scalar_one() + 1
        connection.execute(events.insert(), [
            {"id": first + n, "occurred_at": NOW - timedelta(days=400), "kind": "login",
             "customer_id": None, "order_id": None, "detail": f"bulk {n}"}
            for n in range(MORE_THAN_SQLITE_BINDS)])
    archived = shop.archiver.run("events", NOW)
    assert archived.status == "done" and archived.rows > MORE_THAN_SQLITE_BINDS

    restored = shop.archiver.restore(RestoreRequest(run=archived.run_id), NOW)

    assert (restored.status, restored.error) == ("done", None)
    assert restored.moved["events"] == archived.rows
    # Restored roots age again from the restore: every check and run counts them out.
    assert plan_run(primary, shop.archiver.as_of("events", NOW), NOW).counts == {"events": 0}
    again = shop.archiver.run("events", NOW)
    assert (again.status, again.error, again.rows) == ("done", None, 0)
    assert verify_archive(primary, archive, shop.archiver.policies).ok
    later = shop.archiver.run("events", NOW + timedelta(days=400))
    assert later.status == "done" and later.rows >= archived.rows


def test_archive_status_shows_more_runs_than_sqlite_binds(make_shop: Any,
                                                           capsys: Any) -> None:
    """``archive status --limit N`` read the runs' counters with an ``IN`` list of the N
    ids: past SQLite's parameters per statement it failed ("too many SQL variables"), as
    soon as a frequent schedule had written that many runs."""
    shop = make_shop("many_runs")
    archive = shop.engines.archive
    _bind_as_sqlite_ships(archive)
    archived = shop.archiver.run("events", NOW)
    with archive.begin() as connection:
        connection.execute(runs.insert(), [
            {"policy": "events", "kind": "archive", "status": "done", "cutoff": NOW,
             "started_at": NOW, "finished_at": NOW}
            for _ in range(MORE_THAN_SQLITE_BINDS)])

    assert cmd_status(argparse.Namespace(limit=MORE_THAN_SQLITE_BINDS + 1),
                      shop.archiver) == 0

    shown = capsys.readouterr().out.splitlines()
    assert len([line for line in shown if " events " in line]) == MORE_THAN_SQLITE_BINDS + 1
    assert any(line.split()[0] == str(archived.run_id) and f"events {archived.rows:,}/"
               in line for line in shown)


def _bind_as_sqlite_ships(engine: sa.Engine) -> None:
    """Give a SQLite engine's connections SQLite's own limit of parameters per statement,
    32,766: Debian's build raises it to 250,000, python.org's builds keep it."""
    if engine.dialect.name != "sqlite":
        return

    def limited(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)

    sa.event.listen(engine, "connect", limited)
    engine.dispose()  # the pool's connections were opened without it

@pytest.mark.parametrize("kind", ["restore", "erase"])
def test_run_again_after_a_kill_at_the_end_succeeds(make_shop: Any, kind: str) -> None:
    """A restore or erasure killed after its last rows moved, before the ledger said
    ``done``, leaves nothing to do: running the same command again, as the operator is told
    is safe, succeeds and marks the killed run interrupted (it said "nothing to ..." and
    exited 1, leaving the run ``running``). Once nothing is pending, running it again says
    it was done (for an erasure, found by the ledger's digest of the subject)."""
    shop = make_shop(f"{kind}_rerun")
    env = env_for(*shop.urls)
    archived_by = shop.archiver.run("orders", NOW)
    shop.archiver.run("events", NOW)
    if kind == "restore":
        outcome = shop.archiver.restore(RestoreRequest(run=archived_by.run_id), NOW)
        command = ["archive", "restore", "--run", str(archived_by.run_id)]
    else:
        customer = busy_customer(shop)
        outcome = shop.archiver.erase("customers", str(customer), NOW)
        command = ["archive", "erase", "--table", "customers", "--key", str(customer)]
    assert outcome.status == "done" and outcome.run_id is not None
    with shop.engines.archive.begin() as connection:  # as a kill before the run's end leaves it
        connection.execute(runs.update().where(runs.c.id == outcome.run_id)
                           .values(status="running", finished_at=None))
    again = run_cli(*command, env=env)
    assert again.returncode == 0, again.stderr
    with shop.engines.archive.connect() as connection:
        assert connection.execute(sa.select(runs.c.status).where(
            runs.c.id == outcome.run_id)).scalar_one() == "interrupted"
    twice = run_cli(*command, env=env)
    assert twice.returncode == 0, twice.stderr
    if kind == "restore":  # a run's rows all restored: done, whoever did it
        assert "none of its rows is left in ARCHIVE" in twice.stdout
    else:  # the ledger's digest of the subject names the erasure that did it
        assert f"customers {customer} was erased by run " in twice.stdout  # the re-run's
        assert "nothing is left to erase" in twice.stdout
        never = run_cli("archive", "erase", "--table", "customers", "--key", "99999", env=env)
        assert never.returncode == 1 and "nothing to erase" in never.stderr

# Erasure.

def subject_rows(shop: Shop, customer: int) -> dict[str, int]:
    """Per database and table, the rows that still belong to ``customer``: one query per
    table, through the foreign keys as the demo schema has them (an order's items are looked
    for in both databases, wherever the order is)."""
    found: dict[str, int] = {}
    orders_of = {customer: [key for engine in (shop.engines.primary, shop.engines.archive)
                            for key in _orders_of(engine, customer)] + _known_orders.get(
                                (id(shop), customer), [])}
    _known_orders[(id(shop), customer)] = orders_of[customer]
    for side, engine in (("primary", shop.engines.primary), ("archive", shop.engines.archive)):
        with engine.connect() as connection:
            def count(sql: str) -> int:
                return int(connection.execute(sa.text(sql), {"c": customer}).scalar_one())
            found[f"{side}:orders"] = count("SELECT count(*) FROM orders WHERE customer_id = :c")
            found[f"{side}:events"] = count("SELECT count(*) FROM events WHERE customer_id = :c")
            if side == "primary":
                found["primary:customers"] = count("SELECT count(*) FROM customers WHERE id = :c")
            for child in CHILDREN:  # items and payments of the subject's orders, in either
                found[f"{side}:{child}"] = count(
                    f"SELECT count(*) FROM {child} WHERE order_id IN "
                    f"({','.join(map(str, orders_of[customer])) or 'NULL'})")
    return found


_known_orders: dict[tuple[int, int], list[int]] = {}


def busy_customer(shop: Shop, tables: tuple[str, ...] = ("orders", "events")) -> int:
    """A customer with rows of ``tables`` in both databases."""
    def having(engine: sa.Engine, table: str) -> set[int]:
        with engine.connect() as connection:
            return set(connection.execute(sa.text(
                f"SELECT customer_id FROM {table} WHERE customer_id IS NOT NULL")).scalars())
    both = set.intersection(*(having(engine, table) for table in tables
                              for engine in (shop.engines.primary, shop.engines.archive)))
    assert both, "the seeded shop has no customer in both databases"
    return min(both)


def _orders_of(engine: sa.Engine, customer: int) -> list[int]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text("SELECT id FROM orders WHERE customer_id = :c"),
                                       {"c": customer}).scalars())


def test_erasure_reaches_every_referencing_row_in_both_databases(make_shop: Any) -> None:
    shop = make_shop("erase", SEDIMENT_POLICY__ORDERS__BATCH_SIZE="50")
    primary, archive = shop.engines.primary, shop.engines.archive
    shop.archiver.run("orders", NOW)
    shop.archiver.run("events", NOW)
    customer = busy_customer(shop)
    before = subject_rows(shop, customer)
    assert all(before[f"{side}:{table}"] for side in ("primary", "archive")
               for table in ("orders", "order_items", "events"))
    with primary.connect() as connection:
        person = connection.execute(sa.text("SELECT name, email FROM customers WHERE id = :c"),
                                    {"c": customer}).one()
    their_orders = _known_orders[(id(shop), customer)]
    others = (snapshot(primary), snapshot(archive, twins=True))

    # A hold on one of the subject's archived order items stops the whole erasure.
    with archive.connect() as connection:
        item = connection.execute(sa.text(
            "SELECT min(id) FROM order_items WHERE order_id IN "
            "(SELECT id FROM orders WHERE customer_id = :c)"), {"c": customer}).scalar_one()
    (hold,), _ = add_holds(archive, "order_items", [(item,)], reason="dispute", held_by="t",
                           now=NOW)
    with pytest.raises(ErasureRefused, match=f"hold {hold.id} on order_items {item}"):
        shop.archiver.erase("customers", str(customer), NOW)
    assert (snapshot(primary), snapshot(archive, twins=True)) == others
    release_holds(archive, [hold.id], released_by="t", reason="settled", now=NOW)

    outcome = shop.archiver.erase("customers", str(customer), NOW)

    assert outcome.status == "done"
    assert not any(subject_rows(shop, customer).values())
    assert sum(outcome.erased.values()) == sum(before.values())
    # Nothing else changed: every other row of both databases is as it was.
    after = (snapshot(primary), snapshot(archive, twins=True))
    for was, now_ in zip(others, after, strict=True):
        for table, rows in was.items():
            assert now_[table].items() <= rows.items(), table
    lost = sum(len(was[table]) - len(now_[table])
               for was, now_ in zip(others, after, strict=True) for table in was)
    assert lost == sum(count for place, count in before.items() if place != "primary:customers")
    # The ledger holds no personal data: no name, no email, no key.
    with archive.connect() as connection:
        ledger_text = " ".join(str(value) for row in connection.execute(
            sa.select(runs).where(runs.c.kind == "erase")) for value in row)
        ledger_text += " ".join(str(value) for row in connection.execute(
            sa.select(run_tables).join(runs, runs.c.id == run_tables.c.run_id)
            .where(runs.c.kind == "erase")) for value in row)
    assert person.name not in ledger_text and person.email not in ledger_text
    assert not any(f'"{order}"' in ledger_text for order in their_orders)
    with archive.connect() as connection:
        detail = json.loads(connection.execute(sa.select(runs.c.detail).where(
            runs.c.id == outcome.run_id)).scalar_one())
    assert detail["subject"] == "customers" and len(detail["subject_digest"]) == 32
    assert verify_archive(primary, archive, shop.archiver.policies).ok


def test_an_erasure_refuses_keys_primary_reused_and_erases_a_row_held_again(
        make_shop: Any) -> None:
    """An erasure follows keys across the two databases. Under a key PRIMARY reused after
    archiving (here an archived order's), the subject's archived order led to another
    customer's new order, and that order's items were erased with the subject's rows. Such
    a key now stops the erasure, for either customer. A row PRIMARY holds again exactly as
    it was archived is the same row of the same subject, erased from both databases."""
    shop = make_shop("erase_reused")
    primary, archive = shop.engines.primary, shop.engines.archive
    shop.archiver.run("orders", NOW)
    orders, archived = shop.policy("orders").root, shop.policy("orders").archive_root
    items = sa.Table("order_items", sa.MetaData(), autoload_with=primary)
    with archive.connect() as connection:
        old = connection.execute(sa.select(*(archived.c[c.name] for c in orders.columns))
                                 .order_by(archived.c.id).limit(1)).one()
    with primary.connect() as connection:
        other = connection.execute(sa.text("SELECT min(id) FROM customers WHERE id != :c"),
                                   {"c": old.customer_id}).scalar_one()
    with primary.begin() as connection:
        connection.execute(orders.insert(), {**old._mapping, "customer_id": other,
                                             "status": "pending", "closed_at": None})
        connection.execute(items.insert(), {"id": 10**9, "order_id": old.id, "product_id": 1,
                                            "quantity": 1, "unit_price_cents": 100})
    before = (snapshot(primary), snapshot(archive, twins=True))
    for customer in (old.customer_id, other):
        with pytest.raises(ErasureRefused, match="orders: 1 row this erasure reaches has a "
                           "key that PRIMARY reused for a new row after archiving the old one"):
            shop.archiver.erase("customers", str(customer), NOW)
    assert (snapshot(primary), snapshot(archive, twins=True)) == before
    dry = run_cli("archive", "erase", "--table", "customers", "--key", str(other),
                  "--dry-run", env=env_for(*shop.urls))
    assert dry.returncode == 0 and "blocked: orders: 1 row this erasure reaches" in dry.stdout

    with primary.begin() as connection:  # PRIMARY holds the archived order again, as it was
        connection.execute(items.delete().where(items.c.id == 10**9))
        connection.execute(orders.update().where(orders.c.id == old.id).values(**old._mapping))
    assert shop.archiver.erase("customers", str(old.customer_id), NOW).status == "done"
    assert not any(subject_rows(shop, old.customer_id).values())
    for engine, table in ((primary, orders), (archive, archived)):
        with engine.connect() as connection:
            assert connection.execute(sa.select(table.c.id).where(
                table.c.id == old.id)).first() is None


def test_erasure_nulls_out_the_rows_a_table_must_keep(make_shop: Any) -> None:
    shop = make_shop("erase_null", SEDIMENT_ERASURE__NULL_OUT='{events = ["customer_id"]}')
    primary, archive = shop.engines.primary, shop.engines.archive
    shop.archiver.run("events", NOW)
    customer = busy_customer(shop, ("events",))
    query = sa.text("SELECT id, kind, detail FROM events WHERE customer_id = :c ORDER BY id")
    with primary.connect() as connection:
        kept = connection.execute(query, {"c": customer}).all()
    with archive.connect() as connection:
        kept_archived = connection.execute(query, {"c": customer}).all()
    assert kept and kept_archived
    outcome = shop.archiver.erase("customers", str(customer), NOW)
    assert outcome.status == "done"
    assert not any(count for place, count in subject_rows(shop, customer).items()
                   if "events" not in place)
    for engine, rows in ((primary, kept), (archive, kept_archived)):
        with engine.connect() as connection:
            now_rows = connection.execute(sa.text(
                f"SELECT id, kind, detail, customer_id FROM events WHERE id IN "
                f"({','.join(str(row.id) for row in rows)}) ORDER BY id")).all()
        assert [tuple(row[:3]) for row in now_rows] == [tuple(row) for row in rows]
        assert all(row.customer_id is None for row in now_rows)


def test_erasure_refusals_on_the_command_line(make_shop: Any) -> None:
    shop = make_shop("erase_cli")
    env = env_for(*shop.urls)
    dry = run_cli("archive", "erase", "--table", "customers", "--key", "4", "--dry-run", env=env)
    assert dry.returncode == 0 and "PRIMARY  customers" in dry.stdout
    for args, code, words in [
        (["--table", "nope", "--key", "1"], 2, "--table 'nope': PRIMARY has no such table"),
        (["--table", "customers", "--key", "x"], 2, "'x' is not a value of customers.id"),
        (["--table", "customers", "--key", "99999"], 1, "nothing to erase"),
    ]:
        refused = run_cli("archive", "erase", *args, env=env)
        assert refused.returncode == code, (args, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1 and words in refused.stderr
    bad = run_cli("archive", "erase", "--table", "customers", "--key", "4",
                  env={**env, "SEDIMENT_ERASURE__NULL_OUT": '{orders = ["status"]}'})
    assert bad.returncode == 2
    assert "erasure.null_out.orders: orders.status cannot be NULL" in bad.stderr
    done = run_cli("archive", "erase", "--table", "customers", "--key", "4", env=env)
    assert done.returncode == 0 and "erased customers 4 (run 1)" in done.stdout
    # "--run 1 belongs to policy 'customers', which no longer archives", it said
    back = run_cli("archive", "restore", "--run", "1", env=env)
    assert back.returncode == 2
    assert "--run 1 is an erase run, which brought no rows into ARCHIVE" in back.stderr
    status = run_cli("archive", "status", env=env).stdout
    assert status.splitlines()[1].split()[1:4] == ["customers", "erase", "done"]


def test_erasure_finds_rows_reached_by_two_paths(databases: DatabaseFactory) -> None:
    """A table referencing the subject directly and through another table is searched once
    both parents' rows are known: a note on the person's account, with no person of its
    own, is found whichever order the schema lists the tables in."""
    metadata = sa.MetaData()
    notes = sa.Table("a_notes", metadata, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("person_id", sa.ForeignKey("people.id"), nullable=True),
                     sa.Column("account_id", sa.ForeignKey("z_accounts.id"), nullable=True))
    people = sa.Table("people", metadata, sa.Column("id", sa.Integer, primary_key=True))
    accounts = sa.Table("z_accounts", metadata, sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("person_id", sa.ForeignKey("people.id"), nullable=False))
    schema = own_schema(databases, metadata, [])
    with schema.engines.primary.begin() as connection:
        connection.execute(people.insert(), [{"id": 1}, {"id": 2}])
        connection.execute(accounts.insert(), [{"id": 10, "person_id": 1},
                                               {"id": 20, "person_id": 2}])
        connection.execute(notes.insert(), [
            {"id": 100, "person_id": 1, "account_id": None},
            {"id": 101, "person_id": None, "account_id": 10},  # only through the account
            {"id": 200, "person_id": None, "account_id": 20}])
    plan = plan_erasure(schema.engines, metadata.tables, {}, people, (1,), {})
    assert [table.name for table in plan.tables] == ["people", "z_accounts", "a_notes"]
    assert plan.found[("primary", "a_notes")].keys == {(100,), (101,)}
    outcome = erase(schema.engines, metadata.tables, {}, people, (1,), null_out={},
                    secret="s", policies=(), now=NOW)
    assert outcome.status == "done"
    with schema.engines.primary.connect() as connection:
        assert connection.execute(sa.select(notes.c.id)).scalars().all() == [200]
        assert connection.execute(sa.select(people.c.id)).scalars().all() == [2]
    schema.dispose()
