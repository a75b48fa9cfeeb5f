"""What a report declares: columns, parameters, filters, sources, sort keys, and its query.

Two kinds share one interface for the HTTP layer, the CSV exporter and the OpenAPI generator:

* :class:`RowReport`: one row per record. Its query runs on each database; pages come from
  keyset conditions in SQL, and ``source=all`` merges the two sorted streams.
* :class:`AggregateReport`: grouped figures. Its query returns per-database partial
  aggregates, which are combined exactly in pandas (sums add, minima take the minimum, and
  distinct counts add because a row lives in only one database), then sorted and paged.

Queries never join across databases: values that live only in PRIMARY (customer names,
product categories) arrive through :class:`Lookup` after the query, or as literals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

import sqlalchemy as sa

from sediment.core.databases import Database

if TYPE_CHECKING:
    import pandas as pd

#: Which rows a request reads: one database's, or both merged (``?source=``).
Source = Literal["primary", "archive", "all"]
SOURCES: tuple[Source, ...] = get_args(Source)
#: Filter operators: ``?column[op]=value``; a bare ``?column=value`` is ``eq``. ``like``
#: and ``ilike`` take SQL patterns (``%`` and ``_``), ``isnull`` takes ``true`` or ``false``.
Operator = Literal["eq", "ne", "in", "gt", "gte", "lt", "lte", "like", "ilike", "isnull"]
OPERATORS: tuple[Operator, ...] = get_args(Operator)
#: The declared type of a column, parameter or filter value.
ValueType = Literal["integer", "number", "string", "datetime", "date", "uuid", "boolean"]
#: JSON Schema types of each value type.
JSON_TYPES: dict[ValueType, str] = {"integer": "integer", "number": "number",
                                    "string": "string", "datetime": "string", "date": "string",
                                    "uuid": "string", "boolean": "boolean"}
#: Where a report is served: ``/api/v1/reports/<name>`` (declared reports) or
#: ``/api/v1/tables/<name>`` (a table of PRIMARY, with its archived rows).
Collection = Literal["reports", "tables"]
#: How partial aggregates of the two databases combine into one figure.
Combine = Literal["sum", "min", "max"]


@dataclass(frozen=True)
class Column:
    """An output column."""

    name: str
    type: ValueType
    description: str = ""
    #: Whether the column can hold NULL: a nullable sort column orders NULLs last
    #: (first when descending) on both databases, and pages resume across them.
    nullable: bool = False


@dataclass(frozen=True)
class Filter:
    """A filter on an output column: ``?name=v`` (eq) or ``?name[op]=v``."""

    column: str
    type: ValueType
    operators: tuple[Operator, ...] = ("eq",)
    description: str = ""
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Param:
    """A parameter that shapes the query itself (not a filter on its output)."""

    name: str
    type: ValueType
    default: Any
    description: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Lookup:
    """Fill ``column`` from a PRIMARY reference table by the row's ``key`` column."""

    column: str
    key: str
    table: str
    value: str


@dataclass(frozen=True)
class DatabaseTables:
    """The tables a report may read on one database (reference tables only in PRIMARY)."""

    database: Database
    tables: Mapping[str, sa.FromClause]
    dialect: str

    def __getitem__(self, name: str) -> sa.FromClause:
        return self.tables[name]


@dataclass(frozen=True, kw_only=True)
class Report:
    """Fields common to both kinds; see the module docstring.

    ``root`` names the archival policy's root table, whose ledger entries tell when rows
    may be in both databases (caught between an archiver's two commits); ``keyed_table``
    (by default ``root``) is the table whose primary key identifies one output row: merged
    results drop ARCHIVE rows whose key is still in that table in PRIMARY, and aggregates
    exclude them. A report over tables no policy archives has no ``root``.
    """

    name: str
    title: str
    description: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    sort_keys: tuple[str, ...]
    default_sort: str
    root: str | None
    sources: tuple[Source, ...] = SOURCES
    keyed_table: str | None = None
    collection: Collection = "reports"
    filters: tuple[Filter, ...] = ()
    params: tuple[Param, ...] = ()
    lookups: tuple[Lookup, ...] = ()
    #: The token scope reading it needs (beside ``csv`` for a download): the archive's own
    #: ledger is for operators, not for every reader of the data.
    scope: Literal["reports", "archive"] = "reports"

    kind = "rows"

    @property
    def rows_table(self) -> str | None:
        """The table whose key identifies an output row (see the class docstring)."""
        return self.keyed_table or self.root

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def key_for(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        """The columns that identify a row for these parameters (a pivot changes them)."""
        return self.key

    def sort_keys_for(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        return self.sort_keys


@dataclass(frozen=True, kw_only=True)
class RowReport(Report):
    """A report of records; ``query`` returns a labelled Select including every key column."""

    query: Callable[[DatabaseTables, Mapping[str, Any]], sa.Select[Any]]


@dataclass(frozen=True, kw_only=True)
class AggregateReport(Report):
    """A report of groups; ``partials`` returns one database's partial aggregates.

    ``combine`` maps each partial column to ``sum``, ``min`` or ``max``; ``group_by`` are
    the partial columns that identify a group. ``finish`` turns the combined frame into
    the output (derived columns, lookups already applied, pivots).
    """

    partials: Callable[[DatabaseTables, Mapping[str, Any], ReferenceData], sa.Select[Any]]
    group_by: tuple[str, ...]
    combine: Mapping[str, Combine]
    finish: Callable[[pd.DataFrame, Mapping[str, Any]], pd.DataFrame] | None = None
    #: The key of the wide form, when a ``pivot`` parameter other than ``none`` is given.
    wide_key: tuple[str, ...] = ()

    kind = "aggregate"

    def is_wide(self, params: Mapping[str, Any]) -> bool:
        return bool(self.wide_key) and params.get("pivot", "none") != "none"

    def key_for(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        return self.wide_key if self.is_wide(params) else self.key

    def sort_keys_for(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        if self.is_wide(params):
            return tuple(k for k in self.sort_keys if k in self.wide_key)
        return self.sort_keys


@dataclass(frozen=True)
class ReferenceData:
    """PRIMARY reference values a partial query may need as literals (never a join)."""

    product_categories: Mapping[int, str]


def total(expression: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    """``sum`` as a whole number on both backends (PostgreSQL sums bigint into numeric)."""
    return sa.cast(sa.func.coalesce(sa.func.sum(expression), 0), sa.BigInteger)


def month_of(column: sa.ColumnElement[datetime], dialect: str) -> sa.ColumnElement[str]:
    """The UTC month of a timestamp as ``YYYY-MM``, on either backend."""
    if dialect == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM")
    return sa.func.strftime("%Y-%m", column)
