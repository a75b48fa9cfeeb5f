"""The query-string parser on its own: no app, no database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from reporting.report_error import ReportError
from reporting.reports import REPORTS
from reporting.request import ReportRequest, parse_request

EVENTS = REPORTS["events"]


def parse(query: dict[str, str], *, export: bool = False) -> ReportRequest:
    return parse_request(EVENTS, {name: [value] for name, value in query.items()},
                         default_limit=50, max_limit=1000, export=export)


def refusal(query: dict[str, str], *, export: bool = False) -> ReportError:
    with pytest.raises(ReportError) as caught:
        parse(query, export=export)
    assert caught.value.status == 400
    return caught.value


def test_defaults_come_from_the_report_and_the_settings() -> None:
    request = parse({})
    assert (request.sort, request.descending, request.limit) == ("occurred_at", True, 50)
    assert (request.source, request.count, request.cursor) == ("all", "none", None)
    assert request.escape_formulas and request.filters == ()


def test_filters_are_typed_and_operators_checked() -> None:
    request = parse({"kind[in]": "login,view", "occurred_at[gte]": "2025-01-01",
                     "customer_id": "7"})
    by_column = {clause.column: clause for clause in request.filters}
    assert by_column["kind"].op == "in" and by_column["kind"].value == ("login", "view")
    assert by_column["occurred_at"].value == datetime(2025, 1, 1, tzinfo=UTC)
    assert by_column["customer_id"].op == "eq" and by_column["customer_id"].value == 7
    assert refusal({"order_id[gt]": "3"}).code == "unknown_operator"
    assert refusal({"customer_id": "seven"}).param == "customer_id"


@pytest.mark.parametrize(
    ("query", "code", "param"),
    [({"colour": "red"}, "unknown_parameter", "colour"),
     ({"sort": "detail"}, "invalid_sort", "sort"),
     ({"limit": "0"}, "invalid_limit", "limit"),
     ({"limit": "1001"}, "invalid_limit", "limit"),
     ({"source": "both"}, "invalid_source", "source"),
     ({"count": "all"}, "invalid_count", "count")],
)
def test_each_refusal_names_its_parameter(query: dict[str, str], code: str, param: str) -> None:
    error = refusal(query)
    assert (error.code, error.param) == (code, param)


def test_a_parameter_given_twice_is_refused() -> None:
    with pytest.raises(ReportError) as caught:
        parse_request(EVENTS, {"kind": ["a", "b"]}, default_limit=50, max_limit=1000)
    assert caught.value.param == "kind"


def test_one_filter_given_by_two_names_is_refused() -> None:
    """``customer_id=1&customer_id[eq]=2`` matched no row (both applied) while ``meta``
    echoed ``customer_id: 2`` alone: a client showing the applied filters showed one."""
    error = refusal({"customer_id": "1", "customer_id[eq]": "2"})
    assert (error.code, error.param) == ("invalid_value", "customer_id[eq]")
    assert error.detail == "'customer_id[eq]' repeats the filter 'customer_id': give it once"
    assert len(parse({"occurred_at[gte]": "2025-01-01", "occurred_at[lt]": "2026-01-01"}
                     ).filters) == 2


def test_an_instant_out_of_range_is_named_as_such() -> None:
    """A well-formed instant past the years both databases store was "not a valid
    datetime" (and on the command line "not an ISO-8601 date or instant")."""
    assert refusal({"occurred_at[gte]": "9999-12-31"}).detail == (
        "occurred_at[gte]='9999-12-31' is outside the years 1 to 9998 (UTC) that both "
        "databases store")
    assert refusal({"occurred_at[gte]": "2026-02-30"}).detail == (
        "occurred_at[gte]='2026-02-30' is not a valid datetime")


def test_a_report_with_one_source_defaults_to_it() -> None:
    runs = REPORTS["archive-runs"]
    request = parse_request(runs, {}, default_limit=50, max_limit=1000)
    assert request.source == "archive"
    with pytest.raises(ReportError):
        parse_request(runs, {"source": ["primary"]}, default_limit=50, max_limit=1000)


def test_exports_refuse_paging_and_read_the_formula_mode() -> None:
    assert parse({"formula": "raw"}, export=True).escape_formulas is False
    assert parse({}, export=True).escape_formulas is True
    assert refusal({"formula": "maybe"}, export=True).param == "formula"
    assert refusal({"limit": "10"}, export=True).param == "limit"
    assert refusal({"cursor": "abc"}, export=True).param == "cursor"
    assert parse({"formula": "raw"}).escape_formulas is True  # pages have no formulas


def test_an_unknown_parameter_lists_only_the_ones_that_kind_of_request_reads() -> None:
    """A CSV download listed ``cursor`` and ``limit`` as known, then refused both."""
    page = refusal({"colour": "red"}).detail.split("known: ")[1].split(", ")
    csv = refusal({"colour": "red"}, export=True).detail.split("known: ")[1].split(", ")
    assert {"limit", "cursor", "count"} <= set(page) and "formula" not in page
    assert "formula" in csv and not {"limit", "cursor", "count"} & set(csv)
    assert {"kind", "sort", "source", "columns"} <= set(page) & set(csv)


def test_echoed_parameters_are_plain_json() -> None:
    request = parse({"occurred_at[gte]": "2025-01-01T02:00:00+02:00", "kind[in]": "a,b"})
    assert request.normalised() == {"occurred_at[gte]": "2025-01-01T00:00:00Z",
                                    "kind[in]": ["a", "b"]}
