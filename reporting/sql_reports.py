"""Reports declared as SQL files: a TOML header in a leading comment block, then one SELECT.

A file ``<folder>/<name>.sql`` is the report ``<name>``::

    -- title = "Orders over 100"
    -- kind = "rows"                       # or "aggregate"
    -- key = ["id"]
    -- sort_keys = ["placed_at", "id"]
    -- default_sort = "-placed_at"
    -- root = "orders"                     # the policy root: rows caught in both databases
    -- [columns]
    -- id = "integer"
    -- placed_at = { type = "datetime", description = "when (UTC)", nullable = false }
    -- [params.minimum]
    -- type = "integer"
    -- default = 100
    -- [filters]
    -- placed_at = ["gte", "lt"]
    SELECT id, placed_at FROM orders WHERE total_cents >= :minimum

The body runs on each database the report's sources name (never joined across them):
row reports page by keyset over it as a subquery, aggregate reports return partials that
combine exactly (``[combine]``: ``sum``, ``min``, ``max``, ``count``), and ``[[lookups]]``
fill reference columns from PRIMARY. Everything else (filters, sorts, sources, cursors,
counts, CSV, OpenAPI) is what the Python reports get.

:func:`load_folder` parses and checks every file (no database needed);
:func:`check_against` then prepares each body on the databases it reads. Either raises
:class:`ReportFileError` naming the file and the line.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from reporting.report_databases import ReportDatabases, key_names
from reporting.report_error import ReportError
from reporting.reports.base import (
    JSON_TYPES,
    OPERATORS,
    SOURCES,
    AggregateReport,
    Column,
    Combine,
    DatabaseTables,
    Filter,
    Lookup,
    Param,
    ReferenceData,
    Report,
    RowReport,
    ValueType,
)
from reporting.request import convert
from reporting.stored_values import StoredUTCDateTime
from sediment.core.databases import ARCHIVE, PRIMARY, Database
from sediment.core.schema.types import UTCDateTime
from sediment.core.sql_text import UnclosedText, ends_in_line_comment, segments

#: The SQLAlchemy type a declared column is read as (SQLite hands timestamps over as text).
RESULT_TYPES: Mapping[str, sa.types.TypeEngine[Any]] = {
    "integer": sa.BigInteger(), "number": sa.Float(), "string": sa.String(),
    "datetime": UTCDateTime(), "date": sa.Date(), "uuid": sa.Uuid(), "boolean": sa.Boolean(),
}
#: How partials combine; ``count`` partials add up.
COMBINE: Mapping[str, Combine] = {"sum": "sum", "min": "min", "max": "max", "count": "sum"}
_HEADER_KEYS = {"title", "description", "kind", "columns", "key", "sort_keys", "default_sort",
                "sources", "root", "filters", "params", "lookups", "group_by", "combine"}
#: ``:name`` placeholders (not ``::type`` casts, not inside words).
_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
#: What SQLAlchemy's ``text()`` binds as a placeholder (its own rule), to escape in quoted
#: text and comments.
_UNBOUND = re.compile(r"(?<![:\w\\]):(\w+)(?![:\w])")
#: A placeholder cast PostgreSQL's way (``:since::date``), which SQLAlchemy does not bind.
_CAST_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)(?=::)")
_TOML_LINE = re.compile(r"at line (\d+)")
#: SQLite's "no such table: x" and "no such column: t.x": the name it did not find.
_NOT_FOUND = re.compile(r"no such (?:table|column|function): (?:\w+\.)?(\w+)")


class ReportFileError(ValueError):
    """A SQL report file that cannot be served: which file, which line, and why."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(f"report file {path}:{line}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class SqlReportFile:
    """One parsed file: its report and the SQL body with where it starts."""

    path: Path
    report: Report
    body: str
    body_line: int


