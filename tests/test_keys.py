"""Keys of any shape select exactly their rows, on both backends: composite keys, text with
every character an array literal or an ``IN`` list could trip on, uuids, timestamps,
numerics, and keyset order over row values."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from archive.keys import array_literal, key_after, key_columns, key_filters
from tests.app_schema import engine_for
from tests.support import DatabaseFactory

TEXTS = ["plain", "", "NULL", "null", 'quote"d', "back\\slash", "comma,here", "{brace}",
         " padded ", "tab\there", "new\nline", "sep\u2028x", "ünïcode", "'single'"]
METADATA = sa.MetaData()
ROWS = sa.Table(
    "rows", METADATA,
    sa.Column("label", sa.Text, primary_key=True),
    sa.Column("n", sa.Integer, primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("ref", sa.Uuid, nullable=False),
    sa.Column("amount", sa.Numeric(12, 4), nullable=False),
)


@pytest.fixture
def engine(databases: DatabaseFactory) -> Iterator[sa.Engine]:
    with engine_for(databases.pair("keys")[0]) as engine:
        METADATA.create_all(engine)
        start = datetime(2024, 1, 1, tzinfo=UTC)
        with engine.begin() as connection:
            connection.execute(ROWS.insert(), [
                {"label": text, "n": n, "at": start + timedelta(seconds=n),
                 "ref": uuid.uuid5(uuid.NAMESPACE_URL, f"{text}{n}"),
                 "amount": Decimal(n) / 4} for text in TEXTS for n in range(3)])
        yield engine


def _keys(connection: sa.Connection, where: sa.ColumnElement[bool] | None = None
          ) -> list[tuple[object, ...]]:
    query = sa.select(*key_columns(ROWS)).order_by(*key_columns(ROWS))
    return [tuple(row) for row in connection.execute(
        query if where is None else query.where(where))]


def test_key_filters_select_exactly_the_given_composite_keys(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        every = _keys(connection)
        wanted = every[::3]
        found = []
        for condition in key_filters(key_columns(ROWS), wanted, connection.dialect):
            found += _keys(connection, condition)
    assert sorted(found, key=repr) == sorted(wanted, key=repr)


@pytest.mark.parametrize("column", ["ref", "amount"])
def test_key_filters_on_one_uuid_or_numeric_column(engine: sa.Engine, column: str) -> None:
    with engine.connect() as connection:
        values = [row[0] for row in connection.execute(sa.select(ROWS.c[column]))]
        wanted = [(value,) for value in values[1::2]]
        (condition, *more) = key_filters([ROWS.c[column]], wanted, connection.dialect)
        found = list(connection.execute(sa.select(ROWS.c[column]).where(condition)).scalars())
    chosen = {value for (value,) in wanted}
    assert not more and sorted(found) == sorted(value for value in values if value in chosen)


def test_key_after_walks_every_row_once_in_key_order(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        every = _keys(connection)
        walked: list[tuple[object, ...]] = []
        after = None
        while True:
            query = sa.select(*key_columns(ROWS)).order_by(*key_columns(ROWS)).limit(4)
            if after is not None:
                query = query.where(key_after(key_columns(ROWS), after, connection.dialect))
            page = [tuple(row) for row in connection.execute(query)]
            if not page:
                break
            walked += page
            after = page[-1]
    assert walked == every


def test_array_literal_quotes_what_postgresql_would_misread() -> None:
    assert array_literal(["a", 'b"c', "d\\e", "NULL"]) == '{"a","b\\"c","d\\\\e","NULL"}'
    assert array_literal(["1", "2"], quote=False) == "{1,2}"
