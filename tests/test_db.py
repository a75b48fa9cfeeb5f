"""The two binds: each model writes to its own database, and timestamps stay UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from flask import Flask

from reporting.app import db
from reporting.state import state_of
from sediment.core.databases import analyze
from sediment.core.schema.archive import ArchiveRun
from sediment.core.schema.primary import Customer


def test_each_model_writes_to_its_own_database(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    now = datetime.now(UTC)
    db.session.add(Customer(id=7, name="Ada", email="ada@example.com", country="GB",
                            created_at=now))
    db.session.add(ArchiveRun(id=9, policy="orders", status="done", cutoff=now,
                              started_at=now))
    db.session.commit()
    with primary.connect() as connection:
        assert connection.execute(sa.text("SELECT name FROM customers")).scalars().all() == ["Ada"]
        assert not sa.inspect(connection).has_table("archive_runs")
    with archive.connect() as connection:
        assert connection.execute(sa.text("SELECT id FROM archive_runs")).scalars().all() == [9]
        assert not sa.inspect(connection).has_table("customers")


def test_timestamps_round_trip_as_utc(app: Flask) -> None:
    plus_two = timezone(timedelta(hours=2))
    stamped = datetime(2025, 3, 30, 1, 30, tzinfo=plus_two)
    db.session.add(Customer(id=1, name="B", email="b@example.com", country="DE",
                            created_at=stamped))
    db.session.commit()
    db.session.expunge_all()
    loaded = db.session.get(Customer, 1)
    assert loaded is not None
    assert loaded.created_at == stamped
    assert loaded.created_at.tzinfo == UTC


def test_naive_timestamps_are_refused(app: Flask) -> None:
    db.session.add(Customer(id=1, name="C", email="c@example.com", country="DE",
                            created_at=datetime(2025, 1, 1)))
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        db.session.commit()
    db.session.rollback()


@pytest.mark.sqlite
def test_archive_commits_are_on_disk_when_they_return_and_primary_keeps_wal(app: Flask) -> None:
    """ARCHIVE's copy must outlive a power cut before PRIMARY deletes what it copied: in
    WAL, ``synchronous=NORMAL`` leaves a commit to the next checkpoint, ``FULL`` (2) syncs
    it. The demo PRIMARY loses nothing by NORMAL (1): a delete rolled back by a power cut
    leaves its rows in both databases, which the next run settles."""
    engines = state_of(app).engines
    settings = {}
    for name, engine in engines.items():
        with engine.connect() as connection:
            settings[name] = (connection.exec_driver_sql("PRAGMA journal_mode").scalar_one(),
                              connection.exec_driver_sql("PRAGMA synchronous").scalar_one())
    assert settings == {"primary": ("wal", 1), "archive": ("wal", 2)}


@pytest.mark.sqlite
def test_analyze_samples_each_index_and_leaves_the_connection_as_it_found_it(
        app: Flask) -> None:
    """The statistics are written from a sample (``analysis_limit``); the pooled connection
    goes back with its limit off, so nothing else it runs is cut short."""
    archive = state_of(app).engines.archive
    with archive.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE probe (id INTEGER PRIMARY KEY, v INTEGER)")
        connection.exec_driver_sql("CREATE INDEX probe_v ON probe (v)")
        connection.exec_driver_sql(
            "INSERT INTO probe WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s "
            "WHERE g < 5000) SELECT g, g % 7 FROM s")
    analyze(archive, [sa.Table("probe", sa.MetaData(), sa.Column("id", sa.Integer))])
    with archive.connect() as connection:
        stat = connection.exec_driver_sql(
            "SELECT stat FROM sqlite_stat1 WHERE idx = 'probe_v'").scalar_one()
        limit = connection.exec_driver_sql("PRAGMA analysis_limit").scalar_one()
    assert int(stat.split()[0]) > 0 and limit == 0
