"""Turn query-string arguments into a validated :class:`ReportRequest`, or a 400.

All of a request's query string is read here, the CSV download's included: the views and
the ``report`` command hand over the arguments and get back a request or an error. Every
rejection names the parameter at fault (``param``) and has a stable ``code``:
``unknown_parameter``, ``invalid_value``, ``unknown_operator``, ``invalid_sort``,
``invalid_limit``, ``invalid_source``, ``invalid_count``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, TypeVar, get_args

from reporting.report_error import ReportError
from reporting.reports.base import SOURCES, Operator, Report, Source, ValueType
from sediment.core.instants import InstantOutOfRange, parse_instant

RESERVED = ("sort", "limit", "cursor", "source", "count", "formula", "columns")
#: What only a page reads (a CSV download refuses ``limit`` and ``cursor``) and what only a
#: CSV download reads: an "unknown parameter" error lists the ones that do something.
PAGE_ONLY = ("limit", "cursor", "count")
CSV_ONLY = ("formula",)
#: Most values one ``in`` filter may list: enough for any hand-written query, and a bound
#: on the work a single request can ask of the databases.
MAX_IN_VALUES = 1000
#: ``?count=``: no count, the planner's estimate, or an exact count.
CountKind = Literal["none", "estimated", "exact"]
COUNT_KINDS: tuple[CountKind, ...] = get_args(CountKind)
#: ``?formula=`` of a CSV download: escape cells a spreadsheet would run, or not.
FORMULA_MODES = ("escape", "raw")
_Choice = TypeVar("_Choice", bound=str)
_FILTER_ARG = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<op>[a-z]+)\]$")


@dataclass(frozen=True)
class FilterClause:
    """One validated filter: ``column op value`` (for ``in``, ``value`` is a tuple)."""

    column: str
    op: Operator
    value: Any


#: The comparison operators, applied alike to a SQL column and a pandas Series (``in``,
#: ``like``, ``ilike`` and ``isnull`` are SQL only: see reporting.statements).
COMPARISONS: Mapping[Operator, Callable[[Any, Any], Any]] = {
    "eq": lambda c, v: c == v, "ne": lambda c, v: c != v,
    "gt": lambda c, v: c > v, "gte": lambda c, v: c >= v,
    "lt": lambda c, v: c < v, "lte": lambda c, v: c <= v,
}


@dataclass(frozen=True)
class ReportRequest:
    """A validated request for one page (or, for CSV, all rows) of a report."""

    report: Report
    params: Mapping[str, Any]
    filters: tuple[FilterClause, ...]
    sort: str
    descending: bool
    limit: int
    cursor: str | None
    source: Source
    count: CountKind
    #: CSV only: escape cells a spreadsheet would run as formulas (``?formula=escape``).
    escape_formulas: bool = True
    #: The columns asked for with ``?columns=``, in that order; empty: every column.
    columns: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, ...]:
        return self.report.key_for(self.params)

    @property
    def order(self) -> tuple[str, ...]:
        """The columns rows are ordered by: the sort column, then the key."""
        return (self.sort, *self.key)

    def normalised(self) -> dict[str, Any]:
        """Parameters and filters as echoed in ``meta`` and bound into cursors."""
        shown: dict[str, Any] = {name: _plain(value) for name, value in self.params.items()}
        for clause in self.filters:
            label = clause.column if clause.op == "eq" else f"{clause.column}[{clause.op}]"
            shown[label] = _plain(clause.value)
        if self.columns:
            shown["columns"] = ",".join(self.columns)
        return shown


def parse_request(report: Report, args: Mapping[str, list[str]], *, default_limit: int,
                  max_limit: int, export: bool = False) -> ReportRequest:
    """Validate ``args`` (each name with all its values) against ``report``.

    :param export: a CSV download: every row, so ``limit`` and ``cursor`` are refused (they
        would silently mean something else), and ``formula`` is read.
    :raises ReportError: 400 naming the offending parameter.
    """
    single = {}
    for name, values in args.items():
        if len(values) > 1:
            raise ReportError(400, "invalid_value", f"{name!r} is given {len(values)} times",
                              param=name)
        single[name] = values[0]
    escape_formulas = _export_options(single) if export else True
    params = {p.name: p.default for p in report.params}
    filters: list[FilterClause] = []
    spelled: dict[tuple[str, str], str] = {}  # (column, operator): the name it came as
    for name, raw in single.items():
        if name in RESERVED:
            continue
        if any(p.name == name for p in report.params):
            param = report.param(name)
            params[name] = convert(raw, param.type, name, param.choices)
            continue
        found = _FILTER_ARG.match(name)
        column, op = (found.group("name"), found.group("op")) if found else (name, "eq")
        spec = next((f for f in report.filters if f.column == column), None)
        if spec is None:
            ignored = PAGE_ONLY if export else CSV_ONLY
            known = sorted([*(f.column for f in report.filters), *(p.name for p in report.params),
                            *(name for name in RESERVED if name not in ignored)])
            raise ReportError(400, "unknown_parameter", f"{name!r} is not a parameter of "
                              f"{report.name!r}; known: {', '.join(known)}", param=name)
        operator = _choice(op, spec.operators)
        if operator is None:
            raise ReportError(400, "unknown_operator", f"{column!r} takes "
                              f"{', '.join(spec.operators)}, not {op!r}", param=name)
        if (column, operator) in spelled:
            # ``x=1&x[eq]=2`` asked for both (no row), and meta echoed only one of them
            raise ReportError(400, "invalid_value", f"{name!r} repeats the filter "
                              f"{spelled[column, operator]!r}: give it once", param=name)
        spelled[column, operator] = name
        if operator == "in":
            items = raw.split(",")
            if len(items) > MAX_IN_VALUES:
                raise ReportError(400, "invalid_value", f"{name!r} lists {len(items)} values; "
                                  f"at most {MAX_IN_VALUES}", param=name)
            value: Any = tuple(convert(v, spec.type, name, spec.choices) for v in items)
        elif operator == "isnull":
            value = convert(raw, "boolean", name)
        elif operator in ("like", "ilike"):
            value = convert(raw, "string", name)
        else:
            value = convert(raw, spec.type, name, spec.choices)
        filters.append(FilterClause(column, operator, value))
    sort_text = single.get("sort", report.default_sort)
    descending = sort_text.startswith("-")
    sort = sort_text.lstrip("-")
    if sort not in report.sort_keys_for(params):
        raise ReportError(400, "invalid_sort", f"cannot sort {report.name!r} by {sort!r}; sort "
                          f"keys: {', '.join(report.sort_keys_for(params))} (prefix - for "
                          "descending)", param="sort")
    limit = _limit(single.get("limit"), default_limit, max_limit)
    source = _choice(single.get("source"), SOURCES)
    if source is None:
        source = report.sources[0] if len(report.sources) == 1 else "all"
    if single.get("source", source) != source or source not in report.sources:
        raise ReportError(400, "invalid_source", f"source {single['source']!r} is not "
                          f"available for {report.name!r}; use {', '.join(report.sources)}",
                          param="source")
    count = _choice(single.get("count", "none"), COUNT_KINDS)
    if count is None:
        raise ReportError(400, "invalid_count", f"count must be {', '.join(COUNT_KINDS)}",
                          param="count")
    return ReportRequest(report=report, params=params, filters=tuple(filters), sort=sort,
                         descending=descending, limit=limit, cursor=single.get("cursor"),
                         source=source, count=count, escape_formulas=escape_formulas,
                         columns=_chosen_columns(report, single.get("columns")))


def _chosen_columns(report: Report, raw: str | None) -> tuple[str, ...]:
    """``?columns=a,b``: which of the report's columns to return, in that order."""
    if raw is None:
        return ()
    names = tuple(dict.fromkeys(name.strip() for name in raw.split(",")))
    known = [column.name for column in report.columns]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ReportError(400, "invalid_value", f"columns={raw!r}: {report.name!r} has no "
                          f"column {unknown[0] if unknown else ''!r}; its columns: "
                          f"{', '.join(known)}", param="columns")
    return names


