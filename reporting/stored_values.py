"""An application's values on SQLite, read and compared as SQLite stores them.

SQLite keeps whatever it is given, whatever the column declares: a ``DECIMAL`` column may
hold ``'n/a'``, a ``BOOLEAN`` one ``'true'``. Such a value failed SQLAlchemy's conversion,
and with it every page of the table (500); it is served as stored (:class:`Lenient`).

SQLite has no timestamp type either: a column declared ``DATETIME`` holds whatever the
application wrote. ``CURRENT_TIMESTAMP`` writes ``2026-01-02 03:04:05``, SQLAlchemy and Django add
``.ffffff``, JavaScript's ``toISOString`` writes ``2026-01-02T03:04:05.678Z``, Sequelize
``2026-01-02 03:04:05.678 +00:00``; Prisma-style applications store Unix times, and some
rows hold text of no date at all (``''``). SQLite orders and compares the column by that
text (numbers first).

Served, such a value is parsed when it is an ISO-8601 instant in any of those spellings (a
:class:`StoredInstant` keeping its text, for keyset cursors) and shown as it is otherwise,
where parsing it failed every page of the table.

Filtered, it is compared as the instant it is: a filter value bound in SQLAlchemy's form
(``2026-01-02 03:04:05.000000``) compared as text put every row of the filter's own day on
the wrong side (``T`` sorts after the space, and ``...05`` before ``...05.000000``), so
``eq`` never matched. The SQL function :data:`INSTANT_FUNCTION`, installed on every report
connection, reads the stored text as :func:`read_stored_instant` does and returns it as
:func:`utc_text`, which sorts as instants do; a range on the stored text that every
spelling of a matching instant falls in keeps the column's index in use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from reporting.reports.base import Operator
from reporting.request import COMPARISONS
from sediment.core.instants import StoredInstant, read_stored_instant, utc_text

#: ``sediment_instant(value)``: stored text as :func:`utc_text`, NULL for anything else.
INSTANT_FUNCTION = "sediment_instant"


def install_instant_function(dbapi_connection: Any) -> None:
    """Register :data:`INSTANT_FUNCTION` on a ``sqlite3`` connection."""
    dbapi_connection.create_function(INSTANT_FUNCTION, 1, _instant_text, deterministic=True)


def _instant_text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None  # a number's unit is unknown: no instant to compare
    parsed = read_stored_instant(value)
    return utc_text(parsed) if parsed is not None else None


def blob_text(value: bytes) -> str:
    """A blob SQLite keeps in a column not declared one (a ``STRICT`` table's ``ANY``, or
    bytes an application wrote into ``TEXT``), served as a declared ``BLOB`` column is:
    as SQLite's ``hex()`` writes it. JSON has no bytes: such a row failed its page (500)."""
    return value.hex().upper()


@dataclass(frozen=True)
class AsStored:
    """A cursor's value that its row held against the column's declared type (``'n/a'``
    in a ``DECIMAL`` column, ``'f'`` in a ``BOOLEAN`` one): bound exactly as stored, so
    that a page resumes after it as SQLite orders it (numbers, then text, then blobs)."""

    value: str | int | float


