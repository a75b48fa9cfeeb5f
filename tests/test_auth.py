"""API tokens, scopes and allow-lists; the admin reload; probes without a token.

The tokens are made by ``token create`` itself (its printed table is what the settings
load), so the whole path an operator takes is under test, not a fixture's shortcut.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from reporting.auth import hash_token
from reporting.security import SECURITY_HEADERS
from sediment.core.settings import SettingsError, load_settings
from sediment.service import build_service, warn_unknown_allowed
from tests.archiving import seed_shop
from tests.support import REPO, make_settings, run_cli

#: name -> (scopes, allow-list)
GRANTS = {
    "reader": ("reports", ""),
    "downloader": ("csv", ""),
    "operator": ("archive,reports", ""),
    "admin": ("admin", ""),
    "monitor": ("metrics", ""),
    "orders_only": ("reports,csv", "orders,orders-sql"),
}


def create_token(name: str, scopes: str, reports: str = "") -> tuple[str, dict[str, str]]:
    """Run ``token create``; return the token it printed and the variables it printed."""
    args = ["token", "create", "--name", name, "--scopes", scopes]
    result = run_cli(*args, *(["--reports", reports] if reports else []))
    assert result.returncode == 0, result.stderr
    token = re.search(r"^    (sediment_\S+)$", result.stdout, re.MULTILINE)
    assert token is not None, result.stdout
    variables = dict(re.findall(r"^(SEDIMENT_AUTH__\S+?)='(.*)'$", result.stdout, re.MULTILINE))
    return token.group(1), variables


@pytest.fixture(scope="module")
def issued() -> tuple[dict[str, str], dict[str, str]]:
    """Tokens by name, and the environment that admits them all."""
    tokens: dict[str, str] = {}
    environ = {"SEDIMENT_AUTH__ENABLED": "true"}
    for name, (scopes, reports) in GRANTS.items():
        tokens[name], variables = create_token(name, scopes, reports)
        environ.update(variables)
    return tokens, environ


@pytest.fixture
def secured(urls: tuple[str, str], app: Flask, primary: sa.Engine, archive: sa.Engine,
            issued: tuple[dict[str, str], dict[str, str]]) -> Iterator[FlaskClient]:
    seed_shop(primary, archive)
    service = build_service(make_settings(*urls, **issued[1]))
    try:
        yield service.app.test_client()
    finally:
        service.engines.dispose()


def bearer(issued: tuple[dict[str, str], dict[str, str]], name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issued[0][name]}"}


def assert_problem(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == code
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="sediment"')


def test_token_create_prints_a_token_whose_hash_it_prints(tmp_path: Path) -> None:
    result = run_cli("token", "create", "--name", "dashboards", "--scopes", "reports,csv",
                     "--reports", "orders")
    assert result.returncode == 0, result.stderr
    token = re.search(r"^    (sediment_\S+)$", result.stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert len(token) > 40
    table = result.stdout.split("[auth.tokens.dashboards]")[1].split("\n\n")[0]
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(f"[auth]\nenabled = true\n[auth.tokens.dashboards]{table}\n")
    settings = load_settings(settings_file, environ={})
    (configured,) = settings.auth.tokens
    assert configured.hash == hash_token(token)
    assert configured.scopes == ("reports", "csv") and configured.reports == ("orders",)
    assert token not in settings_file.read_text()


@pytest.mark.parametrize(("args", "named"), [
    (["--name", "Bad Name", "--scopes", "reports"], "'Bad Name'"),
    (["--name", "ok", "--scopes", "reports,everything"], "'everything'"),
])
def test_token_create_refuses_bad_values_in_one_line(args: list[str], named: str) -> None:
    result = run_cli("token", "create", *args)
    assert result.returncode == 2
    assert named in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(("variables", "key"), [
    ({"SEDIMENT_AUTH__TOKENS__X__HASH": "plain-text-token",
      "SEDIMENT_AUTH__TOKENS__X__SCOPES": '["reports"]'}, "auth.tokens.x.hash"),
    ({"SEDIMENT_AUTH__TOKENS__X__HASH": "sha256:" + "0" * 64,
      "SEDIMENT_AUTH__TOKENS__X__SCOPES": '["reports", "root"]'}, "auth.tokens.x.scopes"),
    ({"SEDIMENT_AUTH__TOKENS__X__HASH": "sha256:" + "0" * 64}, "auth.tokens.x.scopes"),
    ({"SEDIMENT_AUTH__TOKENS__X__HASH": "sha256:" + "0" * 64,
      "SEDIMENT_AUTH__TOKENS__X__SCOPES": '["reports"]',
      "SEDIMENT_AUTH__TOKENS__X__ROLE": "boss"}, "auth.tokens.x.role"),
])
def test_bad_token_settings_name_the_key(variables: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(REPO / "settings.toml", environ=variables)
    assert caught.value.key == key


@pytest.mark.parametrize("path", ["/api/v1/", "/api/v1/reports", "/api/v1/tables",
                                  "/api/v1/openapi.json", "/api/v1/reports/orders",
                                  "/api/v1/reports/orders.csv", "/api/v1/tables/events",
                                  "/api/v1/reports/no-such-report"])
def test_without_a_token_everything_but_the_probes_is_a_401(secured: FlaskClient,
                                                            path: str) -> None:
    response = secured.get(path)
    assert_problem(response, 401, "unauthorized")
    assert "orders" not in response.get_data(as_text=True).replace(path, "")


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz", "/metrics"])
def test_probes_and_metrics_answer_without_a_token(secured: FlaskClient, path: str) -> None:
    assert secured.get(path).status_code == 200


@pytest.mark.parametrize("header", ["Bearer nope", "Bearer ", "Basic dXNlcjpwYXNz", "token"])
def test_a_wrong_or_malformed_credential_is_a_401_naming_the_error(
        secured: FlaskClient, header: str) -> None:
    response = secured.get("/api/v1/reports/orders", headers={"Authorization": header})
    assert_problem(response, 401, "unauthorized")
    error = "invalid_token" if header == "Bearer nope" else "invalid_request"
    assert f'error="{error}"' in response.headers["WWW-Authenticate"]


def test_scopes_decide_json_csv_and_the_ledger(
        secured: FlaskClient, issued: tuple[dict[str, str], dict[str, str]]) -> None:
    def get(path: str, name: str) -> int:
        return secured.get(path, headers=bearer(issued, name)).status_code

    assert get("/api/v1/reports/orders", "reader") == 200
    assert get("/api/v1/tables/orders", "reader") == 200
    assert get("/api/v1/reports/orders.csv", "downloader") == 200
    assert get("/api/v1/reports/orders", "downloader") == 403
    assert get("/api/v1/reports/archive-runs", "reader") == 403
    assert get("/api/v1/reports/archive-runs", "operator") == 200
    assert get("/api/v1/reports/archive-runs.csv", "downloader") == 403  # csv without archive
    assert get("/api/v1/reports/orders", "admin") == 403
    denied = secured.get("/api/v1/reports/orders.csv", headers=bearer(issued, "reader"))
    assert_problem(denied, 403, "insufficient_scope")
    assert 'error="insufficient_scope", scope="csv"' in denied.headers["WWW-Authenticate"]


def test_an_allow_list_limits_reads_and_catalogs(
        secured: FlaskClient, issued: tuple[dict[str, str], dict[str, str]]) -> None:
    headers = bearer(issued, "orders_only")
    assert secured.get("/api/v1/reports/orders", headers=headers).status_code == 200
    assert secured.get("/api/v1/tables/orders.csv", headers=headers).status_code == 200
    assert_problem(secured.get("/api/v1/reports/events", headers=headers), 403,
                   "report_not_allowed")
    catalog = secured.get("/api/v1/reports", headers=headers).get_json()
    assert [r["name"] for r in catalog["reports"]] == ["orders", "orders-sql"]
    assert [t["name"] for t in catalog["tables"]] == ["orders"]
    paths = secured.get("/api/v1/openapi.json", headers=headers).get_json()["paths"]
    assert "/api/v1/reports/events" not in paths and "/api/v1/reports/orders" in paths
    full = secured.get("/api/v1/reports", headers=bearer(issued, "reader")).get_json()
    assert "archive-runs" not in [r["name"] for r in full["reports"]]  # not its scope
    assert len(full["reports"]) > 2


def test_metrics_can_need_their_own_token(
        urls: tuple[str, str], app: Flask,
        issued: tuple[dict[str, str], dict[str, str]]) -> None:
    service = build_service(make_settings(*urls, **issued[1],
                                          SEDIMENT_AUTH__METRICS_PUBLIC="false"))
    try:
        client = service.app.test_client()
        assert_problem(client.get("/metrics"), 401, "unauthorized")
        assert client.get("/metrics", headers=bearer(issued, "reader")).status_code == 403
        assert client.get("/metrics", headers=bearer(issued, "monitor")).status_code == 200
        assert client.get("/livez").status_code == 200
    finally:
        service.engines.dispose()


def test_admin_reload_needs_the_admin_scope_and_a_bearer_token(
        secured: FlaskClient, issued: tuple[dict[str, str], dict[str, str]]) -> None:
    assert_problem(secured.post("/api/v1/admin/reload"), 401, "unauthorized")
    assert_problem(secured.post("/api/v1/admin/reload", headers=bearer(issued, "reader")),
                   403, "insufficient_scope")
    response = secured.post("/api/v1/admin/reload", headers=bearer(issued, "admin"))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["reloaded"] and "orders" in body["reports"] and "events" in body["tables"]
    assert secured.get("/api/v1/admin/reload",
                       headers=bearer(issued, "admin")).status_code == 405


def test_a_bad_report_file_makes_the_admin_reload_a_422_and_keeps_the_reports(
        urls: tuple[str, str], app: Flask, tmp_path: Path,
        issued: tuple[dict[str, str], dict[str, str]]) -> None:
    service = build_service(make_settings(*urls, **issued[1],
                                          SEDIMENT_REPORTS__SQL_FOLDER=str(tmp_path)))
    try:
        client = service.app.test_client()
        (tmp_path / "broken.sql").write_text("-- title = 'x'\nSELECT FROM\n")
        response = client.post("/api/v1/admin/reload", headers=bearer(issued, "admin"))
        assert response.status_code == 422
        assert response.get_json()["code"] == "reload_refused"
        assert "broken.sql" in response.get_json()["detail"]
        assert client.get("/api/v1/reports/orders",
                          headers=bearer(issued, "reader")).status_code == 200
    finally:
        service.engines.dispose()


def test_with_authentication_off_nothing_needs_a_token(client: FlaskClient) -> None:
    assert client.get("/api/v1/reports/orders").status_code == 200
    assert client.get("/api/v1/reports/archive-runs.csv").status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/reports/orders", "/api/v1/reports/nothing",
                                  "/livez", "/metrics", "/no/such/page"])
def test_every_response_carries_the_security_headers(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    policy = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy


def test_data_read_with_a_token_is_not_cached(
        secured: FlaskClient, issued: tuple[dict[str, str], dict[str, str]]) -> None:
    response = secured.get("/api/v1/reports/orders", headers=bearer(issued, "reader"))
    assert response.headers["Cache-Control"] == "private, no-store"


def test_the_token_settings_round_trip_through_the_environment(
        issued: tuple[dict[str, str], dict[str, str]]) -> None:
    settings = load_settings(REPO / "settings.toml", environ=issued[1])
    assert {t.name for t in settings.auth.tokens} == set(GRANTS)
    assert json.loads(issued[1]["SEDIMENT_AUTH__TOKENS__OPERATOR__SCOPES"]) == [
        "archive", "reports"]


@pytest.mark.parametrize("scopes", [["reports,csv"], ["reports", "csv"]])
def test_token_create_needs_only_scopes(tmp_path: Path, scopes: list[str]) -> None:
    """``token create --scopes ...`` alone, comma- or space-separated: a name is made up."""
    result = run_cli("token", "create", "--scopes", *scopes)
    assert result.returncode == 0, result.stderr
    token = re.search(r"^    (sediment_\S+)$", result.stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]
    variables = dict(re.findall(r"^(SEDIMENT_AUTH__\S+?)='(.*)'$", result.stdout, re.MULTILINE))
    settings = load_settings(REPO / "settings.toml", environ=variables)
    (configured,) = settings.auth.tokens
    assert configured.name.startswith("token_") and configured.scopes == ("reports", "csv")
    assert configured.hash == hash_token(token)


def test_an_unknown_report_names_only_those_the_token_may_read(
        secured: FlaskClient, issued: tuple[dict[str, str], dict[str, str]]) -> None:
    response = secured.get("/api/v1/reports/nothing", headers=bearer(issued, "orders_only"))
    assert response.status_code == 404
    detail = response.get_json()["detail"]
    assert "orders" in detail and "events" not in detail and "archive-runs" not in detail


def test_an_allow_list_naming_nothing_served_is_named_at_startup(
        urls: tuple[str, str], app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    """``token create --reports ordres`` is accepted (it reads no database), and the token
    then read nothing by that name with no word at startup: a client's 403 was the first
    sign. The catalog check names the key and the unknown name, not the good ones."""
    _, variables = create_token("typo", "reports", "orders,ordres")
    service = build_service(make_settings(*urls, SEDIMENT_AUTH__ENABLED="true", **variables))
    try:
        with caplog.at_level("WARNING"):
            (problem,) = warn_unknown_allowed(service.app)
    finally:
        service.engines.dispose()
    assert problem.startswith("auth.tokens.typo.reports: 'ordres' is neither a report nor a "
                              "served table")
    assert problem in caplog.text
