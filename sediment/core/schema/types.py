"""Column types and naming rules shared by the schemas of both databases.

A leaf module: the migrations of both histories import :class:`UTCDateTime` from here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

#: Constraint names that are stable across SQLite and PostgreSQL, so that Alembic can
#: drop and alter them in later migrations.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: A 64-bit key on PostgreSQL; SQLite only auto-increments a column declared INTEGER.
BigIntKey = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp that behaves the same on SQLite and PostgreSQL.

    PostgreSQL stores ``timestamptz``; SQLite has no such type and would silently drop the
    offset, so values are converted to UTC on the way in and marked UTC on the way out.
    Naive datetimes are refused: a silent local-time guess is how archives lose a day.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type[datetime]:
        return datetime

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given: pass a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None or value.tzinfo is UTC:  # PostgreSQL sessions here run in UTC
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def python_type_of(column_type: sa.types.TypeEngine[Any]) -> type | None:
    """The Python type a column type holds, or ``None`` when SQLAlchemy cannot say (a
    type it does not know, such as ``xml``)."""
    try:
        python_type: type = column_type.python_type
    except NotImplementedError:
        return None
    return python_type


def metadata_for(database: str) -> sa.MetaData:
    """A fresh ``MetaData`` for the tables of one database.

    ``info["bind_key"]`` is what Flask-SQLAlchemy's session reads to pick the engine of a
    model's table, so ORM code reaches the right database without ``__bind_key__``.
    """
    return sa.MetaData(naming_convention=NAMING_CONVENTION, info={"bind_key": database})
