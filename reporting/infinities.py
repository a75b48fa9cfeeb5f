"""PostgreSQL's ``infinity`` and ``-infinity`` timestamps and dates, as reports read them.

psycopg2 reads ``'infinity'::timestamptz`` as ``datetime.max`` and ``'-infinity'`` as
``datetime.min`` (dates as ``date.max`` and ``date.min``), and binds those back as the
finite values they are. A keyset cursor taken at such a row therefore resumed after
``9999-12-31 23:59:59.999999``, which PostgreSQL orders below ``infinity``: pages sorted by
the column skipped every other row holding ``-infinity`` and repeated or skipped those
holding ``infinity`` (a temporal table's ``valid_to = 'infinity'``, a lease that never
ends). Both are common in applications' schemas.

The report engines read them here as :class:`InfiniteDatetime` and :class:`InfiniteDate`:
subclasses that are shown as the finite values psycopg2 gave (the pages and the CSV
downloads write what they wrote before), compare above (below) every finite value, as
PostgreSQL orders them, so a merged page keeps the databases' order, and are bound back as
``'infinity'`` (``'-infinity'``), which PostgreSQL reads as the type of the column it is
compared with. A genuine ``9999-12-31`` stays a plain date: the two are told apart, as
PostgreSQL tells them apart.

Report connections read them so by typecasters written in Python, one call per timestamp
read: on a page of 100 rows, about 28 of its 600 us of CPU time. The page path
(:mod:`reporting.pgfetch`) therefore reads with psycopg2's own typecasters, in C, and
checks the timestamp and date columns for the values those give ``infinity`` and
``-infinity`` (:func:`may_hold_infinity`). Only a page holding one (an infinity, or the
genuine limit value, which C cannot tell apart) is read again with the casters here.

psycopg2 is imported by the first PostgreSQL connection's ``connect`` event, not with this
module: every report imports it, and on the embedded SQLite default psycopg2 was 4.6 MB of
the service's memory at rest, for nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

#: PostgreSQL's text for each sign.
_TEXT = {1: "infinity", -1: "-infinity"}


class _Infinite:
    """Comparisons of a signed infinity with the finite values of its base type."""

    sign: int
    _finite: type

    def _against(self, other: Any) -> int | None:
        """``other``'s sign: its own if infinite, 0 if a finite value of the base type."""
        if isinstance(other, _Infinite) and other._finite is self._finite:
            return other.sign
        if isinstance(other, self._finite) and not (self._finite is date
                                                     and isinstance(other, datetime)):
            return 0
        return None

    def __eq__(self, other: object) -> bool:
        sign = self._against(other)
        return NotImplemented if sign is None else self.sign == sign

    def __ne__(self, other: object) -> bool:
        sign = self._against(other)
        return NotImplemented if sign is None else self.sign != sign

    def __lt__(self, other: Any) -> bool:
        sign = self._against(other)
        return NotImplemented if sign is None else self.sign < sign

    def __le__(self, other: Any) -> bool:
        sign = self._against(other)
        return NotImplemented if sign is None else self.sign <= sign

    def __gt__(self, other: Any) -> bool:
        sign = self._against(other)
        return NotImplemented if sign is None else self.sign > sign

    def __ge__(self, other: Any) -> bool:
        sign = self._against(other)
        return NotImplemented if sign is None else self.sign >= sign

    def __hash__(self) -> int:
        return hash((self._finite.__name__, "infinity", self.sign))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_TEXT[self.sign]!r})"


class InfiniteDatetime(_Infinite, datetime):
    """``infinity`` or ``-infinity`` of a ``timestamp`` or ``timestamptz`` column: shown
    as psycopg2 reads it, ``datetime.max`` or ``datetime.min`` (aware for ``timestamptz``)."""

    _finite = datetime

    @classmethod
    def of(cls, sign: int, shown: datetime) -> InfiniteDatetime:
        made = cls(shown.year, shown.month, shown.day, shown.hour, shown.minute,
                   shown.second, shown.microsecond, shown.tzinfo)
        made.sign = sign
        return made

    def plain(self) -> datetime:
        """The finite value it is shown as (for encoders that take no subclass)."""
        return datetime(self.year, self.month, self.day, self.hour, self.minute,
                        self.second, self.microsecond, self.tzinfo)


