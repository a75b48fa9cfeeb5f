"""Ordering text the way Python compares it, in whichever database holds it.

Two places merge sorted streams from PRIMARY and ARCHIVE in Python (``source=all`` pages
and ``archive verify``). A merge is only right when both streams are sorted the way Python
compares their values, and for text Python compares code points. A database sorts text by
its column's collation instead: PostgreSQL's ``en_US`` or an ICU collation interleaves
cases and accents, SQLite's ``NOCASE`` folds case, ``citext`` folds case whatever the
collation, and an enum sorts by its labels' declared order. Merged with Python's
comparison, such streams skip or repeat rows: a page walk over an application's ``COLLATE
NOCASE`` key went round in a circle.

Code point order is PostgreSQL's ``"C"`` collation (UTF-8 bytes sort as their code points)
and SQLite's ``BINARY``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from sediment.core.schema.types import python_type_of

_CODE_POINT_COLLATION = {"postgresql": "C", "sqlite": "BINARY"}


def in_code_point_order(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """``column`` as a merge in Python must find it sorted: text by code point, whatever
    its collation; an enum by its label's text. Other values are returned as they are
    (numbers, instants, UUIDs and bytes sort alike in SQL and in Python).

    Ordering by a collation other than the column's own forgoes its index: use this only
    where streams are merged.
    """
    if python_type_of(column.type) is not str or dialect not in _CODE_POINT_COLLATION:
        return column
    if dialect == "postgresql" and isinstance(_base(column.type), sa.Enum | postgresql.CITEXT):
        # A native enum takes no collation; citext compares case-folded in any collation.
        column = sa.cast(column, sa.Text)
    return column.collate(_CODE_POINT_COLLATION[dialect])


def _base(column_type: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    while isinstance(column_type, postgresql.DOMAIN):
        column_type = column_type.data_type
    return column_type
