"""``/healthz`` reports each database's reachability and schema revision."""

from __future__ import annotations

from flask import Flask

from reporting.app import create_app
from tests.support import DatabaseFactory, make_settings


def test_healthy_when_both_databases_are_at_head(app: Flask) -> None:
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    for name in ("primary", "archive"):
        assert body["databases"][name]["reachable"] is True
        assert body["databases"][name]["at_head"] is True


def test_unmigrated_databases_are_unavailable(databases: DatabaseFactory) -> None:
    app = create_app(make_settings(*databases.pair("health")))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["databases"]["primary"]["at_head"] is False


def test_unreachable_database_is_unavailable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing_dir = tmp_path / "gone" / "p.sqlite3"
    app = create_app(make_settings(f"sqlite:///{missing_dir}",
                                   "postgresql://nobody@127.0.0.1:1/none"))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    archive = response.get_json()["databases"]["archive"]
    assert archive["reachable"] is False
    assert "Traceback" not in response.get_data(as_text=True)


def test_unknown_path_is_a_problem_document(app: Flask) -> None:
    response = app.test_client().get("/nope")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "not_found"
