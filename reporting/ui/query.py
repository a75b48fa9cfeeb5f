"""The report page's query string: the API's own, so every link and the CSV button carry it.

A report page at ``/reports/<name>?status[in]=closed&sort=-placed_at`` reads exactly what
``/api/v1/reports/<name>?status[in]=closed&sort=-placed_at`` reads: the page hands its
query to the API's parser. Two things are the page's own and are taken out first:

* ``back``: the cursors of the pages before this one, oldest first (``~`` is the first
  page), so that "previous" works over keyset cursors that only go forward;
* the filter form's empty fields (a form sends every field), and a multiple select's
  values, which the API takes as one comma-separated ``in`` value.

The filter form is built from the catalog: an input per column and operator, typed by the
column's type (a ``date`` input for a date's range, a ``select`` for choices).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from urllib.parse import urlencode

from werkzeug.datastructures import MultiDict

from reporting.reports.base import Filter, Param, Report
from sediment.core.instants import parse_instant

#: The first page, in ``back``.
FIRST_PAGE = "~"
#: Most pages ``back`` remembers; older ones are reached again from the first page.
MAX_BACK = 30
#: ``limit`` choices the page offers.
PAGE_SIZES = (25, 50, 100, 250)

_INPUT_TYPES = {"integer": "number", "number": "number", "date": "date",
                "datetime": "datetime-local", "string": "text", "uuid": "text",
                "boolean": "text"}
#: Operators shown as inputs of their own, with how each is labelled.
_LABELS = {"eq": "is", "ne": "is not", "gt": "after", "gte": "from", "lt": "before",
           "lte": "to", "like": "matches", "ilike": "matches (any case)", "in": "one of",
           "isnull": "empty"}
#: The range labels of numbers (dates and instants use ``from`` and ``before``).
_NUMBER_LABELS = {"gte": "at least", "lt": "less than"}


def api_query(args: MultiDict[str, str]) -> dict[str, str]:
    """The API query of a page request: the page's own fields out, empty fields out,
    a multiple select's values joined."""
    query: dict[str, str] = {}
    for name, values in args.lists():
        kept = [value for value in values if value.strip()]
        if name == "back" or not kept:
            continue
        query[name] = ",".join(kept) if name.endswith("[in]") else kept[-1]
    return query


def back_trail(args: MultiDict[str, str]) -> list[str]:
    return [cursor for cursor in args.getlist("back") if cursor][-MAX_BACK:]


def link(path: str, query: Mapping[str, str], back: Iterable[str] = ()) -> str:
    """``path`` with ``query`` (and a ``back`` trail) as its query string."""
    pairs = [*query.items(), *(("back", cursor) for cursor in back)]
    return f"{path}?{urlencode(pairs)}" if pairs else path


def without(query: Mapping[str, str], *names: str) -> dict[str, str]:
    return {name: value for name, value in query.items() if name not in names}


@dataclass(frozen=True)
class Field:
    """One input of the filter form: its API name, label, input type and current value."""

    name: str
    label: str
    input_type: str
    value: str = ""
    choices: tuple[str, ...] = ()
    multiple: bool = False
    hint: str = ""

    @property
    def selected(self) -> frozenset[str]:
        return frozenset(self.value.split(",")) if self.value else frozenset()


def filter_fields(report: Report, query: Mapping[str, str]) -> list[Field]:
    """The filter form of ``report``: per filter, the inputs its type and operators call
    for, each showing the value the page's query gives it."""
    fields: list[Field] = []
    for param in report.params:
        fields.append(_param_field(param, query))
    for spec in report.filters:
        fields += _filter_fields(spec, query)
    return fields


def _param_field(param: Param, query: Mapping[str, str]) -> Field:
    value = query.get(param.name, "")
    return Field(name=param.name, label=param.name.replace("_", " "),
                 input_type="select" if param.choices else _INPUT_TYPES.get(param.type, "text"),
                 value=value, choices=tuple(param.choices or ()),
                 hint=f"default {param.default}" if param.default is not None else "")


def _filter_fields(spec: Filter, query: Mapping[str, str]) -> list[Field]:
    column, label = spec.column, spec.column.replace("_", " ")

    def current(op: str) -> str:
        value = query.get(f"{column}[{op}]", query.get(column, "") if op == "eq" else "")
        return _for_input(value, spec.type) if op not in ("in", "like", "ilike") else value

    operators = spec.operators
    fields: list[Field] = []
    if spec.choices or spec.type == "boolean":
        choices = tuple(spec.choices or ("true", "false"))
        if "in" in operators:
            fields.append(Field(f"{column}[in]", f"{label}: {_LABELS['in']}", "select",
                                query.get(f"{column}[in]", query.get(column, "")), choices,
                                multiple=True))
        elif "eq" in operators:
            fields.append(Field(f"{column}[eq]", label, "select", current("eq"), choices))
    elif spec.type in ("integer", "number", "date", "datetime") and (
            "gte" in operators or "lt" in operators):
        for op in ("gte", "lt"):
            if op in operators:
                words = (_NUMBER_LABELS if spec.type in ("integer", "number") else _LABELS)[op]
                fields.append(Field(f"{column}[{op}]", f"{label}: {words}",
                                    _INPUT_TYPES[spec.type], current(op),
                                    hint="UTC" if spec.type == "datetime" else ""))
    else:
        for op in ("eq", "like", "ilike"):
            if op in operators:
                fields.append(Field(f"{column}[{op}]", f"{label}: {_LABELS[op]}", "text",
                                    current(op), hint="% matches any text" if "like" in op
                                    else ""))
                break
    if "in" in operators and not spec.choices:
        fields.append(Field(f"{column}[in]", f"{label}: {_LABELS['in']}", "text",
                            query.get(f"{column}[in]", ""), hint="comma-separated"))
    if "isnull" in operators:
        fields.append(Field(f"{column}[isnull]", f"{label}: {_LABELS['isnull']}", "select",
                            query.get(f"{column}[isnull]", ""), ("true", "false")))
    return fields


def _for_input(value: str, value_type: str) -> str:
    """A query value as its input shows it: ``datetime-local`` takes no zone."""
    if value_type != "datetime" or not value:
        return value
    try:
        return parse_instant(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return value
