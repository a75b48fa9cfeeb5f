"""How a policy's age column is compared with a cutoff, whatever the column holds.

Pure: no connections. Application schemas keep "when" in many shapes: ``timestamptz``;
``timestamp`` without a zone (in UTC, or in the zone the application wrote it in); a
``date``; an integer Unix epoch in seconds or milliseconds; ISO-8601 text (common on
SQLite). Each is compared with the cutoff converted to the column's own shape, so the
comparison stays a plain ``column < value`` an index can serve, except ISO text, which
is normalised by the database first (its spellings do not sort alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

from sediment.core.schema.types import python_type_of
from sediment.core.settings import SettingsError

#: What the age column holds: ``timestamp`` covers timestamps with and without a zone and
#: dates (told apart by the column's type); the others must be declared.
AgeFormat = Literal["timestamp", "epoch_seconds", "epoch_milliseconds", "iso_text"]
AGE_FORMATS: tuple[AgeFormat, ...] = get_args(AgeFormat)


@dataclass(frozen=True)
class AgeColumn:
    """A root table's age column, its format, and the zone of zone-less values."""

    column: sa.Column[Any]
    format: AgeFormat
    zone: ZoneInfo

    def before(self, cutoff: datetime) -> sa.ColumnElement[bool]:
        """Rows whose age is before ``cutoff`` (an aware instant)."""
        column = self.column
        # Numbers compared as numbers, whatever the column declares (SQLite keeps epochs in
        # a column declared DATETIME too); the column itself stays bare for its index.
        if self.format == "epoch_seconds":
            return sa.type_coerce(column, sa.BigInteger) < int(cutoff.timestamp())
        if self.format == "epoch_milliseconds":
            return sa.type_coerce(column, sa.BigInteger) < int(cutoff.timestamp() * 1000)
        if self.format == "iso_text":
            text = cutoff.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%d %H:%M:%S")
            return _IsoInstant(column) < _IsoInstant(sa.literal(text))
        bound: date
        if python_type_of(column.type) is date:
            # A day counts as aged once all of it is before the cutoff, in the zone it was
            # written in: the cutoff's own day waits for the next run.
            bound = cutoff.astimezone(self.zone).date()
        elif getattr(column.type, "timezone", False):
            bound = cutoff
        else:
            bound = cutoff.astimezone(self.zone).replace(tzinfo=None)
            if isinstance(column.type, sa.DateTime):  # as reflected, not Sediment's own type
                return _spelled_before(column, bound)
        return sa.and_(HeldAsText(column), column < bound)


def _spelled_before(column: sa.ColumnElement[Any], bound: datetime) -> sa.ColumnElement[bool]:
    """An application's SQLite ``DATETIME`` column before ``bound``, whatever its spelling.

    SQLite compares the column as the text the application wrote: ``2026-01-02T03:04:05Z``
    sorts after ``2026-01-02 23:00:00`` (``T`` after the space), and an offset's local time
    (``...-10:00``) is hours from its instant, so a text comparison moved rows up to a day
    late, or hours early. SQLite's own ``strftime`` reads every such spelling (``T`` or a
    space, ``Z``, offsets, a space before the zone) as UTC, to the millisecond; NULL for
    text of no date, which never counts as aged. The range on the stored text before it
    (from the least date to the second day after the bound's: zones are within 14 hours)
    keeps the column's index in use and leaves numbers out.
    """
    upper = (bound.date() + timedelta(days=2)).isoformat()
    return _SpelledBefore(column, sa.bindparam(None, bound, type_=column.type),
                          sa.literal(upper), sa.literal(bound.isoformat(" ", "milliseconds")))


class _SpelledBefore(sa.sql.expression.FunctionElement[Any]):
    """``column < bound`` (PostgreSQL's timestamps compare as instants), on SQLite
    :func:`_spelled_before`'s comparison; arguments: column, bound, the text range's upper
    end, the bound as ``strftime`` writes it."""

    # Not Boolean: SQLite would get ``(...) = 1``, which no index serves.
    type: Any = sa.types.NullType()
    inherit_cache = True
    name = "spelled_before"


