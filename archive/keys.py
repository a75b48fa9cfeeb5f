"""Keys of any shape: one column or several, integers, uuids, text, dates.

A key is a tuple of column values, in the order of the columns it was read from. The
archiver only ever needs three things from keys: select the rows after one (keyset, never
OFFSET), select the rows of many (a batch's deletes and read-backs, 20,000 at a time), and
compare them. Everything here builds those conditions for whichever columns a table has.

On PostgreSQL a key is handed to the server as text and cast to the column's own type
(``CAST('{...}' AS uuid[])``, ``(a, b) IN (SELECT * FROM unnest(...))``): one parameter
per column whatever the batch size, any type with a text form (uuid, numeric, timestamps,
enums, domains), and rows read out by ``COPY`` carry their keys as exactly that text. A
single integer column keeps its own faster form: one ``bigint[]`` and a range the planner
can walk. SQLite gets chunked ``IN`` lists (row values for a composite key), or, where
the keys must be one condition of any length (:func:`keys_in`), one JSON parameter.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles

from sediment.core.instants import parse_instant
from sediment.core.schema.types import python_type_of

Key = tuple[Any, ...]

#: Bound parameters per statement on SQLite, under its limit of 32,766.
SQLITE_PARAMETERS_PER_STATEMENT = 10_000


def key_columns(table: sa.Table) -> tuple[sa.Column[Any], ...]:
    """The primary-key columns of ``table``, in key order.

    :raises ValueError: for a table without a primary key: the archiver copies, verifies
        and deletes rows by key, and a row nothing identifies cannot be proved copied.
    """
    columns = tuple(table.primary_key.columns)
    if not columns:
        raise ValueError(f"table {table.fullname!r} has no primary key, nor a unique index "
                         "over NOT NULL columns to serve as one: the archiver copies, "
                         "verifies and deletes rows by key; add either")
    return columns


def is_integer(column: sa.ColumnElement[Any]) -> bool:
    """Whether a column holds integers (its keys are then read and bound as ``int``)."""
    return isinstance(column.type, sa.Integer)


def integer_key(columns: Sequence[sa.ColumnElement[Any]]) -> bool:
    """Whether a key is one integer column: the fast path on every backend."""
    return len(columns) == 1 and is_integer(columns[0])


def key_text(value: Any) -> str:
    """A value in the text form PostgreSQL's input functions read back as the same value."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


