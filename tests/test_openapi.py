"""The OpenAPI document describes the API: schemathesis finds no 5xx and no mismatch.

Schemathesis' strategies are driven with hypothesis directly: its pytest plugin (4.32) does
not yet run under pytest 9. Every default check runs except ``positive_data_acceptance``:
a cursor is an opaque signed token, so a schema-valid random one is rightly refused.
"""

from __future__ import annotations

import schemathesis
import sqlalchemy as sa
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from reporting.reports import REPORTS
from reporting.state import state_of
from tests.archiving import seed_shop


def test_api_conforms_to_its_openapi_document(
    app: Flask, primary: sa.Engine, archive: sa.Engine
) -> None:
    seed_shop(primary, archive)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    tables = state_of(app).tables
    assert set(tables) == {"orders", "order_items", "payments", "events", "customers",
                           "products"}
    reports = state_of(app).reports
    assert set(REPORTS) < set(reports)  # and the demo's SQL files
    assert len(operations) == len(reports) + len(tables) + 2  # and the two catalogs
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def conforms(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(excluded_checks=[checks.positive_data_acceptance])

        conforms()


def test_document_lists_every_report(app: Flask) -> None:
    document = app.test_client().get("/api/v1/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    assert {f"/api/v1/reports/{name}" for name in REPORTS} <= document["paths"].keys()
    assert {f"/api/v1/tables/{name}" for name in state_of(app).tables} <= document["paths"].keys()
