"""Reading instants written by people (query strings, cursors and command lines) and by
other applications (the text SQLite stores)."""

from __future__ import annotations

import re
from datetime import UTC, datetime


def parse_instant(raw: str) -> datetime:
    """Parse an ISO-8601 date or instant into an aware UTC datetime; no zone means UTC.

    An unencoded ``+02:00`` in a query string arrives as `` 02:00`` and is read as meant.

    :raises ValueError: for anything else, and for an instant whose UTC year is outside
        1 to 9998 (the range both databases store, with room for arithmetic).
    """
    if "T" in raw:
        raw = raw.replace(" ", "+")
    value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    try:
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:  # 0001-01-01T00:00+05:00 is in year 0 in UTC
        raise InstantOutOfRange(raw) from None
    if not 1 <= value.year <= 9998:
        raise InstantOutOfRange(raw)
    return value


class InstantOutOfRange(ValueError):
    """A well-formed instant outside the years :func:`parse_instant` takes; its text says
    so, for the messages that name the value ('9999-12-31' was "not an ISO-8601 date")."""

    def __str__(self) -> str:
        return "outside the years 1 to 9998 (UTC) that both databases store"


#: The space some applications write before a zone (Sequelize on SQLite writes
#: ``2026-01-02 03:04:05.678 +00:00``), which ISO-8601 and ``fromisoformat`` do not have.
_SPACED_ZONE = re.compile(r"\s+(?=(?:[+-]\d\d(?::?\d\d)?|Z)$)")


def read_stored_instant(text: str, *, naive_is_utc: bool = False) -> datetime | None:
    """An instant as another application stored it as text (on SQLite, in a column
    declared ``DATETIME``): ISO-8601 with a ``T`` or a space, any fraction, a zone or none,
    and a space before the zone. An instant with a zone is returned in UTC; one without
    stays naive (its zone is the column's convention), or with ``naive_is_utc`` is UTC.
    ``None`` for text of another form.
    """
    for candidate in (text, _SPACED_ZONE.sub("", text, count=1)):
        try:
            value = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC) if naive_is_utc else value
        try:
            return value.astimezone(UTC)
        except OverflowError:  # 0001-01-01 00:00+05:00 is in year 0 in UTC
            return None
    return None


def utc_text(value: datetime) -> str:
    """An instant as the text :func:`read_stored_instant`'s comparisons use: UTC (naive is
    taken as UTC), ``YYYY-MM-DD HH:MM:SS.ffffff``, which sorts as the instants do."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


class StoredInstant(datetime):
    """A timestamp read from text SQLite stores, with that text (:attr:`stored`).

    SQLite compares and orders such a column by its text, in whatever form the application
    wrote it (``CURRENT_TIMESTAMP`` writes ``2026-01-02 03:04:05``, no fraction). A keyset
    cursor must resume after that very text: bound in SQLAlchemy's own form
    (``...05.000000``) it sorts after the row it came from, and pages repeated or skipped
    rows. Compares, hashes and formats as the datetime it is.
    """

    stored: str

    @classmethod
    def of(cls, value: datetime, stored: str) -> StoredInstant:
        instant = cls(value.year, value.month, value.day, value.hour, value.minute,
                      value.second, value.microsecond, value.tzinfo, fold=value.fold)
        instant.stored = stored
        return instant

    def plain(self) -> datetime:
        """The same instant as a plain ``datetime`` (for encoders that take no subclass)."""
        return datetime(self.year, self.month, self.day, self.hour, self.minute, self.second,
                        self.microsecond, self.tzinfo, fold=self.fold)