def load_folder(folder: Path, taken: Sequence[str] = ()) -> list[SqlReportFile]:
    """Parse every ``*.sql`` file of ``folder``, in name order.

    :param taken: report names already served (a file may not replace one).
    :raises ReportFileError: for the first file that cannot be served.
    """
    if not folder.is_dir():
        raise ReportFileError(folder, 0, "is not a folder")
    files = [parse_file(path) for path in sorted(folder.glob("*.sql"))]
    for found in files:
        if found.report.name in taken:
            raise ReportFileError(found.path, 1, f"a report named {found.report.name!r} "
                                  "exists already; rename the file")
    return files


def parse_file(path: Path) -> SqlReportFile:
    """Parse and check one file (no database is asked)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ReportFileError(path, 0, f"not UTF-8 text (byte {exc.start}): save it as "
                              "UTF-8") from exc
    except OSError as exc:  # a folder named *.sql, no permission to read
        raise ReportFileError(path, 0, f"cannot be read: {exc.strerror or exc}") from exc
    header: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("--"):
            header.append(stripped[2:].removeprefix(" "))
        elif stripped:
            break
        else:
            header.append("")
    body_line = len(header) + 1
    body = "\n".join(lines[len(header):]).strip()
    try:
        spec = tomllib.loads("\n".join(header))
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        raise ReportFileError(path, int(found.group(1)) if found else 1,
                              f"header is not valid TOML: {exc}") from None
    if not re.match(r"(?is)^(select|with)\b", body):
        raise ReportFileError(path, body_line, "the body must be one SELECT (or WITH ... SELECT)")
    body = _one_statement(path, body, body_line)
    return SqlReportFile(path, _report(path, spec, body, body_line), body, body_line)


def _one_statement(path: Path, body: str, body_line: int) -> str:
    """``body`` as the statement Sediment wraps and binds: without its final ``;``, ending
    on a new line after a ``--`` comment (which would otherwise comment out the
    parenthesis that closes the subquery: "incomplete input"), and ``\\:`` for each
    ``:word`` in quoted text or a comment (which SQLAlchemy took for a parameter: "a value
    is required for bind parameter 'noon'" for ``'at :noon'``). A placeholder cast
    PostgreSQL's way, ``:since::date``, becomes ``(:since)::date``: SQLAlchemy binds no
    name followed by a colon, and PostgreSQL got the ``:since`` itself.

    :raises ReportFileError: for a quote or comment never closed, or a second statement.
    """
    try:
        parts = segments(body)
    except UnclosedText as exc:
        raise ReportFileError(path, body_line, f"the body cannot be read: {exc}") from None
    stops = [part.start + at for part in parts if part.kind == "code"
             for at, char in enumerate(part.text) if char == ";"]
    if stops:
        rest = segments(body[stops[-1] + 1:])
        if len(stops) > 1 or any(part.kind == "code" and part.text.strip() for part in rest):
            raise ReportFileError(path, body_line + body[:stops[0]].count("\n"),
                                  "the body must be one statement (found ';')")
        body = body[:stops[-1]] + body[stops[-1] + 1:]
        parts = segments(body)
    escaped = "".join(_CAST_PLACEHOLDER.sub(r"(:\1)", part.text) if part.kind == "code"
                      else _UNBOUND.sub(r"\\:\1", part.text) for part in parts)
    return escaped + "\n" if ends_in_line_comment(parts) else escaped


def _placeholders(body: str) -> dict[str, int]:
    """The ``:name`` placeholders of ``body``'s code (not in quotes or comments), with
    where each first appears."""
    found: dict[str, int] = {}
    for part in segments(body):
        if part.kind == "code":
            for match in _PLACEHOLDER.finditer(part.text):
                found.setdefault(match.group(1), part.start + match.start())
    return found


def _report(path: Path, spec: Mapping[str, Any], body: str, body_line: int) -> Report:
    def fail(message: str, line: int = 1) -> ReportFileError:
        return ReportFileError(path, line, message)

    unknown = sorted(set(spec) - _HEADER_KEYS)
    if unknown:
        raise fail(f"unknown header key {unknown[0]!r} (known: {', '.join(sorted(_HEADER_KEYS))})")
    if not isinstance(spec.get("title"), str):
        raise fail("the header needs a title = \"...\"")
    columns = _columns(spec.get("columns"), fail)
    names = [column.name for column in columns]
    key = _names(spec, "key", names, fail)
    if not key:
        raise fail("key names the columns that identify a row, e.g. key = [\"id\"]")
    sort_keys = _names(spec, "sort_keys", names, fail) or key
    default_sort = str(spec.get("default_sort", sort_keys[0]))
    if default_sort.lstrip("-") not in sort_keys:
        raise fail(f"default_sort {default_sort!r} is not one of sort_keys")
    sources = tuple(spec.get("sources", SOURCES))
    if not sources or any(source not in SOURCES for source in sources):
        raise fail(f"sources must be some of {', '.join(SOURCES)}")
    params = _params(spec.get("params", {}), fail)
    used = _placeholders(body)
    declared = {param.name for param in params}
    for missing in sorted(set(used) - declared):
        line = body_line + body[:used[missing]].count("\n")
        raise fail(f":{missing} is not a declared parameter ([params.{missing}])", line)
    for unused in sorted(declared - set(used)):
        raise fail(f"parameter {unused!r} is declared but the body never uses :{unused}")
    filters = _filters(spec.get("filters", {}), {c.name: c for c in columns}, fail)
    lookups = tuple(_lookup(entry, names, fail) for entry in spec.get("lookups", []))
    looked_up = {lookup.column for lookup in lookups}
    selected = [column for column in columns if column.name not in looked_up]
    root = spec.get("root")
    common: dict[str, Any] = dict(
        name=path.stem, title=spec["title"], description=str(spec.get("description", "")),
        columns=columns, key=key, sort_keys=sort_keys, default_sort=default_sort,
        root=str(root) if root is not None else None, sources=sources, filters=filters,
        params=params, lookups=lookups)
    kind = spec.get("kind", "rows")
    if kind == "rows":
        return RowReport(**common, query=_row_query(body, selected, params))
    if kind != "aggregate":
        raise fail(f"kind must be \"rows\" or \"aggregate\", not {kind!r}")
    combine = spec.get("combine", {})
    if not isinstance(combine, dict) or not combine:
        raise fail("an aggregate report needs [combine]: how each partial column combines")
    bad = [f"{c} = {how!r}" for c, how in combine.items()
           if c not in names or how not in COMBINE]
    if bad:
        raise fail(f"[combine] {bad[0]}: a declared column and one of "
                   f"{', '.join(COMBINE)}")
    group_by = _names(spec, "group_by", names, fail) or key
    return AggregateReport(**common, partials=_partials(body, selected, params),
                           group_by=group_by,
                           combine={c: COMBINE[how] for c, how in combine.items()})


def _columns(raw: Any, fail: Any) -> tuple[Column, ...]:
    if not isinstance(raw, dict) or not raw:
        raise fail("the header needs [columns]: each output column and its type")
    columns = []
    for name, value in raw.items():
        entry = value if isinstance(value, dict) else {"type": value}
        type_name = entry.get("type")
        if type_name not in JSON_TYPES:
            raise fail(f"column {name!r}: type must be one of {', '.join(JSON_TYPES)}")
        columns.append(Column(name, cast(ValueType, type_name),
                              str(entry.get("description", "")),
                              nullable=bool(entry.get("nullable", False))))
    return tuple(columns)


def _names(spec: Mapping[str, Any], key: str, known: Sequence[str], fail: Any
           ) -> tuple[str, ...]:
    names = spec.get(key, [])
    if not isinstance(names, list) or any(name not in known for name in names):
        raise fail(f"{key} must list declared columns (declared: {', '.join(known)})")
    return tuple(names)


def _params(raw: Any, fail: Any) -> tuple[Param, ...]:
    params = []
    for name, entry in raw.items():
        if not isinstance(entry, dict) or entry.get("type") not in JSON_TYPES \
                or "default" not in entry:
            raise fail(f"[params.{name}] needs a type (one of {', '.join(JSON_TYPES)}) "
                       "and a default")
        choices = tuple(str(c) for c in entry["choices"]) if "choices" in entry else None
        try:
            default = convert(str(entry["default"]).lower() if entry["type"] == "boolean"
                              else str(entry["default"]), entry["type"], name, choices)
        except ReportError as exc:
            raise fail(f"[params.{name}] default: {exc.detail}") from None
        params.append(Param(name, entry["type"], default, str(entry.get("description", "")),
                            choices))
    return tuple(params)


def _filters(raw: Any, columns: Mapping[str, Column], fail: Any) -> tuple[Filter, ...]:
    filters = []
    for name, operators in raw.items():
        if name not in columns:
            raise fail(f"[filters] {name!r} is not a declared column")
        if not isinstance(operators, list) or any(op not in OPERATORS for op in operators):
            raise fail(f"[filters] {name}: operators are some of {', '.join(OPERATORS)}")
        filters.append(Filter(name, columns[name].type, tuple(operators)))
    return tuple(filters)


def _lookup(entry: Any, names: Sequence[str], fail: Any) -> Lookup:
    if not isinstance(entry, dict) or set(entry) != {"column", "key", "table", "value"} \
            or entry["column"] not in names or entry["key"] not in names:
        raise fail("each [[lookups]] has column and key (declared columns), table and value "
                   "(a PRIMARY table and its column)")
    return Lookup(entry["column"], entry["key"], entry["table"], entry["value"])


def _statement(body: str, selected: Sequence[Column], params: Sequence[Param],
               values: Mapping[str, Any], dialect: str) -> sa.TextualSelect:
    bound = [sa.bindparam(param.name, values[param.name], type_=RESULT_TYPES[param.type])
             for param in params]
    return sa.text(body).bindparams(*bound).columns(
        *(sa.column(column.name, _result_type(column.type, dialect)) for column in selected))


def _result_type(declared: str, dialect: str) -> sa.types.TypeEngine[Any]:
    """How a body's column is read: on SQLite a timestamp as the text a table holds it in,
    whichever application wrote it (:class:`StoredUTCDateTime`), else :data:`RESULT_TYPES`."""
    if declared == "datetime" and dialect == "sqlite":
        return StoredUTCDateTime()
    return RESULT_TYPES[declared]


def _row_query(body: str, selected: Sequence[Column], params: Sequence[Param]) -> Any:
    def query(tables: DatabaseTables, values: Mapping[str, Any]) -> sa.Select[Any]:
        return _body_select(body, selected, params, tables, values)
    return query


def _partials(body: str, selected: Sequence[Column], params: Sequence[Param]) -> Any:
    def partials(tables: DatabaseTables, values: Mapping[str, Any],
                 reference: ReferenceData) -> sa.Select[Any]:
        return _body_select(body, selected, params, tables, values)
    return partials


def _body_select(body: str, selected: Sequence[Column], params: Sequence[Param],
                 tables: DatabaseTables, values: Mapping[str, Any]) -> sa.Select[Any]:
    """The body on one database, as a subquery a report's query or partials select from."""
    statement = _statement(_shadowed(body, tables), selected, params, values, tables.dialect)
    return sa.select(statement.subquery("body"))


def _shadowed(body: str, tables: DatabaseTables) -> str:
    """``body`` reading the tables as ``tables`` has them: a table narrowed to leave out the
    rows caught in both databases (ARCHIVE's side of a merge, see
    reporting.report_databases.exclude_shared) is shadowed by a CTE of its name, so the
    body's own ``FROM orders`` reads the narrowed rows. Only tables of the default schema
    can be shadowed (a CTE has no schema)."""
    narrowed = {name: found for name, found in tables.tables.items()
                if isinstance(found, sa.Subquery) and "." not in name}
    if not narrowed:
        return body
    sqlite_db = tables.dialect == "sqlite"
    dialect: sa.Dialect = (sqlite.dialect if sqlite_db else postgresql.dialect)()
    # SQLite would take the CTE's own name inside it for itself: name the table main.x.
    options: dict[str, Any] = ({"schema_translate_map": {None: "main"},
                                "render_schema_translate": True} if sqlite_db else {})
    literal = {"literal_binds": True}
    ctes = ", ".join(
        f'"{name}" AS ({found.element.compile(dialect=dialect, compile_kwargs=literal, **options)})'
        for name, found in narrowed.items())
    own = re.match(r"(?is)^with\s+(recursive\s+)?", body)
    if own:
        return f"WITH {own.group(1) or ''}{ctes}, {body[own.end():]}"
    return f"WITH {ctes} {body}"


def check_against(found: SqlReportFile, databases: ReportDatabases) -> None:
    """Prepare ``found``'s body on every database it reads, with the default parameters,
    and check that it returns the declared columns.

    :raises ReportFileError: with the database's message, at the line it points to.
    """
    report = found.report
    root = report.root
    if root is not None and root not in databases.tables[ARCHIVE].tables:
        raise ReportFileError(found.path, 1, f"root {root!r} is not a table an archival "
                              "policy moves (its ledger says which rows are in both databases)")
    if root is not None and isinstance(report, RowReport):
        missing_key = [name for name in key_names(databases, root)
                       if name not in report.key]
        if missing_key:
            raise ReportFileError(found.path, 1, f"key must hold root {root!r}'s key "
                                  f"({', '.join(key_names(databases, root))}): merged pages "
                                  "tell a row caught in both databases by it")
    defaults = {param.name: param.default for param in report.params}
    looked_up = {lookup.column for lookup in report.lookups}
    wanted = [column.name for column in report.columns if column.name not in looked_up]
    names: list[Database] = [name for name in (PRIMARY, ARCHIVE)
                             if "all" in report.sources or name in report.sources]
    for name in names:
        engine = databases.engines[name]
        explain = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
        with engine.connect() as connection:
            try:
                connection.execute(sa.text(explain + found.body), defaults)
                result = connection.execute(sa.select(sa.text("*")).select_from(
                    sa.text(f"({found.body}) AS body")).limit(0), defaults)
            except sa.exc.DBAPIError as exc:
                raise ReportFileError(found.path, _error_line(found, exc, len(explain)),
                                      f"{name.upper()}: {_first_line(exc)}") from None
            returned = list(result.keys())
        missing = [column for column in wanted if column not in returned]
        if missing:
            raise ReportFileError(found.path, found.body_line,
                                  f"on {name.upper()} the SELECT returns no column "
                                  f"{missing[0]!r} (it returns {', '.join(returned)})")


def _error_line(found: SqlReportFile, exc: sa.exc.DBAPIError, prefix: int) -> int:
    """The file line PostgreSQL's error position points at (the body's first otherwise).
    Parameters change the statement's length but not its lines, so lines stay exact."""
    diagnostics = getattr(exc.orig, "diag", None)
    position = getattr(diagnostics, "statement_position", None)
    statement = str(getattr(exc, "statement", "") or "")
    if position and statement:
        return found.body_line + statement[prefix:int(position) - 1].count("\n")
    # SQLite gives no position, but names what it did not find: its first use.
    named = _NOT_FOUND.search(str(exc.orig))
    used = re.search(rf"(?i)(?<![\w.]){re.escape(named.group(1))}\b", found.body) \
        if named else None
    return found.body_line + (found.body[:used.start()].count("\n") if used else 0)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
