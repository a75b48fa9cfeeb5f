"""The web UI in a real browser: Debian's Chromium driven by Playwright.

One real ``serve`` per backend, with authentication on (the browser signs in with a token
through the sign-in form, so every page below also proves the session cookie works), over
demo data that ``archive run`` has partly archived. Every page is checked for console
errors (a Content Security Policy violation is one) and saved as a screenshot under
``test-artifacts/ui/`` (``SEDIMENT_TEST_ARTIFACTS`` moves it).

The browser is never Playwright's own download: ``/usr/bin/chromium`` from Debian, which
``scripts/dev.py test`` and ``.ci/run`` install. Without it the tests are skipped, except
with ``CI=true``, where they fail.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reporting.auth import hash_token, new_token
from tests.support import REPO, DatabaseFactory, env_for, free_port, in_ci, run_cli

CHROMIUM = Path("/usr/bin/chromium")
#: As the machine's notes advise: without the networking flags Chromium tries to reach
#: Google's hosts at start, which a closed network refuses, many times over.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ARTIFACTS = Path(os.environ.get("SEDIMENT_TEST_ARTIFACTS", REPO / "test-artifacts")) / "ui"
TOKEN = new_token()

if not CHROMIUM.exists():
    reason = (f"{CHROMIUM} is missing: `python3 scripts/dev.py test` installs Debian's "
              "chromium package")
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


class Site:
    """A running ``serve``: its base URL and the token it admits."""

    def __init__(self, base: str, env: dict[str, str]) -> None:
        self.base = base
        self.env = env

    def url(self, path: str) -> str:
        return self.base + path

    def fetch(self, path: str) -> bytes:
        request = urllib.request.Request(self.url(path),
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body: bytes = response.read()
            return body


@pytest.fixture(scope="module")
def site(databases: DatabaseFactory) -> Iterator[Site]:
    env = {**env_for(*databases.pair("ui")), "SEDIMENT_SCHEDULER__ENABLED": "false",
           "SEDIMENT_AUTH__ENABLED": "true",
           "SEDIMENT_AUTH__TOKENS__BROWSER__HASH": hash_token(TOKEN),
           "SEDIMENT_AUTH__TOKENS__BROWSER__SCOPES": '["reports", "csv", "archive"]'}
    for command in (["migrate"], ["seed", "--orders", "3000", "--events", "20000"],
                    ["archive", "run"]):
        result = run_cli(*command, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "run_service.py"), "serve", "--port", str(port)],
        cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/livez", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, process.communicate()[0]
                time.sleep(0.2)
        yield Site(base, env)
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, site: Site, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A signed-in page; fails the test on any console error it did not expect."""
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  accept_downloads=True)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda message: errors.append(message.text)
           if message.type == "error" else None)
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(site.url("/sign-in?next=/"))
    tab.fill("#token", TOKEN)
    tab.click("button[type=submit]")
    tab.wait_for_url(site.url("/"))
    yield tab
    expected = getattr(request.node, "expected_console", ())
    unexpected = [e for e in errors if not any(x in e for x in expected)]
    context.close()
    assert not unexpected, f"console errors: {unexpected}"


def shoot(tab, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def first_column(tab) -> list[str]:  # type: ignore[no-untyped-def]
    return [cell.strip() for cell in tab.locator("table.rows tbody tr td:first-child")
            .all_inner_texts()]


def column(tab, index: int) -> list[str]:  # type: ignore[no-untyped-def]
    return tab.locator(f"table.rows tbody tr td:nth-child({index})").all_inner_texts()


def test_signing_in_without_a_token_stays_out(browser, site: Site) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context()
    tab = context.new_page()
    tab.goto(site.url("/reports/orders"))
    assert "/sign-in" in tab.url
    shoot(tab, "sign-in")
    tab.fill("#token", "sediment_not-a-real-token")
    tab.click("button[type=submit]")
    assert "not valid" in tab.locator("p.error").inner_text()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(site.url("/api/v1/reports/orders"), timeout=10)
    refused.value.close()  # its response's socket: a ResourceWarning once collected
    assert refused.value.code == 401
    context.close()


def test_home_shows_databases_and_policies(page, site: Site) -> None:  # type: ignore[no-untyped-def]
    assert page.locator("h1").inner_text() == "Sediment now"
    assert page.locator("[data-database]").count() == 2
    for policy in ("orders", "events"):
        row = page.locator(f'tr[data-policy="{policy}"]')
        assert "done" in row.inner_text()
    assert page.locator("text=Signed in as").count() == 1
    shoot(page, "home")


def test_paging_forward_and_back(page, site: Site) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.url("/reports/events?limit=25"))
    first = first_column(page)
    assert len(first) == 25
    page.click("#next")
    second = first_column(page)
    assert len(second) == 25 and not set(first) & set(second)
    assert "Page 2" in page.locator(".summary").inner_text()
    page.click("#previous")
    assert first_column(page) == first
    shoot(page, "report-events")


