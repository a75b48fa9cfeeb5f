"""An OpenAPI 3.1 document generated from the report registry."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from reporting.reports import Report
from reporting.reports.base import JSON_TYPES, ValueType
from reporting.request import COUNT_KINDS

PROBLEM = {"$ref": "#/components/responses/Problem"}
_FORMATS = {"datetime": "date-time", "date": "date", "uuid": "uuid"}


#: What the request parser accepts, as JSON Schema (see reporting/request.py).
LARGEST_INTEGER = 10**18 - 1
_ITEM_PATTERNS = {"integer": r"-?[0-9]{1,18}", "string": r"[^,\x00]{1,200}",
                  "number": r"[-+0-9.eE]{1,40}", "datetime": r"[-+0-9:.TZ ]{10,40}",
                  "date": r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
                  "uuid": r"[0-9a-fA-F-]{32,36}"}


def _schema(type_name: ValueType, nullable: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": JSON_TYPES[type_name]}
    if type_name in _FORMATS:
        schema["format"] = _FORMATS[type_name]
    if nullable:
        schema["type"] = [schema["type"], "null"]
    return schema


def _input_schema(type_name: ValueType, choices: tuple[str, ...] | None) -> dict[str, Any]:
    """A query parameter's schema, as strict as the parser."""
    schema = _schema(type_name, nullable=False)
    if choices:
        schema["enum"] = list(choices)
    elif type_name == "integer":
        schema.update(minimum=-LARGEST_INTEGER, maximum=LARGEST_INTEGER)
    elif type_name == "string":
        schema.update(minLength=0, maxLength=200, pattern=r"^[^\x00]*$")
    elif type_name == "datetime":
        schema["pattern"] = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-5][0-9]:[0-5][0-9]"
    return schema


def _list_schema(type_name: str, choices: tuple[str, ...] | None) -> dict[str, Any]:
    item = "(" + "|".join(choices) + ")" if choices else _ITEM_PATTERNS[type_name]
    return {"type": "string", "pattern": f"^{item}(,{item})*$",
            "description": "comma-separated values"}


def _parameters(report: Report) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = []
    for param in report.params:
        schema = _input_schema(param.type, param.choices)
        parameters.append({"name": param.name, "in": "query", "description": param.description,
                           "schema": schema})
    for spec in report.filters:
        for op in spec.operators:
            if op == "in":
                schema = _list_schema(spec.type, spec.choices)
            elif op == "isnull":
                schema = _input_schema("boolean", None)
            elif op in ("like", "ilike"):
                schema = _input_schema("string", None)
            else:
                schema = _input_schema(spec.type, spec.choices)
            name = spec.column if op == "eq" else f"{spec.column}[{op}]"
            parameters.append({"name": name, "in": "query", "description": spec.description,
                               "schema": schema})
    sorts = [*report.sort_keys, *(f"-{k}" for k in report.sort_keys)]
    parameters += [
        {"name": "sort", "in": "query", "schema": {"type": "string", "enum": sorts}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                    "maximum": 1000}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
        {"name": "source", "in": "query", "schema": {"type": "string",
                                                     "enum": list(report.sources)}},
        {"name": "count", "in": "query", "schema": {"type": "string",
                                                    "enum": list(COUNT_KINDS)}},
        {"name": "columns", "in": "query", "description": "comma-separated columns to return",
         "schema": {"type": "string"}},
    ]
    return parameters


def _page_schema(report: Report) -> dict[str, Any]:
    row = {"type": "object",
           "properties": {c.name: _schema(c.type) for c in report.columns}}
    return {
        "type": "object", "required": ["rows", "page", "count", "meta"],
        "properties": {
            "rows": {"type": "array", "items": row},
            "page": {"type": "object", "required": ["limit", "has_more", "next_cursor"],
                     "properties": {"limit": {"type": "integer"}, "has_more": {"type": "boolean"},
                                    "next_cursor": {"type": ["string", "null"]}}},
            "count": {"type": "object", "properties": {
                "value": {"type": ["integer", "null"]},
                "kind": {"type": "string", "enum": ["none", "estimated", "exact"]}}},
            "meta": {"type": "object"},
        },
    }


def openapi_document(reports: Mapping[str, Report],
                     tables: Mapping[str, Report] | None = None) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/api/v1/reports": {"get": {
            "operationId": "listReports", "summary": "The report catalog",
            "responses": {"200": {"description": "every report with its parameters",
                                  "content": {"application/json": {"schema": {
                                      "type": "object"}}}}}}},
    }
    if tables is not None:
        paths["/api/v1/tables"] = {"get": {
            "operationId": "listTables", "summary": "The tables served, with their columns",
            "responses": {"200": {"description": "every table with its columns and filters",
                                  "content": {"application/json": {"schema": {
                                      "type": "object"}}}}}}}
    for report in [*reports.values(), *(tables or {}).values()]:
        prefix = "table" if report.collection == "tables" else "report"
        paths[f"/api/v1/{report.collection}/{report.name}"] = {"get": {
            "operationId": f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', report.name)}",
            "summary": report.title, "description": report.description,
            "parameters": _parameters(report),
            "responses": {
                "200": {"description": "one page", "content": {"application/json": {
                    "schema": _page_schema(report)}}},
                "400": PROBLEM, "401": PROBLEM, "403": PROBLEM, "404": PROBLEM,
                "422": PROBLEM, "503": PROBLEM,
            },
        }}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sediment reports", "version": "1"},
        "paths": paths,
        # Needed when [auth] enabled is true; with it off, requests without one pass too.
        "security": [{"bearer": []}, {}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "responses": {"Problem": {
            "description": "RFC 9457 problem details",
            "content": {"application/problem+json": {"schema": {
                "type": "object", "required": ["type", "title", "status", "detail", "code"],
                "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                               "status": {"type": "integer"}, "detail": {"type": "string"},
                               "code": {"type": "string"}, "param": {"type": "string"}}}}},
        }}},
    }
