"""Why PRIMARY holds other values than a restore inserted, said so an operator can act.

An application's table may change a row as it is inserted: a ``BEFORE INSERT`` trigger
stamping ``updated_at``, a rule. A restore then reads back rows that differ from the
archived ones, and rolls back, as it must (it brings rows back exactly as archived). The
message said only "rows read back from PRIMARY differ from the archive", on every try;
this names the columns that changed and the table's triggers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from archive.keys import Key

#: Keys and columns a message names at most.
SHOWN = 5


def changed_on_insert(connection: sa.Connection, table: sa.Table, names: Sequence[str],
                      given: Mapping[Key, Sequence[Any]], back: Mapping[Key, Sequence[Any]],
                      differing: Sequence[Key]) -> str:
    """The message for rows PRIMARY holds otherwise than they were inserted.

    :param names: the columns of the rows' values, in order.
    :param differing: the keys whose rows differ (or are missing from ``back``).
    """
    columns = sorted({names[at] for key in differing if key in back
                      for at, (was, now) in enumerate(zip(given[key], back[key], strict=True))
                      if was != now and not (was != was and now != now)})  # NaN is NaN
    keys = ", ".join(",".join(map(str, key)) for key in differing[:SHOWN])
    what = f"{table.fullname} rows (keys {keys})"
    if not columns:
        return (f"restore: PRIMARY does not hold the {what} as they were inserted; PRIMARY "
                "rolled back")
    triggers = triggers_on(connection, table)
    why = (f"the table's triggers ({', '.join(triggers)}) change rows as they are inserted"
           if triggers else "something in PRIMARY (a trigger or a rule) changes rows as "
           "they are inserted")
    return (f"restore: PRIMARY changed the {what} in {', '.join(columns[:SHOWN])} as they "
            f"were inserted: {why}, so they cannot come back as archived; PRIMARY rolled "
            "back. Disable such a trigger while restoring (ALTER TABLE ... DISABLE TRIGGER), "
            "or leave these rows in ARCHIVE")


def triggers_on(connection: sa.Connection, table: sa.Table) -> list[str]:
    """The enabled user triggers on ``table`` (none on an engine Sediment cannot ask)."""
    if connection.dialect.name == "postgresql":
        name = connection.dialect.identifier_preparer.format_table(table)
        return list(connection.execute(sa.text(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(:name)"
            " AND NOT tgisinternal AND tgenabled <> 'D' ORDER BY tgname"),
            {"name": name}).scalars())
    if connection.dialect.name == "sqlite":
        return list(connection.execute(sa.text(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            " AND lower(tbl_name) = lower(:name) ORDER BY name"), {"name": table.name}).scalars())
    return []
