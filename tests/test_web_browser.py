"""The web app end to end in headless Chromium against a real server on 127.0.0.1.

Recognize: upload a photo and see the ranked labels (and "none of these"); upload a non-image and
see the error; the example gallery and the heatmap legend; About renders the model card. A built static site on another origin calls the
API through CORS. Screenshots are saved under each test's temporary folder.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from serve_fixtures import LiveServer, encode, live_server, photo, recognizer, site_origin  # noqa: F401

from ethnic_group_recognizer.site import build_site

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TIMEOUT_MS = 60_000


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.outside_requests = []  # every request must stay on 127.0.0.1: the site works offline
    page.on(
        "request",
        lambda request: (
            page.outside_requests.append(request.url)
            if urlsplit(request.url).hostname not in ("127.0.0.1", None)
            and not request.url.startswith("data:")
            else None
        ),
    )
    page.console_errors = []
    page.on("pageerror", lambda error: page.console_errors.append(str(error)))
    yield page
    context.close()


def test_recognize_photo_then_non_image(page: object, live_server: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    photo_path = tmp_path / "costume.png"
    photo_path.write_bytes(encode(photo(42), "PNG"))
    text_path = tmp_path / "notes.txt"
    text_path.write_text("this is not a photograph")

    page.goto(f"{live_server.base}/recognize.html")
    page.set_input_files("#file", str(photo_path))
    page.wait_for_selector("#scores li >> nth=12")
    assert page.locator("#scores li").count() == 13  # the 12 labels and "none of these"
    assert page.locator("#scores li.none-of-these").count() == 1
    assert page.locator("#error").is_hidden()
    verdict = page.locator("#verdict").inner_text()
    assert re.match(r"(None of the 12 groups\.|Most like |One of: |Uncertain: )", verdict), verdict
    percentages = [float(t.rstrip("%")) for t in page.locator("#scores .score-value").all_inner_texts()]
    assert percentages == sorted(percentages, reverse=True) and percentages[0] > 0
    assert page.locator("#scores .badge").count() >= 4  # the low-data labels are flagged
    assert page.locator("#preview").get_attribute("alt").endswith("costume.png")
    page.screenshot(path=str(tmp_path / "recognize.png"), full_page=True)

    page.set_input_files("#file", str(text_path))
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "not an image" in error.inner_text()
    assert page.locator("#result").is_hidden()
    page.screenshot(path=str(tmp_path / "recognize-error.png"), full_page=True)
    assert (tmp_path / "recognize.png").stat().st_size > 10_000
    assert page.outside_requests == [] and page.console_errors == []


def test_heatmap_and_gallery(page: object, live_server: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    page.goto(f"{live_server.base}/recognize.html")
    thumbs = page.locator("#gallery .thumb")
    thumbs.nth(2).wait_for()
    assert thumbs.count() == 3
    assert "Bai people" in thumbs.nth(0).locator("img").get_attribute("alt")
    page.check("#explain")
    thumbs.nth(0).focus()
    page.keyboard.press("Enter")  # keyboard works as well as a click
    page.wait_for_selector("#scores li >> nth=12")
    heatmap = page.locator("#heatmap")
    heatmap.wait_for(state="visible")
    assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
    assert "Heatmap" in heatmap.get_attribute("alt")
    legend = page.locator("#heatmap-legend")  # what the colours mean, and the honest word on faces
    assert legend.is_visible()
    assert "red" in legend.inner_text() and "using that face" in legend.inner_text()
    page.uncheck("#show-heatmap")
    assert heatmap.is_hidden()
    page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)
    assert page.outside_requests == [] and page.console_errors == []


def test_about_renders_the_model_card(page: object, live_server: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    page.goto(f"{live_server.base}/about.html")
    page.wait_for_selector("#card h3")  # the card's sections, under the page's own "Model card…" heading
    assert page.locator("#card-heading").inner_text().startswith("Model card")
    assert page.locator("#card h2").count() == 0  # the card's title is that heading, not said twice
    assert page.locator("#card table").count() >= 1
    assert page.locator("#labels-table tbody tr").count() == 12
    assert page.locator("#labels-table .badge").count() >= 4
    assert "Article 5(1)(g)" in page.locator("#responsible-use").inner_text()
    page.screenshot(path=str(tmp_path / "about.png"), full_page=True)
    assert page.outside_requests == [] and page.console_errors == []


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        """Keep test output clean."""


def test_static_site_on_another_origin(
    page: object,
    live_server: LiveServer,  # noqa: F811
    site_origin: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`egr site build` output, served from an origin the API allows, classifies through CORS."""
    site = tmp_path / "site"
    build_site(live_server.base, site)
    port = urlsplit(site_origin).port
    server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "p.jpg").write_bytes(encode(photo(9), "JPEG"))
        page.goto(f"{site_origin}/recognize.html")
        page.set_input_files("#file", str(tmp_path / "p.jpg"))
        page.wait_for_selector("#scores li >> nth=12")
        assert page.locator("#error").is_hidden()
        page.screenshot(path=str(tmp_path / "static-site.png"), full_page=True)
    finally:
        server.shutdown()
        server.server_close()
    assert page.console_errors == []


def test_home_is_usable_on_a_phone(browser: object, live_server: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    context = browser.new_context(viewport={"width": 375, "height": 740})
    page = context.new_page()
    page.goto(f"{live_server.base}/")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, "no horizontal scrolling on a narrow screen"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.screenshot(path=str(tmp_path / "home-phone.png"), full_page=True)
    context.close()
