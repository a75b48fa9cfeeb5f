"""Table endpoints: every exposed table of PRIMARY as a row report, over live and archived rows.

Nothing here is written per table. A table's columns, key, indexes and nullability come
from its ``sa.Table`` (the demo schema's, or an existing database's by reflection), and
become an ordinary :class:`~reporting.reports.base.RowReport`: keyset pages over the primary
key (one column or several, of any sortable type), sorts on indexed columns, filters whose
operators follow each column's type, ``source=all`` merged with the table's ARCHIVE twin and
deduplicated through the ledger, CSV, counts and OpenAPI entries, all from the code the
declared reports already use.

A column of a type the API cannot filter or sort (JSON, arrays, binary, XML, intervals...)
is served as its text, with only ``isnull``. Enum labels are served and compared as text,
so that both databases and the merge order them alike.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from reporting.reports.base import (
    SOURCES,
    Column,
    DatabaseTables,
    Filter,
    Operator,
    RowReport,
    ValueType,
)
from reporting.stored_values import Lenient, StoredDate, StoredDateTime
from sediment.core.schema.types import python_type_of

logger = logging.getLogger(__name__)

_SQLITE = sqlite.dialect()
_ORDERED: tuple[Operator, ...] = ("eq", "ne", "in", "gt", "gte", "lt", "lte")
#: The operators of each value type; ``isnull`` is added for nullable columns.
OPERATORS_BY_TYPE: Mapping[ValueType, tuple[Operator, ...]] = {
    "integer": _ORDERED, "number": _ORDERED, "datetime": _ORDERED, "date": _ORDERED,
    "string": (*_ORDERED, "like", "ilike"), "uuid": ("eq", "ne", "in"),
    "boolean": ("eq", "ne"),
}


@dataclass(frozen=True)
class ExposedTable:
    """A table of PRIMARY served at ``/api/v1/tables/<name>``.

    ``archive`` is its ARCHIVE twin and ``root`` the full name of the root table of the
    policy that archives it (itself, or the parent its rows travel with); both are ``None``
    for a table no policy archives, which is served from PRIMARY only.
    """

    name: str
    primary: sa.Table
    archive: sa.Table | None = None
    root: str | None = None


@dataclass(frozen=True)
class TableColumn:
    """How one column is served: its API type (``None``: shown as text, never compared),
    and the values it may hold (an enum's labels, or a demo column's declared choices)."""

    name: str
    type: ValueType | None
    nullable: bool
    choices: tuple[str, ...] | None = None


def value_type(column: sa.ColumnElement[Any]) -> ValueType | None:
    """The API type of a database column, or ``None`` when values can only be shown."""
    column_type = column.type
    if isinstance(column_type, postgresql.DOMAIN):  # a domain is served as its base type
        column_type = column_type.data_type
    if isinstance(column_type, sa.Enum):
        return "string"
    python_type = python_type_of(column_type)
    if python_type is None:
        return None
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"),
                       (Decimal, "number"), (str, "string"), (datetime, "datetime"),
                       (date, "date"), (uuid.UUID, "uuid")):
        if issubclass(python_type, kind):
            return name  # type: ignore[return-value]
    return None


def served_columns(table: sa.Table, hidden: Collection[str]) -> list[TableColumn]:
    """The columns of ``table`` the API serves, in the table's order."""
    columns = []
    for column in table.columns:
        if column.name in hidden:
            continue
        choices = (tuple(column.type.enums) if isinstance(column.type, sa.Enum)
                   else column.info.get("choices"))
        columns.append(TableColumn(column.name, value_type(column), bool(column.nullable),
                                   choices))
    return columns


def table_report(exposed: ExposedTable, hidden: Collection[str] = ()) -> RowReport:
    """The row report of one exposed table.

    :param hidden: names of columns never served (see ``reports.hide_columns``).
    """
    table = exposed.primary
    key = tuple(column.name for column in table.primary_key)
    columns = served_columns(table, hidden)
    typed = {column.name: column for column in columns if column.type is not None}
    indexed = [index.columns[0].name for index in sorted(table.indexes, key=_index_name)
               if len(index.columns)]
    sort_keys = tuple(dict.fromkeys(name for name in (*key, *indexed) if name in typed))
    filters = []
    for column in columns:
        operators: tuple[Operator, ...] = OPERATORS_BY_TYPE[column.type] if column.type else ()
        if column.choices:
            operators = ("eq", "ne", "in")
        if column.nullable:
            operators = (*operators, "isnull")
        if operators:
            filters.append(Filter(column.name, column.type or "string", operators,
                                  choices=column.choices))
    return RowReport(
        name=exposed.name,
        title=exposed.name,
        description=(f"Every row of {exposed.name}, live and archived" if exposed.archive
                     is not None else f"Every row of {exposed.name} (not archived)"),
        columns=tuple(Column(c.name, c.type or "string", nullable=c.nullable) for c in columns),
        key=key,
        sort_keys=sort_keys,
        default_sort=key[0],
        root=exposed.root,
        keyed_table=exposed.name if exposed.root is not None else None,
        sources=SOURCES if exposed.archive is not None else ("primary",),
        filters=tuple(filters),
        query=_table_query(exposed.name, columns),
        collection="tables",
    )


