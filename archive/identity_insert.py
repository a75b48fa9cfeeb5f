"""An INSERT that puts archived values back into PostgreSQL identity columns.

A column declared ``GENERATED ALWAYS AS IDENTITY`` refuses any value but its sequence's
("cannot insert a non-DEFAULT value into column"), unless the statement says
``OVERRIDING SYSTEM VALUE``. A restore must write the archived key as it was, so its
INSERT says so. SQLAlchemy has no construct for that clause (it sits between the column
list and ``VALUES``), hence this compilation of an ``Insert`` subclass; every other
dialect compiles it as a plain INSERT.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert


def insert_keeping_identities(table: sa.Table) -> Insert:
    """``table.insert()``, writing given values into identity columns generated always."""
    if any(column.identity is not None and column.identity.always
           for column in table.columns):
        return _OverridingSystemValue(table)
    return table.insert()


class _OverridingSystemValue(Insert):
    inherit_cache = True


@compiles(_OverridingSystemValue, "postgresql")
def _overriding_system_value(insert: _OverridingSystemValue, compiler: SQLCompiler,
                             **kw: Any) -> str:
    text: str = compiler.visit_insert(insert, **kw)  # type: ignore[no-untyped-call]
    # the last " VALUES (": a quoted column name before it may hold those words too
    head, values, tail = text.rpartition(" VALUES (")
    if not values:
        raise sa.exc.CompileError(f"no VALUES clause to override in: {text}")
    return f"{head} OVERRIDING SYSTEM VALUE{values}{tail}"
