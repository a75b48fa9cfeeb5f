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
