"""Quoted SQL names for text that no driver interpolates.

SQLAlchemy's identifier preparer doubles ``%`` in names for psycopg2, whose parameter
interpolation turns ``%%`` back into ``%``: right for every statement SQLAlchemy executes
(``exec_driver_sql`` too, which always passes parameters), wrong wherever the quoted name is
not interpolated: in a ``COPY`` (psycopg2's ``copy_expert`` takes no parameters) and in a
name passed as a value (``CAST(:table AS regclass)``). A column called ``100%`` failed
every batch with 'column "100%%" of relation ... does not exist'.
"""

from __future__ import annotations

import sqlalchemy as sa


def uninterpolated(dialect: sa.Dialect, sql: str) -> str:
    """``sql`` whose names the dialect's preparer quoted, for a statement no driver
    interpolates. Every ``%`` in it must come from a quoted name (no literals, no
    placeholders)."""
    if dialect.paramstyle in ("format", "pyformat"):
        return sql.replace("%%", "%")
    return sql


def quoted_table(dialect: sa.Dialect, table: sa.Table) -> str:
    """``schema.table`` (or ``table``) quoted as the dialect requires, for a statement no
    driver interpolates, or as a value (``CAST(:table AS regclass)``)."""
    return uninterpolated(dialect, dialect.identifier_preparer.format_table(table))
