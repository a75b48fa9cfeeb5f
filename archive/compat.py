"""Whether ARCHIVE can hold PRIMARY's values exactly, when the two run different engines.

PRIMARY on PostgreSQL with ARCHIVE on SQLite (or the reverse) is supported for the column
types SQLite and PostgreSQL both store losslessly and that read back as the same Python
values, which is what verification compares: integers, text, booleans, floats, binary,
dates, zone-less timestamps, and UTC timestamps through Sediment's ``UTCDateTime``. Anything
else (``numeric`` with a scale, which SQLite keeps as a float; ``timestamptz`` outside
``UTCDateTime``, whose offset SQLite drops; ``jsonb``, arrays, ``uuid``, ranges, network
types) is refused at startup, naming every column, instead of failing verification at 3 a.m.
or, worse, passing it with rounded values. Pure: it reads types, not databases.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from archive.policy import ArchivePolicy
from sediment.core.schema.types import UTCDateTime
from sediment.core.settings import SettingsError

#: Types both engines hold exactly and read back as equal Python values.
_PORTABLE = (sa.Integer, sa.String, sa.Boolean, sa.Float, sa.LargeBinary, sa.Date)


def unportable_columns(policies: Sequence[ArchivePolicy]) -> list[str]:
    """``table.column (type)`` of every archived column that one engine cannot hold as the
    other does; empty when every column is portable."""
    found: list[str] = []
    for policy in (policy for policy in policies if policy.archives):
        for table in policy.tables:
            found.extend(f"{table.fullname}.{column.name} ({column.type})"
                         for column in table.columns if not _portable(column.type))
    return found


def _portable(column_type: sa.types.TypeEngine[object]) -> bool:
    if isinstance(column_type, UTCDateTime):
        return True
    if isinstance(column_type, sa.Enum):  # before String: an Enum is one
        return not column_type.native_enum  # a native enum is a type SQLite does not have
    if isinstance(column_type, (sa.ARRAY, sa.JSON, sa.Uuid, sa.Interval)):
        return False
    if isinstance(column_type, sa.Float):  # before Numeric: a Float is one
        return True
    if isinstance(column_type, sa.Numeric):
        # SQLite keeps an integral value as a 64-bit integer and anything else as a float.
        precision = column_type.precision
        return column_type.scale == 0 and precision is not None and precision <= 18
    if isinstance(column_type, sa.DateTime):
        return not column_type.timezone  # SQLite would drop the offset
    return isinstance(column_type, _PORTABLE)


def check_engines_hold(primary: sa.Engine, archive: sa.Engine,
                       policies: Sequence[ArchivePolicy]) -> None:
    """Refuse two different engines when ARCHIVE could not hold a column exactly.

    :raises SettingsError: naming ``database.archive_url`` and every such column.
    """
    if primary.dialect.name == archive.dialect.name:
        return
    columns = unportable_columns(policies)
    if columns:
        raise SettingsError("database.archive_url", (
            f"PRIMARY runs on {primary.dialect.name} and ARCHIVE on {archive.dialect.name}, "
            f"which cannot hold these columns exactly: {', '.join(columns)}; put ARCHIVE on "
            f"{primary.dialect.name} too"))