def array_literal(values: Sequence[str], *, quote: bool = True) -> str:
    """A PostgreSQL array literal of text elements, each quoted (so commas, braces, quotes,
    backslashes and the word NULL are all plain characters) unless ``quote`` is off, for
    values whose text form can hold none of those (numbers, uuids, dates)."""
    if not quote:
        return "{" + ",".join(values) + "}"
    return "{" + ",".join(
        '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values) + "}"


#: Types whose text form is digits, letters, dashes, dots and colons: no quoting needed.
_PLAIN_TEXT = (sa.Integer, sa.Numeric, sa.Uuid, sa.Date)


def typed_array(column: sa.ColumnElement[Any], values: Sequence[Any]) -> sa.ColumnElement[Any]:
    """One parameter holding ``values`` as an array of ``column``'s type (PostgreSQL)."""
    if is_integer(column):
        texts = [str(value) for value in values]
    else:  # text forms from COPY lines already; Python values from a portable-path row
        texts = [value if type(value) is str else key_text(value) for value in values]
    literal = array_literal(texts, quote=not isinstance(column.type, _PLAIN_TEXT))
    return sa.cast(sa.bindparam(None, literal, type_=sa.Text), postgresql.ARRAY(column.type))


def key_filters(columns: Sequence[sa.ColumnElement[Any]], keys: Sequence[Key],
                dialect: sa.Dialect) -> Iterator[sa.ColumnElement[bool]]:
    """Yield conditions that together select the rows whose ``columns`` hold one of
    ``keys``: one condition on PostgreSQL, chunks of ``IN`` lists on SQLite."""
    if not keys:
        return
    if dialect.name == "postgresql":
        yield _postgres_filter(columns, keys)
        return
    per_statement = max(1, SQLITE_PARAMETERS_PER_STATEMENT // len(columns))
    for start in range(0, len(keys), per_statement):
        yield _in_list(columns, keys[start:start + per_statement])


def _in_list(columns: Sequence[sa.ColumnElement[Any]],
             keys: Sequence[Key]) -> sa.ColumnElement[bool]:
    """``columns IN (...)`` with a bound value per key column (row values for several)."""
    if len(columns) == 1:
        return columns[0].in_([key[0] for key in keys])
    return sa.tuple_(*columns).in_([tuple(key) for key in keys])


def _postgres_filter(columns: Sequence[sa.ColumnElement[Any]],
                     keys: Sequence[Key]) -> sa.ColumnElement[bool]:
    if integer_key(columns):
        # One text parameter cast to bigint[]: psycopg2 adapts a 20,000-element list item by
        # item, and the range lets the planner walk one stretch of the index.
        (column,) = columns
        values = [int(key[0]) for key in keys]
        literal = "{" + ",".join(map(str, values)) + "}"
        array = sa.cast(sa.bindparam(None, literal, type_=sa.Text),
                        postgresql.ARRAY(sa.BigInteger))
        return sa.and_(column.between(min(values), max(values)), column == sa.any_(array))
    arrays = [typed_array(column, [key[i] for key in keys]) for i, column in enumerate(columns)]
    if len(columns) == 1:
        return columns[0] == sa.any_(arrays[0])
    listed = sa.func.unnest(*arrays).table_valued(
        *(f"k{i}" for i in range(len(columns)))).render_derived()
    return sa.tuple_(*columns).in_(sa.select(*listed.c))


def key_after(columns: Sequence[sa.ColumnElement[Any]], key: Key,
              dialect: sa.Dialect) -> sa.ColumnElement[bool]:
    """``columns > key`` in key order: a row-value comparison for a composite key, which
    both backends answer from the primary-key index."""
    values = [_bound(column, value, dialect) for column, value in zip(columns, key, strict=True)]
    if len(columns) == 1:
        return columns[0] > values[0]
    return sa.tuple_(*columns) > sa.tuple_(*values)


def _bound(column: sa.ColumnElement[Any], value: Any,
           dialect: sa.Dialect) -> sa.ColumnElement[Any]:
    if dialect.name == "postgresql" and not is_integer(column):
        return sa.cast(sa.bindparam(None, key_text(value), type_=sa.Text), column.type)
    return sa.bindparam(None, value, type_=column.type)


def keys_in(columns: Sequence[sa.ColumnElement[Any]],
            keys: Sequence[Key]) -> sa.ColumnElement[bool]:
    """``columns IN (keys...)`` as one condition of any length, on any backend: the roots
    a restore marked, which a policy's runs leave alone (as many as an archive run moved).

    Compiled per backend (:class:`_ListedKeys`): one parameter per key column on
    PostgreSQL, as :func:`key_filters`; one JSON parameter on SQLite, whose statements take
    at most 32,766 parameters (an ``IN`` list of a value each made every run of a policy
    fail with "too many SQL variables" once a restore had brought that many roots back).
    """
    return _ListedKeys(*columns, keys=keys)


class _ListedKeys(sa.sql.expression.FunctionElement[bool]):
    """``columns IN (keys...)``; the arguments are the columns, ``keys`` their values."""

    type = sa.Boolean()
    #: The keys are no part of a cache key: statements holding them are compiled anew.
    inherit_cache = False
    name = "listed_keys"

    def __init__(self, *columns: sa.ColumnElement[Any], keys: Sequence[Key]) -> None:
        super().__init__(*columns)
        self.keys = tuple(keys)


@compiles(_ListedKeys, "postgresql")
def _listed_keys_postgresql(element: _ListedKeys, compiler: Any, **kw: Any) -> str:
    if not element.keys:
        return str(compiler.process(sa.false(), **kw))
    return f"({compiler.process(_postgres_filter(list(element.clauses), element.keys), **kw)})"


@compiles(_ListedKeys, "sqlite")
def _listed_keys_sqlite(element: _ListedKeys, compiler: Any, **kw: Any) -> str:
    columns = list(element.clauses)
    listed = _json_keys(columns, element.keys, compiler.dialect)
    if listed is None:  # a value JSON cannot hold (a blob): an IN list, short lists only
        return _listed_keys_default(element, compiler, **kw)
    # json_each's values have no affinity, so the column's applies, as to a bound value.
    values = ("value" if len(columns) == 1 else
              ", ".join(f"json_extract(value, '$[{index}]')" for index in range(len(columns))))
    parameter = compiler.process(sa.bindparam(None, listed, type_=sa.Text), **kw)
    listed_columns = ", ".join(compiler.process(column, **kw) for column in columns)
    if len(columns) > 1:
        listed_columns = f"({listed_columns})"
    return f"({listed_columns} IN (SELECT {values} FROM json_each({parameter})))"


@compiles(_ListedKeys)
def _listed_keys_default(element: _ListedKeys, compiler: Any, **kw: Any) -> str:
    condition = _in_list(list(element.clauses), element.keys)
    return str(compiler.process(condition.self_group(), **kw))


def _json_keys(columns: Sequence[sa.ColumnElement[Any]], keys: Sequence[Key],
               dialect: sa.Dialect) -> str | None:
    """``keys`` as a JSON list of the values as they would be bound (each through its
    column's bind processor), or None when one has no JSON form (bytes, a NaN)."""
    processors = [column.type.dialect_impl(dialect).bind_processor(dialect)
                  for column in columns]
    values = [[value if process is None else process(value)
               for process, value in zip(processors, key, strict=True)] for key in keys]
    try:
        return json.dumps([row[0] for row in values] if len(columns) == 1 else values,
                          ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return None


def columns_in(columns: Sequence[sa.ColumnElement[Any]],
               query: sa.Select[Any]) -> sa.ColumnElement[bool]:
    """``columns IN (query)``, as a row value when there are several."""
    if len(columns) == 1:
        return columns[0].in_(query)
    return sa.tuple_(*columns).in_(query)


def columns_match(left: Sequence[sa.ColumnElement[Any]],
                  right: Sequence[sa.ColumnElement[Any]]) -> sa.ColumnElement[bool]:
    """Pairwise equality of two column lists (a join condition)."""
    return sa.and_(*(a == b for a, b in zip(left, right, strict=True)))


class BadKey(ValueError):
    """A key given on the command line that the table's key columns cannot hold."""


def parse_key(table: sa.Table, text: str) -> Key:
    """A key as written on the command line: the value of a one-column key, the values of a
    composite key separated by commas (``7,3``), or a JSON list (``["a,b", 3]``) when a
    value holds a comma. Each value is read as its column's type.

    :raises BadKey: naming the table's key columns when the count or a value is wrong.
    """
    columns = key_columns(table)
    names = ", ".join(column.name for column in columns)
    raw = text.strip()
    if raw.startswith("["):
        try:
            parts = [str(part) for part in json.loads(raw)]
        except json.JSONDecodeError as exc:
            raise BadKey(f"{text!r} is not a JSON list of key values: {exc.msg}") from None
    else:
        parts = [raw] if len(columns) == 1 else [part.strip() for part in raw.split(",")]
    if len(parts) != len(columns):
        raise BadKey(f"{text!r}: {table.fullname}'s key has {len(columns)} column(s) "
                        f"({names}); give one value for each, separated by commas")
    return tuple(_read(column, part, text) for column, part in zip(columns, parts, strict=True))


#: How a key value given as text becomes its column's Python type (subclasses first).
_READERS: tuple[tuple[type, Any], ...] = (
    (bool, lambda value: value.lower() in ("t", "true", "1")),
    (datetime, parse_instant),
    (date, date.fromisoformat),
    (int, int),
    (float, float),
    (Decimal, Decimal),
    (uuid.UUID, uuid.UUID),
)


def _read(column: sa.Column[Any], part: str, text: str) -> Any:
    python_type = python_type_of(column.type)
    reader = next((read for kind, read in _READERS
                   if python_type is not None and issubclass(python_type, kind)), None)
    if reader is None:
        return part
    try:
        value = reader(part)
        if reader is int and not -2**63 <= value < 2**63:  # SQLite: OverflowError
            raise ValueError(f"{part} is beyond a 64-bit integer")
        return value
    except (ValueError, ArithmeticError):
        raise BadKey(f"{text!r}: {part!r} is not a value of {column.table.fullname}."
                        f"{column.name} ({column.type})") from None


def stored_key(key: Key) -> str:
    """A key as the ledger keeps it (``archive_holds``, ``archive_restores``): a JSON list
    of its values' text forms."""
    return json.dumps([key_text(value) for value in key])


def key_of_texts(table: sa.Table, texts: Sequence[str]) -> Key:
    """A key from its values' text forms (as :func:`stored_key` keeps them), each read as
    its column's type."""
    shown = ",".join(texts)
    return tuple(_read(column, part, shown)
                 for column, part in zip(key_columns(table), texts, strict=True))