def test_sorting_by_a_column_header(page, site: Site) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.url("/reports/orders?limit=20"))
    page.click('a[data-sort="total_cents"]')
    header = page.locator('th[aria-sort]')
    assert header.get_attribute("aria-sort") == "ascending"
    index = page.locator("table.rows thead th").all_inner_texts().index(
        header.inner_text()) + 1
    totals = [int(v) for v in column(page, index)]
    assert totals == sorted(totals)
    page.click('a[data-sort="total_cents"]')
    assert page.locator('th[aria-sort]').get_attribute("aria-sort") == "descending"
    totals = [int(v) for v in column(page, index)]
    assert totals == sorted(totals, reverse=True)


def test_a_filter_the_source_switch_and_the_csv_button(page, site: Site) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.url("/reports/orders?limit=50"))
    page.click("details.filters summary")
    page.select_option('select[name="status[in]"]', ["closed"])
    page.fill('input[name="total_cents[gte]"]', "20000")
    page.click("text=Apply")
    headers = page.locator("table.rows thead th").all_inner_texts()
    statuses = column(page, headers.index("status") + 1)
    totals = column(page, [h.strip() for h in headers].index("total_cents") + 1)
    assert statuses and set(statuses) == {"closed"}
    assert all(int(t) >= 20000 for t in totals)
    page.click('a[data-source="archive"]')
    assert "from ARCHIVE" in page.locator(".summary").inner_text()
    assert set(column(page, headers.index("status") + 1)) == {"closed"}
    shoot(page, "report-orders-filtered")
    href = page.locator("#csv").get_attribute("href")
    assert href is not None and "status%5Bin%5D=closed" in href and "source=archive" in href
    with page.expect_download() as download:
        page.click("#csv")
    saved = Path(download.value.path()).read_bytes()
    assert saved == site.fetch(href)
    rows = list(csv.DictReader(io.StringIO(saved.decode())))
    assert rows and {row["status"] for row in rows} == {"closed"}
    assert all(int(row["total_cents"]) >= 20000 for row in rows)


def test_the_archive_dashboard_chart_and_a_runs_drill_down(page, site: Site) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.url("/archive"))
    bars = page.locator("svg#archive-chart rect.bar")
    assert bars.count() >= 4  # one segment per archived table today
    drawn = sum(int(bars.nth(i).get_attribute("data-rows") or 0) for i in range(bars.count()))
    moved = sum(int(run) for run in re.findall(
        rb'"rows_moved":(\d+)', site.fetch("/api/v1/reports/archive-runs")))
    assert drawn == moved > 0
    assert page.locator("svg#archive-chart").bounding_box()["height"] > 100  # type: ignore[index]
    shoot(page, "archive")
    page.click("tr[data-run] a")
    assert page.locator("h1").inner_text().startswith("Run #")
    assert page.locator("table.counters tbody tr").count() >= 1
    shoot(page, "archive-run")


def test_keyboard_reaches_sorting_paging_and_the_form(page, site: Site) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.url("/reports/orders?limit=10"))
    reached = []
    for _ in range(80):
        page.keyboard.press("Tab")
        reached.append(page.evaluate(
            "() => { const e = document.activeElement;"
            " return [e.tagName, e.id, e.getAttribute('data-sort') || '',"
            " e.getAttribute('role') || '', e.textContent.trim().slice(0, 20)]; }"))
    assert reached[0][4] == "Skip to content"
    kinds = {(tag, role) for tag, _, _, role, _ in reached}
    assert ("SUMMARY", "") in kinds  # the filter form opens from the keyboard
    assert any(sort == "id" for _, _, sort, _, _ in reached)  # a sortable header
    assert ("DIV", "region") in kinds  # the table's scrolling region
    assert any(ident == "next" for _, ident, _, _, _ in reached)
    page.focus("details.filters summary")
    page.keyboard.press("Enter")
    page.focus('input[name="customer_id[eq]"]')
    page.keyboard.type("128")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"customer_id%5Beq%5D=128"))
    headers = page.locator("table.rows thead th").all_inner_texts()
    customers = column(page, [h.strip() for h in headers].index("customer_id") + 1)
    assert customers and set(customers) == {"128"}
    page.goto(site.url("/reports/orders?limit=10"))
    page.focus("#next")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"cursor="))


def test_the_catalog_and_an_error_page(page, site: Site, request: pytest.FixtureRequest) -> None:  # type: ignore[no-untyped-def]
    page.goto(site.url("/reports"))
    assert page.locator("table.catalog").count() == 2
    shoot(page, "catalog")
    page.click('a[href="/tables/events"]')
    assert page.locator("table.rows").count() == 1
    shoot(page, "table-events")
    request.node.expected_console = ("404",)  # the error page's own status
    page.goto(site.url("/reports/no-such-report"))
    assert page.locator("h1").inner_text().startswith("404")
    assert "no report" in page.locator(".detail").inner_text()
    shoot(page, "error")
