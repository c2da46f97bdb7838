"""``/docs`` and ``/redoc`` in headless Chromium: the operations render from OpenAPI 3.1, offline.

Swagger UI 4 (the swagger-ui-bundle package) showed a blank page for FastAPI's OpenAPI 3.1
("does not specify a valid version field"); the HTML test passed all the same. These tests open
the pages as a person would and read what they show.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from serve_fixtures import LiveServer, live_server, recognizer, site_origin  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TIMEOUT_MS = 60_000
#: Operations every documentation page must list (method, path).
OPERATIONS = [
    ("POST", "/api/v1/predict"),
    ("GET", "/api/v1/labels"),
    ("GET", "/api/v1/model"),
    ("POST", "/run/predict"),
]


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.outside_requests = []  # the docs must work with no internet: every request stays here
    page.on(
        "request",
        lambda request: (
            page.outside_requests.append(request.url)
            if urlsplit(request.url).hostname not in ("127.0.0.1", None)
            and not request.url.startswith(("data:", "blob:"))
            else None
        ),
    )
    # A request the page's Content-Security-Policy stopped never left the browser.
    page.on(
        "requestfailed",
        lambda request: (
            page.outside_requests.remove(request.url)
            if request.failure == "csp" and request.url in page.outside_requests
            else None
        ),
    )
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


def test_swagger_ui_renders_every_operation_from_openapi_31(page: object, live_server: LiveServer) -> None:  # noqa: F811
    assert httpx.get(live_server.base + "/openapi.json", timeout=30).json()["openapi"].startswith("3.1")
    response = page.goto(f"{live_server.base}/docs")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector(".opblock-summary-path", state="visible")
    shown = {
        (
            block.locator(".opblock-summary-method").inner_text().strip(),
            block.locator(".opblock-summary-path").inner_text().strip().replace("\u200b", ""),
        )
        for block in page.locator(".opblock").all()
    }
    for operation in OPERATIONS:
        assert operation in shown, f"{operation} not rendered; shown: {sorted(shown)}"
    body = page.locator("body").inner_text()
    assert "valid version field" not in body and "Unable to render" not in body
    assert page.locator(".info .title").inner_text().startswith("Ethnic Group Recognizer")
    # The prediction set is part of the documented answer.
    page.locator(".opblock-post .opblock-summary-path", has_text="/api/v1/predict").first.click()
    page.wait_for_selector(".opblock.is-open .responses-wrapper")
    assert "prediction_set" in page.locator(".opblock.is-open").inner_text()
    assert page.outside_requests == [] and page.errors == []


def test_redoc_renders_offline(page: object, live_server: LiveServer) -> None:  # noqa: F811
    response = page.goto(f"{live_server.base}/redoc")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector("text=Classify one photo", state="attached")
    page.wait_for_load_state("networkidle")
    text = page.locator("body").inner_text()
    for _, path in OPERATIONS:
        assert path in text, f"{path} not in ReDoc's page"
    assert page.outside_requests == [] and page.errors == []
