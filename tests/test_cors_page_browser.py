"""The original site's flow in a real browser: a static page on another port calls ``egr serve``.

``tests/fixtures_static/index.html`` behaves like the original public page (file input, FileReader
data URL, ``POST {data: [dataURL]}`` to ``/run/predict``, prints ``Prediction: <label>``). Served
from a second port it is cross-origin, so this proves the CORS setup and the Gradio 3 contract
together. The same page from an origin the server was not told about must fail.
"""

from __future__ import annotations

import functools
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import require_shared_data
from fixtures_static.servers import PAGE_DIR, default_recognizer, egr_serve, photo_bytes, plain_bytes

from ethnic_group_recognizer.model import Recognizer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TIMEOUT_MS = 30_000


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        """Keep test output clean."""


@pytest.fixture(scope="module")
def static_servers() -> Iterator[tuple[str, str]]:
    """Two static origins serving the page: one the API allows, one it does not."""
    handler = functools.partial(QuietHandler, directory=str(PAGE_DIR))
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in servers)  # type: ignore[misc]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return default_recognizer()


@pytest.fixture(scope="module")
def api(static_servers: tuple[str, str], recognizer: Recognizer) -> Iterator[str]:
    with egr_serve("--cors-origins", static_servers[0]) as running:
        yield running.base


def choose_photo_and_read_result(browser: object, page_origin: str, api: str, photo: Path) -> str:
    """Open the page, choose ``photo`` in its file input, return what the page prints."""
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(f"{page_origin}/index.html?api={api}")
        page.set_input_files("#photo", str(photo))
        result = page.locator("#result")
        page.wait_for_function(
            "() => /^(Prediction|Error):/.test(document.getElementById('result').textContent)",
            timeout=TIMEOUT_MS,
        )
        return result.text_content() or ""
    finally:
        page.close()


@pytest.mark.parametrize(
    ("name", "make"),
    [("texture.jpg", lambda: photo_bytes("JPEG")), ("plain.png", plain_bytes)],
)
def test_page_on_another_origin_shows_the_label(
    browser: object,
    static_servers: tuple[str, str],
    api: str,
    recognizer: Recognizer,
    tmp_path: Path,
    name: str,
    make: object,
) -> None:
    photo = tmp_path / name
    photo.write_bytes(make())  # type: ignore[operator]
    text = choose_photo_and_read_result(browser, static_servers[0], api, photo)
    assert text == f"Prediction: {recognizer.predict(photo).display_label}"


@pytest.mark.shared
def test_page_with_a_real_photo(
    browser: object, static_servers: tuple[str, str], api: str, recognizer: Recognizer, tmp_path: Path
) -> None:
    examples = require_shared_data() / "examples"
    photos = sorted(p for p in examples.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not photos:
        pytest.skip(f"no JPEG or PNG photos under {examples}")
    photo = tmp_path / f"photo{photos[0].suffix.lower()}"
    shutil.copyfile(photos[0], photo)  # a temporary copy: the browser needs a plain path
    text = choose_photo_and_read_result(browser, static_servers[0], api, photo)
    assert text == f"Prediction: {recognizer.predict(photo).display_label}"


def test_origin_not_allowed_is_blocked_by_the_browser(
    browser: object, static_servers: tuple[str, str], api: str, tmp_path: Path
) -> None:
    photo = tmp_path / "texture.png"
    photo.write_bytes(photo_bytes("PNG"))
    text = choose_photo_and_read_result(browser, static_servers[1], api, photo)
    assert text.startswith("Error:"), text
