"""Report pages read on PostgreSQL past SQLAlchemy (:mod:`reporting.pgfetch`): timestamps
and dates through psycopg2's own typecasters, in C, and read again through
:mod:`reporting.infinities` only when a page may hold an infinity."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from reporting import infinities
from reporting.infinities import InfiniteDate, InfiniteDatetime
from reporting.pgfetch import direct_statement, fetch_direct
from reporting.readonly import create_readonly_engine
from sediment.core.schema.types import UTCDateTime
from tests.app_schema import engine_for
from tests.support import DatabaseFactory

pytestmark = pytest.mark.postgres

LEASES = sa.Table("leases", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                  sa.Column("ends_at", UTCDateTime), sa.Column("local_end", sa.DateTime),
                  sa.Column("due", sa.Date))
FINITE = [(1, "2026-01-02 03:04:05.000006+00", "2026-01-02 03:04:05", "2026-01-02"),
          (2, None, None, "0001-01-02")]


class CountingSigns(dict[str, int]):
    """``reporting.infinities._SIGNS``, counting the values its Python casters read."""

    def __init__(self, signs: dict[str, int]) -> None:
        super().__init__(signs)
        self.reads: Counter[str] = Counter()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.reads[key] += 1
        return super().get(key, default)


def pages(url: str, rows: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
          ) -> tuple[list[tuple[Any, ...]], CountingSigns]:
    """Every row of ``leases`` holding ``rows``, read as a report page reads them, and how
    many values went through the Python casters."""
    with engine_for(url) as engine, engine.begin() as connection:
        LEASES.create(connection, checkfirst=True)
        connection.execute(LEASES.delete())
        connection.exec_driver_sql(
            "INSERT INTO leases VALUES (%s, %s::timestamptz, %s::timestamp, %s::date)", rows)
    counting = CountingSigns(infinities._SIGNS)
    monkeypatch.setattr(infinities, "_SIGNS", counting)
    engine = create_readonly_engine(url, statement_timeout_ms=5000, pool_size=1)
    try:
        direct = direct_statement(sa.select(LEASES).order_by(LEASES.c.id), engine.dialect)
        assert direct is not None
        with engine.connect() as connection:
            return fetch_direct(connection, direct, {}), counting
    finally:
        engine.dispose()


def test_a_page_without_infinities_is_read_by_the_c_typecasters(
        databases: DatabaseFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading each timestamp through a Python typecaster was a fifth of a report page's
    CPU time: a page that holds no infinity must not pay it."""
    url, _ = databases.pair("pgfetch_finite")
    rows, counting = pages(url, FINITE, monkeypatch)
    assert rows == [
        (1, datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5),
         date(2026, 1, 2)),
        (2, None, None, date(1, 1, 2))]
    assert sum(counting.reads.values()) == 0


def test_a_page_holding_an_infinity_or_a_limit_value_is_read_again_and_told_apart(
        databases: DatabaseFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg2's C typecasters read ``infinity`` as the latest value Python has, as they
    read that value itself: such a page is read again, and each told apart."""
    url, _ = databases.pair("pgfetch_infinite")
    limits = [(3, "infinity", "-infinity", "infinity"),
              (4, "9999-12-31 23:59:59.999999+00", "0001-01-01 00:00:00", "9999-12-31")]
    rows, counting = pages(url, FINITE + limits, monkeypatch)
    assert sum(counting.reads.values()) > 0
    infinite, genuine = rows[2], rows[3]
    assert [type(value) for value in infinite[1:]] == [InfiniteDatetime, InfiniteDatetime,
                                                       InfiniteDate]
    assert [getattr(value, "sign", None) for value in infinite[1:]] == [1, -1, 1]
    assert genuine[1:] == (datetime.max.replace(tzinfo=UTC), datetime.min, date.max)
    assert not any(isinstance(value, InfiniteDatetime | InfiniteDate) for value in genuine)
    assert rows[:2] == pages(url, FINITE, monkeypatch)[0]