def _choice(raw: str | None, choices: tuple[_Choice, ...]) -> _Choice | None:
    """``raw`` as one of ``choices`` (typed as such), or ``None``."""
    return next((choice for choice in choices if choice == raw), None)


def _export_options(args: Mapping[str, str]) -> bool:
    """Check a CSV download's arguments; return whether to escape formulas."""
    for name in ("limit", "cursor"):
        if name in args:
            raise ReportError(400, "unknown_parameter", f"CSV downloads stream every row; "
                              f"drop {name!r} (use filters to narrow)", param=name)
    mode = args.get("formula", "escape")
    if mode not in FORMULA_MODES:
        raise ReportError(400, "invalid_value", "formula must be escape or raw",
                          param="formula")
    return mode == "escape"


def _limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() accepts "²" and "①", which int() then refuses.
    if not re.fullmatch(r"[0-9]{1,9}", raw) or not 1 <= int(raw) <= maximum:
        raise ReportError(400, "invalid_limit", f"limit must be a whole number from 1 to "
                          f"{maximum}, not {raw!r}", param="limit")
    return int(raw)


def convert(raw: str, type_name: ValueType, name: str,
            choices: tuple[str, ...] | None = None) -> Any:
    """Convert one query-string value to its declared type.

    :raises ReportError: 400 ``invalid_value`` naming ``name``.
    """
    try:
        value: Any
        if type_name == "integer":
            if not re.fullmatch(r"-?\d{1,18}", raw):
                raise ValueError
            value = int(raw)
        elif type_name == "number":
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
        elif type_name == "datetime":
            value = parse_instant(raw)
        elif type_name == "date":
            value = date.fromisoformat(raw)
        elif type_name == "uuid":
            value = uuid.UUID(raw)
        elif type_name == "boolean":
            if raw not in ("true", "false"):
                raise ValueError
            value = raw == "true"
        else:
            if "\x00" in raw or len(raw) > 200:
                raise ValueError
            value = raw
    except InstantOutOfRange as exc:
        raise ReportError(400, "invalid_value", f"{name}={raw!r} is {exc}",
                          param=name) from None
    except ValueError:
        raise ReportError(400, "invalid_value", f"{name}={raw!r} is not a valid {type_name}",
                          param=name) from None
    if choices is not None and value not in choices:
        raise ReportError(400, "invalid_value", f"{name}={raw!r}: choose one of "
                          f"{', '.join(choices)}", param=name)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date | uuid.UUID):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
