"""PostgreSQL ``COPY`` in text format, through a SQLAlchemy connection's psycopg2 cursor.

``COPY FROM STDIN`` loads rows about four times faster than multi-row ``INSERT`` here
(index and foreign-key work is the same; the parse and plan per row is gone). Used by the
seeder and the archiver, on PostgreSQL only.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from sediment.core.names import uninterpolated

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def encode_value(value: Any) -> str:
    """Render one value as a field of ``COPY ... (FORMAT text)``."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be copied as UTC")
        return value.isoformat()
    if isinstance(value, int | float):
        return str(value)
    return str(value).translate(_ESCAPES)


_DECODES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def decode_field(field: str) -> str | None:
    """Read one field of ``COPY ... TO STDOUT (FORMAT text)`` back into the value's text
    form: ``\\N`` is NULL, and the backslash escapes PostgreSQL writes are undone."""
    if field == "\\N":
        return None
    if "\\" not in field:
        return field
    out: list[str] = []
    index = 0
    while index < len(field):
        char = field[index]
        if char == "\\" and index + 1 < len(field):
            following = field[index + 1]
            out.append(_DECODES.get(following, following))
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def encode_rows(rows: Iterable[Sequence[Any]]) -> io.StringIO:
    """Render rows as one text-format COPY payload."""
    buffer = io.StringIO()
    buffer.writelines("\t".join(map(encode_value, row)) + "\n" for row in rows)
    buffer.seek(0)
    return buffer


def quote_columns(connection: sa.Connection, columns: Sequence[str]) -> str:
    preparer = connection.dialect.identifier_preparer
    return ", ".join(preparer.quote(name) for name in columns)


def copy_in(
    connection: sa.Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """``COPY table (columns) FROM STDIN`` the given rows; return the rows written.

    Runs inside the connection's current transaction.
    """
    target = f"{connection.dialect.identifier_preparer.quote(table)} "
    target += f"({quote_columns(connection, columns)})"
    return _copy_from(connection, target, encode_rows(rows))


def copy_lines_in(connection: sa.Connection, target: str, lines: Sequence[str], *,
                  suffix: str = "") -> int:
    """``COPY target FROM STDIN`` lines already in text format (e.g. from :func:`copy_out`).

    :param target: the table and column list, already quoted, e.g. ``"stage (id, name)"``.
    :param suffix: appended to every line (more fields, each after a tab), by one
        ``str.join`` rather than a new string per line.
    """
    end = suffix + "\n"
    payload = end.join(lines) + end if lines else ""
    return _copy_from(connection, target, io.StringIO(payload))


def _copy_from(connection: sa.Connection, target: str, payload: io.StringIO) -> int:
    statement = f"COPY {uninterpolated(connection.dialect, target)} FROM STDIN"
    with raw_cursor(connection, statement) as cursor:
        cursor.copy_expert(statement, payload)
        return int(cursor.rowcount)


@contextmanager
def raw_cursor(connection: sa.Connection, statement: str) -> Iterator[Any]:
    """A psycopg2 cursor whose driver errors surface as SQLAlchemy exceptions.

    COPY (and :mod:`reporting.pgfetch`) bypass SQLAlchemy's execution, so their errors would
    otherwise escape as raw psycopg2 ones: a dropped connection would not be an
    ``OperationalError`` to retry on, nor a statement timeout a 503. A connection found
    dead is invalidated, as ``Connection.execute`` does, so that the pool never hands it
    out again.
    """
    dbapi = connection.dialect.loaded_dbapi
    dbapi_connection = connection.connection.dbapi_connection
    cursor = None
    try:
        # Inside the try: a connection the server closed fails here already.
        cursor = dbapi_connection.cursor()  # type: ignore[union-attr]
        yield cursor
    except dbapi.Error as exc:
        invalidated = connection.dialect.is_disconnect(exc, dbapi_connection, cursor)
        if invalidated:
            connection.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            statement, None, exc, dbapi.Error, connection_invalidated=invalidated,
        ) from exc
    finally:
        if cursor is not None:
            with suppress(dbapi.Error):  # the connection is gone; the pool discards it
                cursor.close()


def copy_out(connection: sa.Connection, query: str) -> list[str]:
    """Run ``COPY (query) TO STDOUT`` and return its lines (without newlines)."""
    buffer = io.StringIO()
    statement = f"COPY ({query}) TO STDOUT"
    with raw_cursor(connection, statement) as cursor:
        cursor.copy_expert(statement, buffer)
    # Split on "\n" only: COPY escapes newlines inside values, but ``str.splitlines`` would
    # also split on characters it writes as they are (U+2028, U+0085, \x1c-\x1e).
    lines = buffer.getvalue().split("\n")
    lines.pop()  # the text after the last newline: empty
    return lines


def render(connection: sa.Connection, query: sa.Select[Any],
           values: Mapping[str, Any] | None = None) -> str:
    """Render ``query`` as SQL text with its parameters bound by psycopg2 itself.

    COPY takes no parameters, so the query goes in as text; psycopg2's ``mogrify`` quotes
    every value exactly as it would for a parameterised execute.

    :param values: values of bound parameters built without one (see reporting.statements).
    """
    expanded = query.compile(dialect=connection.dialect).construct_expanded_state(values)
    with raw_cursor(connection, expanded.statement) as cursor:
        return str(cursor.mogrify(expanded.statement, expanded.parameters).decode())