@compiles(_SpelledBefore, "sqlite")
def _spelled_before_sqlite(element: _SpelledBefore, compiler: Any, **kw: Any) -> str:
    column, _, upper, instant = (compiler.process(part, **kw) for part in element.clauses)
    return (f"({column} >= '0000-00-00' AND {column} < {upper} AND "
            f"strftime('%Y-%m-%d %H:%M:%f', {column}) < {instant})")


@compiles(_SpelledBefore)
def _spelled_before_default(element: _SpelledBefore, compiler: Any, **kw: Any) -> str:
    column, bound, *_ = element.clauses
    return f"{compiler.process(column, **kw)} < {compiler.process(bound, **kw)}"


def resolve_age_column(column: sa.Column[Any], age_format: AgeFormat, zone: str,
                       key: str) -> AgeColumn:
    """Check that ``column`` can hold ``age_format``.

    :raises SettingsError: naming ``key`` (the policy's ``age_column``) and the mismatch.
    """
    python_type = python_type_of(column.type)
    expected: dict[AgeFormat, tuple[type, ...]] = {
        "timestamp": (datetime, date),
        # A column declared a timestamp too: SQLite stores epochs in one. Where the database
        # cannot compare it with a number, archive.preflight stops startup naming age_format.
        "epoch_seconds": (int, float, datetime, date),
        "epoch_milliseconds": (int, float, datetime, date),
        "iso_text": (str,),
    }
    if python_type is None or not issubclass(python_type, expected[age_format]):
        shown = python_type.__name__ if python_type else str(column.type)
        hint = {"timestamp": "a timestamp or a date; for numbers declare age_format = "
                             "'epoch_seconds', for ISO-8601 text age_format = 'iso_text'",
                "epoch_seconds": "a number of seconds", "epoch_milliseconds":
                "a number of milliseconds", "iso_text": "ISO-8601 text"}[age_format]
        raise SettingsError(key, f"{column.table.name}.{column.name} holds {shown}, "
                            f"not {hint}")
    return AgeColumn(column=column, format=age_format, zone=ZoneInfo(zone))


class HeldAsText(sa.sql.expression.FunctionElement[bool]):
    """Whether a timestamp or date column's value is stored as text, as timestamps are.

    SQLite stores what it is given: a column declared ``DATETIME`` may hold an
    application's Unix epochs or Julian days, and a number sorts before every text, so
    before any cutoff: every such row would count as aged. It never does (see
    :func:`archive.preflight.check_conditions`, which names the setting that reads it).
    Nor does text that cannot start with a year (an application's ``''`` for "unknown"
    sorts before every date too). On PostgreSQL the column's type guarantees it.
    """

    type = sa.Boolean()
    inherit_cache = True
    name = "held_as_text"


@compiles(HeldAsText, "sqlite")
def _held_as_text_sqlite(element: HeldAsText, compiler: Any, **kw: Any) -> str:
    # The index's range of text from the least date on. Not '0': a column declared DATETIME
    # has NUMERIC affinity, which would make that the number 0, after every Unix time.
    return f"({compiler.process(element.clauses, **kw)} >= '0000-00-00')"


@compiles(HeldAsText)
def _held_as_text(element: HeldAsText, compiler: Any, **kw: Any) -> str:
    return "true"


class _IsoInstant(sa.sql.expression.FunctionElement[Any]):
    """ISO-8601 text as a UTC instant the database compares correctly: SQLite's
    ``datetime(x)`` (which also reads ``T``, ``Z`` and offsets), PostgreSQL's cast."""

    inherit_cache = True
    name = "iso_instant"


@compiles(_IsoInstant, "sqlite")
def _iso_instant_sqlite(element: _IsoInstant, compiler: Any, **kw: Any) -> str:
    return f"datetime({compiler.process(element.clauses, **kw)})"


@compiles(_IsoInstant, "postgresql")
def _iso_instant_postgresql(element: _IsoInstant, compiler: Any, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS timestamptz)"