class InfiniteDate(_Infinite, date):
    """``infinity`` or ``-infinity`` of a ``date`` column: shown as psycopg2 reads it,
    ``date.max`` or ``date.min``."""

    _finite = date

    @classmethod
    def of(cls, sign: int, shown: date) -> InfiniteDate:
        made = cls(shown.year, shown.month, shown.day)
        made.sign = sign
        return made

    def plain(self) -> date:
        """The finite value it is shown as (for encoders that take no subclass)."""
        return date(self.year, self.month, self.day)


_SIGNS = {text: sign for sign, text in _TEXT.items()}

#: What psycopg2's own typecasters read ``infinity`` and ``-infinity`` as, by type OID
#: (``timestamptz``, ``timestamp``, ``date``): a finite value each, also read from the
#: genuine latest and earliest values.
_C_READS_INFINITY_AS: dict[int, tuple[date, date]] = {
    1184: (datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC)),
    1114: (datetime.max, datetime.min),
    1082: (date.max, date.min),
}


def infinity(sign: int, type_name: str) -> InfiniteDatetime | InfiniteDate:
    """A signed infinity of a catalog type (``datetime`` or ``date``), as a cursor
    carries it back (bound untyped, it needs no zone to match its column)."""
    if type_name == "date":
        return InfiniteDate.of(sign, date.max if sign > 0 else date.min)
    shown = datetime.max if sign > 0 else datetime.min
    return InfiniteDatetime.of(sign, shown.replace(tzinfo=UTC))


def _reading_infinities(pg: Any, base: Any, make: Any) -> Any:
    """psycopg2's typecaster ``base``, reading ``infinity`` and ``-infinity`` as ``make``."""

    def cast(text: str | None, cursor: Any) -> Any:
        value = base(text, cursor)
        sign = _SIGNS.get(text) if text is not None else None
        return value if sign is None else make(sign, value)

    return pg.new_type(base.values, f"SEDIMENT_{base.name}", cast)


def read_infinities(dbapi_connection: Any, _record: Any = None) -> None:
    """Make a psycopg2 connection read infinities as :class:`InfiniteDatetime` and
    :class:`InfiniteDate` (a ``connect`` event listener)."""
    pg, casters = _psycopg2_casters()
    for caster in casters:
        pg.register_type(caster, dbapi_connection)


def read_in_c(cursor: Any) -> None:
    """Make ``cursor`` read timestamps and dates with psycopg2's own typecasters (in C),
    in place of its connection's (see :func:`may_hold_infinity`)."""
    pg, _ = _psycopg2_casters()
    for caster in (pg.PYDATETIMETZ, pg.PYDATETIME, pg.PYDATE):
        pg.register_type(caster, cursor)


def may_hold_infinity(description: Sequence[Any], rows: Sequence[Sequence[Any]]) -> bool:
    """Whether ``rows``, read by a cursor of :func:`read_in_c`, may hold an infinity: a
    value of a timestamp or date column that psycopg2's typecasters also read
    ``infinity`` or ``-infinity`` as. Such rows must be read again with the casters of
    this module, which tell the two apart."""
    for index, column in enumerate(description):
        ends = _C_READS_INFINITY_AS.get(column.type_code)
        if ends is not None:
            values = [row[index] for row in rows]
            if ends[0] in values or ends[1] in values:
                return True
    return False


@functools.cache
def _psycopg2_casters() -> tuple[Any, tuple[Any, ...]]:
    """psycopg2's extensions and the typecasters reading infinities, made once; the
    adapters binding them back are registered (for every connection) on the way."""
    import psycopg2.extensions as pg

    def adapt(value: InfiniteDatetime | InfiniteDate) -> Any:
        # Untyped, so PostgreSQL reads it as the column it is compared with (a cast to
        # timestamptz would make a timestamp column's index unusable for the comparison).
        return pg.AsIs(f"'{_TEXT[value.sign]}'")

    pg.register_adapter(InfiniteDatetime, adapt)
    pg.register_adapter(InfiniteDate, adapt)
    return pg, (_reading_infinities(pg, pg.PYDATETIMETZ, InfiniteDatetime.of),
                _reading_infinities(pg, pg.PYDATETIME, InfiniteDatetime.of),
                _reading_infinities(pg, pg.PYDATE, InfiniteDate.of))