class CursorBound(sa.types.TypeDecorator[Any]):
    """A cursor value's type on SQLite: ``typed``'s binding, or an :class:`AsStored` value
    as it is (the declared type's binding refused ``'f'`` for a boolean)."""

    impl = sa.types.NullType
    cache_ok = True

    def __init__(self, typed: sa.types.TypeEngine[Any]) -> None:
        super().__init__()
        self.typed = typed

    def bind_processor(self, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
        typed = self.typed.dialect_impl(dialect).bind_processor(dialect)

        def process(value: Any) -> Any:
            if isinstance(value, AsStored):
                return value.value
            return typed(value) if typed is not None else value
        return process


class Lenient(sa.types.TypeDecorator[Any]):
    """A column of an application's SQLite table read through its declared type where the
    stored value fits it, and as stored where it does not. Bound as the declared type."""

    impl = sa.types.NullType
    cache_ok = True

    def __init__(self, declared: sa.types.TypeEngine[Any]) -> None:
        super().__init__()
        self.declared = declared

    @staticmethod
    def needed(declared: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> bool:
        """Whether reading ``declared`` converts a value (and so may fail on one)."""
        return declared.dialect_impl(dialect).result_processor(dialect, None) is not None

    def bind_processor(self, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
        return self.declared.dialect_impl(dialect).bind_processor(dialect)

    def result_processor(self, dialect: sa.Dialect, coltype: object
                         ) -> Callable[[Any], Any] | None:
        convert = self.declared.dialect_impl(dialect).result_processor(dialect, coltype)
        if convert is None:
            return None
        if isinstance(self.declared, sa.Boolean):
            # SQLAlchemy's reading is truthiness: the text 'false' would be served as true.
            return lambda value: value != 0 if isinstance(value, int | float) else value
        if isinstance(self.declared, sa.Numeric) and self.declared.asdecimal \
                and self.declared.scale is None:
            # SQLAlchemy pads a number of no declared scale to ten places: SQLite's 1 and
            # 2.5 (a NUMERIC or STRICT ANY column) were served as 1.0000000000, 2.5000000000.
            return lambda value: Decimal(repr(value)) if isinstance(
                value, int | float) else value

        def process(value: Any) -> Any:
            try:
                return convert(value)
            except (ValueError, TypeError, ArithmeticError):
                return value
        return process


class StoredTimestamp(sa.types.TypeDecorator[Any]):
    """A SQLite timestamp or date column of an application's table, read as SQLite stores
    it: text parsed as the column declares (leniently for timestamps, see the module),
    anything else (an application's Unix times, text of no date) served as it is."""

    impl: Any = sa.DateTime
    cache_ok = True

    def result_processor(self, dialect: sa.Dialect, coltype: object
                         ) -> Callable[[Any], Any] | None:
        parse = self.impl_instance.dialect_impl(dialect).result_processor(dialect, coltype)
        if parse is None:
            return None

        def process(value: Any) -> Any:
            if not isinstance(value, str):
                return value
            try:
                return parse(value)
            except ValueError:
                return value
        return process


class StoredDateTime(StoredTimestamp):
    """Text read as a :class:`StoredInstant` (the text kept for keyset cursors), which a
    cursor binds back as that very text."""

    impl = sa.DateTime
    cache_ok = True  # read from each class's own namespace
    #: Text without a zone is read as UTC (aware), not as a naive wall-clock time.
    naive_is_utc = False

    def result_processor(self, dialect: sa.Dialect, coltype: object
                         ) -> Callable[[Any], Any] | None:
        utc = self.naive_is_utc

        def process(value: Any) -> Any:
            if not isinstance(value, str):
                return value
            parsed = read_stored_instant(value, naive_is_utc=utc)
            return StoredInstant.of(parsed, value) if parsed is not None else value
        return process

    def bind_processor(self, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
        format_ = self.impl_instance.dialect_impl(dialect).bind_processor(dialect)

        def process(value: Any) -> Any:
            if isinstance(value, StoredInstant):
                return value.stored
            return format_(value) if format_ is not None else value
        return process


class StoredUTCDateTime(StoredDateTime):
    """A :class:`StoredDateTime` whose text without a zone is UTC, as Sediment's own tables
    and a SQL report's declared ``datetime`` columns are: read aware."""

    cache_ok = True
    naive_is_utc = True


class StoredDate(StoredTimestamp):
    impl = sa.Date
    cache_ok = True


class _InstantText(sa.types.TypeDecorator[Any]):
    """Binds an instant (aware, or naive UTC) as :func:`utc_text`."""

    impl = sa.String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return utc_text(value) if value is not None else None


def instant_condition(column: sa.ColumnElement[Any], op: Operator, name: str
                      ) -> sa.ColumnElement[bool]:
    """``column op :name`` for a :class:`StoredDateTime` column, compared as instants.

    The exact test runs :data:`INSTANT_FUNCTION` on the row; before it, a range on the
    stored text itself, which an index on the column serves. Every spelling of an instant
    starts with its local date, at most a day from its UTC date (zones are within 14
    hours), so an instant at or after the bound starts at or after the day before the
    bound's date, and one at or before it starts before the second day after.
    """
    instant = getattr(sa.func, INSTANT_FUNCTION)(column, type_=sa.String)
    if op == "in":
        in_: sa.ColumnElement[bool] = instant.in_(
            sa.bindparam(name, expanding=True, type_=_InstantText()))
        return in_
    bound = sa.bindparam(name, type_=_InstantText())
    conditions = [COMPARISONS[op](instant, bound)]
    text = sa.type_coerce(column, sa.String)
    if op in ("eq", "gt", "gte"):
        conditions.insert(0, text >= sa.func.date(bound, "-1 days"))
    if op in ("eq", "lt", "lte"):
        conditions.insert(0, text < sa.func.date(bound, "+2 days"))
    return sa.and_(*conditions)
