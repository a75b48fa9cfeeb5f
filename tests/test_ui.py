"""The web UI's pages through the test client: what each page holds, how its links carry
the API's query, signing in with a token (CSRF, cookie flags), and errors as pages.

The same pages in a real browser: tests/test_ui_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from reporting.auth import hash_token, new_token
from sediment.service import build_service
from tests.support import make_settings, walk_pages

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def hrefs(html: str, pattern: str = "") -> list[str]:
    return [unescape(h) for h in re.findall(r'href="([^"]*)"', html) if pattern in h]


def query_of(href: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(href).query)


def first_cells(html: str) -> list[str]:
    body = html.split('<tbody>', 1)[1].split('</tbody>', 1)[0]
    return re.findall(r"<tr><td[^>]*>([^<]*)</td>", body)


def test_home_shows_the_databases_and_each_policys_last_and_next_run(
        shop: Flask, client: FlaskClient) -> None:
    html = client.get("/", headers=HTML).get_data(as_text=True)
    assert 'data-database="primary"' in html and 'data-database="archive"' in html
    for policy in ("orders", "events"):
        row = html.split(f'data-policy="{policy}"')[1].split("</tr>")[0]
        assert "status-done" in row and "/archive/runs/" in row
    assert "Next run" in html


def test_a_report_page_pages_forward_and_back_by_cursor(shop: Flask,
                                                         client: FlaskClient) -> None:
    first = client.get("/reports/orders?limit=25", headers=HTML).get_data(as_text=True)
    (following,) = hrefs(first, "cursor=")
    second = client.get(following).get_data(as_text=True)
    assert first_cells(second) and first_cells(second) != first_cells(first)
    previous = [h for h in hrefs(second) if 'rel="prev"' in second and "back=" not in h
                and h.startswith("/reports/orders?")]
    back_link = re.search(r'<a href="([^"]*)" rel="prev"', second)
    assert back_link is not None and previous
    again = client.get(unescape(back_link.group(1))).get_data(as_text=True)
    assert first_cells(again) == first_cells(first)
    api = walk_pages(client, "/api/v1/reports/orders", "", limit=25)
    assert [str(r["id"]) for r in api[:50]] == first_cells(first) + first_cells(second)


def test_sort_links_toggle_and_start_from_the_first_page(shop: Flask,
                                                         client: FlaskClient) -> None:
    html = client.get("/reports/orders?limit=5&sort=total_cents", headers=HTML).get_data(
        as_text=True)
    assert 'aria-sort="ascending"' in html
    (toggle,) = [h for h in hrefs(html) if 'sort=-total_cents' in h]
    assert "cursor" not in query_of(toggle) and query_of(toggle)["limit"] == ["5"]
    flipped = client.get(toggle).get_data(as_text=True)
    assert 'aria-sort="descending"' in flipped


def test_the_filter_form_is_typed_by_column_and_submits_api_filters(
        shop: Flask, client: FlaskClient) -> None:
    html = client.get("/reports/orders", headers=HTML).get_data(as_text=True)
    assert re.search(r'<select id="f\d+" name="status\[in\]" multiple', html)
    assert re.search(r'name="placed_at\[gte\]" type="datetime-local"', html)
    assert re.search(r'name="total_cents\[gte\]" type="number"', html)
    # What a browser sends for the form: every field, empty ones included.
    page = client.get("/reports/orders?status[in]=closed&status[in]=cancelled"
                      "&placed_at[gte]=&total_cents[gte]=1000&limit=50&sort=id&source=all",
                      headers=HTML).get_data(as_text=True)
    (csv,) = hrefs(page, ".csv")
    assert query_of(csv) == {"status[in]": ["closed,cancelled"], "total_cents[gte]": ["1000"],
                             "sort": ["id"], "source": ["all"]}
    api = client.get(csv)
    assert api.status_code == 200
    assert 'value="1000"' in page and re.search(r'<option value="closed" selected>', page)


def test_the_source_switch_and_the_count_link(shop: Flask, client: FlaskClient) -> None:
    html = client.get("/tables/events?limit=10", headers=HTML).get_data(as_text=True)
    switches = {s: h for h in hrefs(html) for s in ("primary", "archive", "all")
                if query_of(h).get("source") == [s]}
    assert set(switches) == {"primary", "archive", "all"}
    archived = client.get(switches["archive"]).get_data(as_text=True)
    assert "from ARCHIVE" in archived
    (count,) = [h for h in hrefs(html) if "count=exact" in h]
    counted = client.get(count).get_data(as_text=True)
    expected = client.get("/api/v1/tables/events?count=exact").get_json()["count"]["value"]
    assert f'<strong id="count">{expected:,}</strong>' in counted


def test_the_archive_dashboard_draws_the_ledgers_rows_and_lists_the_runs(
        shop: Flask, client: FlaskClient, archive: sa.Engine) -> None:
    html = client.get("/archive", headers=HTML).get_data(as_text=True)
    drawn = sum(int(n) for n in re.findall(r'<rect class="bar"[^>]* data-rows="(\d+)"', html))
    with archive.connect() as connection:
        archived = connection.execute(sa.text(
            "SELECT sum(deleted) FROM archive_run_tables")).scalar_one()
    assert drawn == archived > 0
    runs = re.findall(r'href="/archive/runs/(\d+)"', html)
    assert len(runs) == 2
    detail = client.get(f"/archive/runs/{runs[0]}", headers=HTML).get_data(as_text=True)
    assert 'data-table="events"' in detail or 'data-table="orders"' in detail
    filtered = client.get("/archive?policy=events", headers=HTML).get_data(as_text=True)
    assert len(re.findall(r'href="/archive/runs/(\d+)"', filtered)) == 1


@pytest.mark.parametrize(("path", "status"), [
    ("/reports/nothing", 404), ("/reports/orders?limit=abc", 400),
    ("/reports/orders?status[like]=x", 400), ("/archive/runs/999999", 404),
    # Past a 64-bit integer: SQLite's driver raised OverflowError, a 500.
    ("/archive/runs/99999999999999999999", 404),
    ("/archive?policy=nope", 404), ("/no/such/page", 404),
])
def test_errors_on_pages_are_pages_and_the_api_keeps_problem_json(
        client: FlaskClient, path: str, status: int) -> None:
    page = client.get(path, headers=HTML)
    assert page.status_code == status and page.mimetype == "text/html"
    assert "<h1>" in page.get_data(as_text=True)
    assert page.headers["Content-Security-Policy"]
    api = client.get("/api/v1/reports/nothing", headers=HTML)
    assert api.status_code == 404 and api.mimetype == "application/problem+json"
    assert client.get(path).mimetype == "application/problem+json"  # no Accept: as before


TOKEN = new_token()
OTHER = new_token()
DOWNLOADER = new_token()


@pytest.fixture
def signed(urls: tuple[str, str], app: Flask) -> Iterator[FlaskClient]:
    settings = make_settings(*urls, SEDIMENT_AUTH__ENABLED="true",
                             SEDIMENT_AUTH__TOKENS__OPS__HASH=hash_token(TOKEN),
                             SEDIMENT_AUTH__TOKENS__OPS__SCOPES='["reports", "csv", "archive"]',
                             SEDIMENT_AUTH__TOKENS__READER__HASH=hash_token(OTHER),
                             SEDIMENT_AUTH__TOKENS__READER__SCOPES='["reports"]',
                             SEDIMENT_AUTH__TOKENS__DOWNLOADER__HASH=hash_token(DOWNLOADER),
                             SEDIMENT_AUTH__TOKENS__DOWNLOADER__SCOPES='["csv"]')
    service = build_service(settings)
    try:
        yield service.app.test_client()
    finally:
        service.engines.dispose()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def sign_in(client: FlaskClient, token: str, target: str = "/") -> None:
    form = client.get(f"/sign-in?next={target}").get_data(as_text=True)
    response = client.post("/sign-in", data={"csrf": csrf_of(form), "token": token,
                                             "next": target})
    assert response.status_code == 302 and response.headers["Location"] == target


def test_pages_send_a_signed_out_browser_to_sign_in_and_back(signed: FlaskClient) -> None:
    response = signed.get("/reports/orders?limit=5", headers=HTML)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/sign-in?next=")
    sign_in(signed, TOKEN, "/reports/orders?limit=5")
    assert signed.get("/reports/orders?limit=5", headers=HTML).status_code == 200
    assert signed.get("/api/v1/reports/orders.csv").status_code == 200  # the CSV button


def test_the_session_cookie_is_httponly_samesite_strict_and_signed(
        signed: FlaskClient) -> None:
    form = signed.get("/sign-in").get_data(as_text=True)
    response = signed.post("/sign-in", data={"csrf": csrf_of(form), "token": TOKEN})
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("sediment_session=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert TOKEN not in cookie


def test_sign_in_refuses_a_missing_csrf_token_and_a_wrong_token(signed: FlaskClient) -> None:
    stale = signed.post("/sign-in", data={"token": TOKEN}, headers=HTML)
    assert stale.status_code == 403
    assert "403: Form expired" in stale.get_data(as_text=True)  # not "Csrf failed"
    form = signed.get("/sign-in").get_data(as_text=True)
    refused = signed.post("/sign-in", data={"csrf": csrf_of(form), "token": "guess"})
    assert refused.status_code == 401
    assert "not valid" in refused.get_data(as_text=True)
    assert signed.get("/", headers=HTML).status_code == 302  # still signed out


def test_a_session_never_authorises_a_post(signed: FlaskClient) -> None:
    sign_in(signed, TOKEN)
    assert signed.post("/api/v1/admin/reload").status_code == 401


def test_sign_out_needs_the_csrf_token_and_ends_the_session(signed: FlaskClient) -> None:
    sign_in(signed, TOKEN)
    home = signed.get("/", headers=HTML).get_data(as_text=True)
    assert "Signed in as <strong>ops</strong>" in home
    assert signed.post("/sign-out").status_code == 403
    assert signed.post("/sign-out", data={"csrf": csrf_of(home)}).status_code == 302
    assert signed.get("/", headers=HTML).status_code == 302


def test_a_page_outside_the_tokens_scopes_is_a_403_page(signed: FlaskClient) -> None:
    sign_in(signed, OTHER)
    response = signed.get("/archive", headers=HTML)
    assert response.status_code == 403 and response.mimetype == "text/html"
    assert "archive" in response.get_data(as_text=True)
    home = signed.get("/", headers=HTML).get_data(as_text=True)
    assert "need a token with the <code>archive</code> scope" in home


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil"])
def test_sign_in_never_redirects_off_the_site(signed: FlaskClient, target: str) -> None:
    form = signed.get("/sign-in").get_data(as_text=True)
    response = signed.post("/sign-in", data={"csrf": csrf_of(form), "token": TOKEN,
                                             "next": target})
    assert response.headers["Location"] == "/"


def test_the_catalog_links_what_the_token_may_open(signed: FlaskClient) -> None:
    """A csv-only token gets download links and no page links (a page would be a 403);
    a reports-only token the reverse."""
    sign_in(signed, DOWNLOADER)
    catalog = signed.get("/reports", headers=HTML).get_data(as_text=True)
    assert 'href="/api/v1/reports/orders.csv"' in catalog
    assert 'href="/reports/orders"' not in catalog
    assert signed.get("/api/v1/reports/orders.csv").status_code == 200
    sign_in(signed, OTHER)
    catalog = signed.get("/reports", headers=HTML).get_data(as_text=True)
    assert 'href="/reports/orders"' in catalog
    assert 'href="/api/v1/reports/orders.csv"' not in catalog


def session_headers(client: FlaskClient, api: bool) -> list[tuple[int, str, str]]:
    """Status, ``Vary`` and ``Set-Cookie`` (value and expiry time left out) of each response
    of a visit: an API call and a page signed out, signing in, a page and an API call
    signed in, signing out, then an API call again."""
    def seen(response) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
        cookie = response.headers.get("Set-Cookie", "")
        # The value and the expiry (two sign-ins a second apart) differ between runs.
        cookie = re.sub(r"Expires=[^;]*; ", "Expires=; ", re.sub(r"=[^;]*", "=", cookie, count=1))
        return response.status_code, response.headers.get("Vary", ""), cookie

    responses = [client.get("/api/v1/reports/orders?limit=2"), client.get("/", headers=HTML)]
    form = client.get("/sign-in")
    responses += [form, client.post("/sign-in", data={
        "csrf": csrf_of(form.get_data(as_text=True)), "token": TOKEN})]
    home = client.get("/", headers=HTML)
    responses += [home, client.get("/api/v1/reports/orders?limit=2"),
                  client.post("/sign-out", data={"csrf": csrf_of(home.get_data(as_text=True))})]
    if api:
        client.delete_cookie("sediment_session")
    responses.append(client.get("/api/v1/reports/orders?limit=2"))
    return [seen(response) for response in responses]


@pytest.mark.parametrize("api", [False, True])
def test_sessions_answer_as_flasks_own_cookie_sessions(urls: tuple[str, str], app: Flask,
                                                        api: bool) -> None:
    """``SessionCookies`` skips reading and writing an empty session (every API call): each
    response carries the ``Vary`` and ``Set-Cookie`` Flask's own sessions give it."""
    from flask.sessions import SecureCookieSessionInterface

    settings = make_settings(*urls, SEDIMENT_AUTH__ENABLED="true",
                             SEDIMENT_AUTH__TOKENS__OPS__HASH=hash_token(TOKEN),
                             SEDIMENT_AUTH__TOKENS__OPS__SCOPES='["reports", "csv"]')
    seen = []
    for interface in (None, SecureCookieSessionInterface()):
        service = build_service(settings)
        try:
            if interface is not None:
                service.app.session_interface = interface
            seen.append(session_headers(service.app.test_client(), api))
        finally:
            service.engines.dispose()
    ours, flasks = seen
    assert ours == flasks
    assert any(cookie for _, _, cookie in ours) and any(vary for _, vary, _ in ours)
