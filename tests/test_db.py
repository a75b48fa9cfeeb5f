"""The two binds: each model writes to its own database, and timestamps stay UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from flask import Flask

from reporting.app import db
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
