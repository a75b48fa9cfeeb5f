"""CSV downloads from one SQLite database through the ``sqlite3`` cursor, past SQLAlchemy.

The general path reads every row through SQLAlchemy's result processing (a ``datetime``
parsed from SQLite's text for each timestamp), builds a dict per row, then formats each
timestamp back to text and passes every cell through ``csv.writer``: most of a download's
time. Here the report's own statement, ordered and compiled by SQLAlchemy as always, runs
once on the raw cursor, and each batch of rows is written a column at a time
(:func:`reporting.csv_columns.csv_records`): text that needs no quotes and starts no
formula, integers and empty cells take no Python per cell.

A timestamp column of a batch stored in one of the UTC forms SQLAlchemy and SQLite write
(``YYYY-MM-DD HH:MM:SS``, with or without ``.ffffff``, with or without ``+00:00``) becomes
the CSV's ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` by string replacements over the whole column,
once a regular expression has matched all of it (:class:`StoredForm`). A timestamp stored
in any other form (or as a number) is parsed and written as the general path does, for
that one cell, so the output is always the general path's bytes.

These steps were ``CASE`` expressions in the SQL before (the timestamps sliced by
``substr``, quotes and blobs tested per cell), with every row through ``csv.writer``: a
million-row download of the events report took 3.6 s in process, and SQLite's expressions
alone cost more than the Python that replaced them.

Only statements whose every column is returned ready by ``sqlite3`` (or is a timestamp)
take this path (:func:`sqlite_statement`): numerics, booleans and dates, which SQLAlchemy
converts, keep the general one. The download is one read transaction, and
``reports.statement_timeout_ms`` bounds the whole of it, as it bounds PostgreSQL's COPY:
the ``reports.csv_max_rows`` default (5,000,000) streams in well under the default 30 s.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from reporting.csv_columns import SEPARATOR, csv_chunks
from reporting.stored_values import StoredUTCDateTime
from sediment.core.schema.types import UTCDateTime

#: Rows per ``fetchmany``: enough to amortise the call, few enough to stay flat in memory.
FETCH_ROWS = 2000


@dataclass(frozen=True)
class StoredForm:
    """One spelling of a UTC timestamp that SQLAlchemy or SQLite writes, and how the CSV
    writes it: ``YYYY-MM-DDTHH:MM:SS.ffffff`` and a ``Z`` when the value says UTC."""

    fraction: bool  #: ``.ffffff`` after the seconds
    zoned: bool  #: ``+00:00`` at the end

    @property
    def length(self) -> int:
        return 19 + 7 * self.fraction + 6 * self.zoned

    @property
    def pattern(self) -> str:
        return (r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"
                + r"\.[0-9]{6}" * self.fraction + r"\+00:00" * self.zoned)

    def written(self, stored: str, zoneless_mark: str) -> str:
        """One stored value (already matched) as the CSV writes it."""
        fraction = stored[19:26] if self.fraction else ".000000"
        return stored[:10] + "T" + stored[11:19] + fraction + (
            "Z" if self.zoned else zoneless_mark)

    def written_all(self, joined: str, zoneless_mark: str) -> list[str]:
        """Values joined by the separator (already matched) as the CSV writes them: the
        one space and the one ``+00:00`` of each are replaced throughout."""
        text = joined.replace(" ", "T")
        fraction = "" if self.fraction else ".000000"
        if self.zoned:
            return text.replace("+00:00", fraction + "Z").split(SEPARATOR)
        suffix = fraction + zoneless_mark
        if suffix:
            text = text.replace(SEPARATOR, suffix + SEPARATOR) + suffix
        return text.split(SEPARATOR)


_FORMS = {form.length: form for form in (
    StoredForm(fraction, zoned) for fraction in (False, True) for zoned in (False, True))}
_ONE = {length: re.compile(form.pattern, re.ASCII) for length, form in _FORMS.items()}
_ALL = {length: re.compile(f"(?:{form.pattern}{SEPARATOR})*{form.pattern}", re.ASCII)
        for length, form in _FORMS.items()}


@dataclass(frozen=True)
class TimestampColumn:
    """How one timestamp column's stored values become the CSV's text."""

    #: The column's own reading (an application's timestamp is read leniently), for a
    #: value in no :class:`StoredForm`.
    parse: Callable[[Any], Any]
    #: ``Z`` when text without a zone is UTC (Sediment's own timestamps, a SQL report's),
    #: empty when it is a wall-clock time of no stated zone (an application's
    #: ``DATETIME``, served so in JSON).
    zoneless_mark: str

    def texts(self, values: Sequence[Any], in_python: Callable[[Any], Any]
              ) -> Sequence[Any]:
        """A batch of the column's stored values as the CSV writes them (None stays None).

        :param in_python: the general path's formatter of a parsed value.
        """
        present = [value for value in values if value is not None]
        if present and set(map(type, present)) == {str} and len(
                lengths := set(map(len, present))) == 1 and (
                length := lengths.pop()) in _FORMS:
            joined = SEPARATOR.join(present)
            if _ALL[length].fullmatch(joined):
                texts = _FORMS[length].written_all(joined, self.zoneless_mark)
                if len(present) == len(values):
                    return texts
                written = iter(texts)
                return [None if value is None else next(written) for value in values]
        return [self.one(value, in_python) for value in values]

    def one(self, value: Any, in_python: Callable[[Any], Any]) -> Any:
        """One stored value as the CSV writes it."""
        if isinstance(value, str) and (form := _FORMS.get(len(value))) and _ONE[
                form.length].fullmatch(value):
            return form.written(value, self.zoneless_mark)
        if value is None:
            return None
        return timestamp_in_python(self.parse, in_python)(value)


@dataclass(frozen=True)
class SqliteStatement:
    """The ordered rows, and per output column how its timestamps are written (None for a
    column that holds none)."""

    ordered: Any
    timestamps: tuple[TimestampColumn | None, ...]


def sqlite_statement(inner: sa.Subquery, columns: Sequence[str],
                     order: Sequence[sa.ColumnElement[Any]], dialect: sa.Dialect
                     ) -> SqliteStatement | None:
    """The ordered rows of ``inner`` ready for :func:`stream_sqlite_csv`, or None when a
    column needs SQLAlchemy's processing (a numeric, a boolean, a date) or the database is
    not SQLite."""
    if dialect.name != "sqlite":
        return None
    timestamps: list[TimestampColumn | None] = []
    for name in columns:
        declared = inner.c[name].type
        base = (declared.impl_instance if isinstance(declared, sa.types.TypeDecorator)
                else declared)
        if isinstance(base, sa.DateTime):
            parse: Callable[[Any], Any] | None = declared.dialect_impl(
                dialect).result_processor(dialect, None)
            utc = isinstance(declared, UTCDateTime | StoredUTCDateTime)
            timestamps.append(TimestampColumn(parse or _unchanged, "Z" if utc else ""))
        elif declared.dialect_impl(dialect).result_processor(dialect, None) is not None:
            return None
        else:
            timestamps.append(None)
    ordered = sa.select(*(inner.c[name] for name in columns)).order_by(*order)
    return SqliteStatement(ordered.compile(dialect=dialect), tuple(timestamps))


def stream_sqlite_csv(connection: sa.Connection, prepared: SqliteStatement,
                      values: Mapping[str, Any], *, header: Sequence[str],
                      cell: Callable[[Any, bool], Any],
                      formula_prefixes: Sequence[str] | None,
                      chunk_bytes: int) -> Iterator[bytes]:
    """Every row of ``prepared`` as CSV (header first), in chunks of about
    ``chunk_bytes``.

    :param cell: the general path's formatter of one value (with ``escape``, formulas
        escaped), used for a timestamp stored in no :class:`StoredForm`, a blob, a number
        that is no integer and text that starts a formula.
    :param formula_prefixes: the first characters of text a spreadsheet would run, which
        ``cell`` escapes; None writes text as it is (``formula=raw``).
    """
    escape = formula_prefixes is not None

    def written(value: Any) -> Any:
        return cell(value, escape)

    timestamps = [(index, column) for index, column in enumerate(prepared.timestamps)
                  if column is not None]
    # One read transaction, begun through SQLAlchemy so that the statement deadline of
    # reporting.readonly starts now (statements on the raw cursor do not set it: a pooled
    # connection idle for longer than the timeout was interrupted at once).
    connection.exec_driver_sql("BEGIN")
    dbapi_connection: Any = connection.connection.dbapi_connection
    cursor = dbapi_connection.cursor()

    def batches() -> Iterator[list[Sequence[Any]]]:
        _execute(cursor, prepared.ordered, values)
        while rows := cursor.fetchmany(FETCH_ROWS):
            columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
            for index, timestamp in timestamps:
                columns[index] = timestamp.texts(columns[index], written)
            yield columns

    try:
        yield from csv_chunks(header, batches(), written=written,
                              formula_prefixes=formula_prefixes, chunk_bytes=chunk_bytes)
    finally:
        cursor.close()
        if dbapi_connection.in_transaction:
            dbapi_connection.rollback()


def _execute(cursor: Any, compiled: Any, values: Mapping[str, Any]) -> Any:
    """Run a compiled statement on the raw cursor, its values through SQLAlchemy's bind
    processors (a timestamp filter becomes the text it is compared with).

    ``ExpandedState.processors`` holds only the expanded (``IN``) parameters' processors;
    the others are the compiled statement's own, which SQLAlchemy's execution context
    reads from the same private attribute. Without them a filter's datetime reached
    ``sqlite3``'s default adapter, whose spelling (``...00+00:00``) is not the stored one:
    ``eq`` matched nothing in a download its JSON pages showed rows for.
    """
    expanded = compiled.construct_expanded_state(values)
    processors = {**compiled._bind_processors, **expanded.processors}
    cursor.execute(expanded.statement, [
        processors[name](expanded.parameters[name]) if name in processors
        else expanded.parameters[name] for name in expanded.positiontup])
    return cursor


def timestamp_in_python(parse: Callable[[Any], Any], in_python: Callable[[Any], Any]
                        ) -> Callable[[Any], Any]:
    """How a stored timestamp in no :class:`StoredForm` is written: parsed by SQLAlchemy
    and formatted by ``in_python``, as the general path writes it (text; a number an
    application stored there is written as it is, as that path serves it)."""
    def formatted(value: Any) -> Any:
        return in_python(parse(value) if isinstance(value, str) else value)
    return formatted


def _unchanged(value: Any) -> Any:
    return value
