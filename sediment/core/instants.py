"""Reading instants written by people: query strings, cursors and command lines."""

from __future__ import annotations

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
        raise ValueError(raw) from None
    if not 1 <= value.year <= 9998:
        raise ValueError(raw)
    return value


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