def _index_name(index: sa.Index) -> str:
    return str(index.name or "")


def _table_query(name: str, columns: Sequence[TableColumn]) -> Any:
    """The report's query: the served columns of the table on each database."""

    def query(tables: DatabaseTables, params: Mapping[str, Any]) -> sa.Select[Any]:
        table = tables[name]
        return sa.select(*(_served(table.c[column.name], column, tables.dialect)
                           for column in columns))

    return query


def _served(column: sa.ColumnElement[Any], served: TableColumn,
            dialect: str) -> sa.ColumnElement[Any]:
    """A column as the API serves it: typed values as they are (a domain's as its base
    type's), enum labels, bit strings and values of other types as text."""
    if isinstance(column.type, postgresql.DOMAIN):
        column = sa.type_coerce(column, column.type.data_type).label(served.name)
    # A bit string holds Python text but is no SQL text: filters (like) and the CSV's
    # formula escape (left, ||) need it cast, as an enum's label does.
    bits = served.type == "string" and not isinstance(column.type, sa.String)
    if isinstance(column.type, postgresql.INET):  # as PostgreSQL prints it: a cast to text
        return sa.func.abbrev(column).label(served.name)  # writes an address with its /32
    if isinstance(column.type, sa.Enum) or bits or (
            served.type is None and dialect == "postgresql"):
        return sa.cast(column, sa.Text).label(served.name)
    if dialect == "sqlite" and isinstance(column.type, sa.DateTime | sa.Date):
        stored = StoredDateTime() if isinstance(column.type, sa.DateTime) else StoredDate()
        return sa.type_coerce(column, stored).label(served.name)
    if served.type is not None and dialect == "sqlite" and Lenient.needed(column.type, _SQLITE):
        return sa.type_coerce(column, Lenient(column.type)).label(served.name)
    if served.type is None:
        if isinstance(column.type, sa.LargeBinary):
            return sa.func.hex(column).label(served.name)
        if dialect == "sqlite" and isinstance(  # no type declared, or one of a CatalogType
                column.type, sa.types.NullType | sa.types.UserDefinedType):
            # A column of no type SQLAlchemy knows (none declared, say) holds numbers, text
            # and blobs, each served as it is (a blob as hex): cast to text, a blob came
            # out as its raw bytes, and bytes of no UTF-8 failed the page.
            return column
        return sa.cast(column, sa.Text).label(served.name)
    return column


def table_reports(exposed: Sequence[ExposedTable],
                  hidden_columns: Collection[str] = ()) -> dict[str, RowReport]:
    """The reports of every exposed table that has a primary key, by table name.

    :param hidden_columns: ``table.column`` names never served.
    """
    reports: dict[str, RowReport] = {}
    for table in exposed:
        if not len(table.primary.primary_key):
            logger.warning("table %s has no primary key: it is not served at "
                           "/api/v1/tables (pages need a key to resume after)", table.name)
            continue
        reports[table.name] = table_report(table, hidden_in(table, hidden_columns))
    return reports


def hidden_in(table: ExposedTable, hidden_columns: Collection[str]) -> set[str]:
    """The names of ``table``'s columns that ``hidden_columns`` (``table.column``) names."""
    return {name.rpartition(".")[2] for name in hidden_columns
            if name.rpartition(".")[0] in (table.name, table.primary.name)}


def with_tables(tables: DatabaseTables, exposed: Sequence[ExposedTable]) -> DatabaseTables:
    """``tables`` and the exposed tables of this database (PRIMARY's, or ARCHIVE's twins),
    by the names they are served under."""
    by_name: dict[str, sa.FromClause] = dict(tables.tables)
    for table in exposed:
        found = table.primary if tables.database == "primary" else table.archive
        if found is not None:
            by_name[table.name] = found
    return DatabaseTables(tables.database, by_name, tables.dialect)
