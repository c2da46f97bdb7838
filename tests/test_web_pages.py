"""The web pages in headless Chromium against real servers on 127.0.0.1 (issues 13 and 14).

The pages speak for the model they are served with (a 3-label model trained here has no "12",
no shipped group and no product name); the result shows "none of these" as its own row and the
prediction set ("one of: A or B", folded when long); on a phone the result is scrolled into view,
the drop zone does not offer Ctrl+V and percentages stay beside their labels; large photos are
downscaled before they are sent; a static site on an origin the server does not allow says how to
fix it; the About page has one "Model card" heading and tells the truth about faces.

The set display is driven two ways: real uploads, and the page's own ``Recognize.renderResult``
called with crafted responses (the shipped model gives no set of more than four labels on demand).
"""

# ruff: noqa: F811 - the serve_fixtures fixtures are imported by name for pytest
from __future__ import annotations

import functools
import io
import json
import re
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_fixtures import (  # noqa: F401
    LiveServer,
    encode,
    free_port,
    live_server,
    photo,
    recognizer,
    site_origin,
)

from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.serve.app import ServeSettings, create_app
from ethnic_group_recognizer.site import build_site

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TIMEOUT_MS = 60_000
PHONE = {"width": 390, "height": 844}
NEUTRAL_TITLE = "Photo recognizer"


def percent(p: float) -> str:
    """The pages' EGR.percent, to compare what they print with the API's numbers."""
    value = p * 100
    return f"{value:.0f}%" if value >= 10 or value == 0 else f"{value:.1f}%"


def expected_title(model: dict) -> str:
    card = model.get("card") if isinstance(model.get("card"), dict) else {}
    for value in (card.get("title"), model.get("title")):
        if isinstance(value, str) and value.strip():
            return value.strip()
    name = str(model.get("name") or "").strip()
    return name if name and name != "default" else NEUTRAL_TITLE


@pytest.fixture
def new_page(browser: object) -> Iterator[object]:
    """Open pages in fresh contexts (desktop by default); every page error is collected."""
    contexts = []

    def open_page(**options: object) -> object:
        context = browser.new_context(**({"viewport": {"width": 1200, "height": 900}} | options))
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture(scope="module")
def small_server(trained_model: Path) -> Iterator[LiveServer]:
    """A server for a 3-label model of the user's own (generated patterns), nothing shipped."""
    server = LiveServer(create_app(ServeSettings(), recognizer=Recognizer.load(trained_model))).start()
    yield server
    server.stop()


def upload(page: object, path: Path) -> dict:
    """Choose ``path`` in the Recognize page's file input; the API's JSON once the result is shown."""
    with page.expect_response(lambda r: "/api/v1/predict" in r.url) as response:
        page.set_input_files("#file", str(path))
    page.locator("#result").wait_for(state="visible")
    return response.value.json()


def render(page: object, result: dict) -> None:
    page.evaluate("(result) => Recognize.renderResult(result, 'crafted.jpg')", result)


def crafted(labels: list[str], prediction_set: list[str] | None, low_data: bool = False) -> dict:
    """A predict response in the API's shape, scores falling from 0.4, with an optional set."""
    scores = [
        {
            "label": label,
            "probability": round(0.4 / (i + 1), 6),
            "training_images": 3 if low_data else 50,
            "low_data": low_data,
        }
        for i, label in enumerate(labels)
    ]
    result = {
        "label": None if prediction_set == [] else labels[0],
        "display_label": labels[0],
        "confidence": scores[0]["probability"],
        "abstained": prediction_set == [],
        "low_data": low_data,
        "scores": scores,
        "model": {"name": "crafted", "version": "1"},
    }
    if prediction_set is not None:
        result |= {"prediction_set": prediction_set, "coverage": 0.9}
    return result


# -- a model speaks for itself -------------------------------------------------------------
def test_pages_speak_for_a_users_own_model(new_page, small_server: LiveServer, tmp_path: Path) -> None:
    model = httpx.get(f"{small_server.base}/api/v1/model").json()
    labels = model["labels"]
    assert len(labels) == 3
    page = new_page()
    page.goto(f"{small_server.base}/")
    page.wait_for_function(
        "(n) => document.querySelector('[data-model=label-count]').textContent === n", arg="3"
    )
    listed = page.locator("#label-list").inner_text()
    assert all(label in listed for label in labels)
    assert page.locator(".brand").inner_text() == expected_title(model) == "Recognizer: test model"
    assert "none of these 3" in page.locator("main").inner_text()

    for path in ("/", "/recognize.html", "/about.html"):
        page.goto(f"{small_server.base}{path}")
        page.wait_for_function(
            "(t) => document.querySelector('.brand').textContent === t", arg="Recognizer: test model"
        )
        if path == "/about.html":
            page.wait_for_function("() => !document.getElementById('labels-table').hidden")
            assert page.locator("#labels-heading").inner_text() == "The 3 labels"
            # This model's card (generated from its metadata) has no data section to point at.
            page.wait_for_function("() => document.getElementById('card-status').hidden")
            assert (
                "does not list where its training photos come from"
                in page.locator("#sources-text").inner_text()
            )
        # The page's own words; the model card (#card) is the server's text, tested with the server.
        text = page.evaluate(
            "() => { const body = document.body.cloneNode(true); body.querySelector('#card')?.remove();"
            " return body.innerText; }"
        )
        assert not re.search(r"\b12 (labels|groups|ethnic)|these 12|the 12\b", text), f"{path} still says 12"
        for shipped in ("Ethnic Group Recognizer", "Akha", "Tripuri", "Uzbeks"):
            assert shipped not in text, f"{path} names {shipped!r}"

    page.goto(f"{small_server.base}/recognize.html")
    (tmp_path / "p.png").write_bytes(encode(photo(3), "PNG"))
    upload(page, tmp_path / "p.png")
    rows = page.locator("#scores li")
    assert rows.count() == 4
    assert page.locator("#scores li.none-of-these .score-label").inner_text() == "None of these 3"
    assert page.errors == []


# -- the result ------------------------------------------------------------------------------
def test_none_of_these_is_its_own_row(new_page, live_server: LiveServer, tmp_path: Path) -> None:
    page = new_page()
    page.goto(f"{live_server.base}/recognize.html")
    (tmp_path / "p.png").write_bytes(encode(photo(42), "PNG"))
    result = upload(page, tmp_path / "p.png")
    none_row = page.locator("#scores li.none-of-these")
    assert none_row.count() == 1
    remainder = 1 - sum(score["probability"] for score in result["scores"])
    assert none_row.locator(".score-value").inner_text() == percent(max(0.0, remainder))
    model = httpx.get(f"{live_server.base}/api/v1/model", timeout=60).json()
    assert none_row.locator(".score-label").inner_text() == model["card"]["none_of_these"]
    assert page.locator("#scores li").count() == len(result["scores"]) + 1
    values = [float(t.rstrip("%")) for t in page.locator("#scores .score-value").all_inner_texts()]
    assert values == sorted(values, reverse=True), "the none-of-these row takes its place in the ranking"
    if "prediction_set" in result:  # a server with conformal sets: the page shows the set it sent
        verdict = page.locator("#verdict").inner_text()
        members = result["prediction_set"]
        if not members:
            assert verdict.startswith(model["card"]["none_of_these"])
        elif len(members) <= 4:
            assert all(label in verdict for label in members)
    assert page.errors == []


def test_prediction_set_display(new_page, live_server: LiveServer) -> None:
    labels = [f"Group {c}" for c in "ABCDEF"]
    page = new_page()
    page.goto(f"{live_server.base}/recognize.html")
    page.wait_for_function("() => window.Recognize !== undefined")
    verdict, note = page.locator("#verdict"), page.locator("#coverage-note")

    # The page names "none of these" as the served model's card does (the shipped model's words),
    # once it has read the model (the header shows its title then).
    card = httpx.get(f"{live_server.base}/api/v1/model", timeout=60).json()["card"]
    page.wait_for_function("(t) => document.querySelector('.brand').textContent === t", arg=card["title"])
    none_of_these = card["none_of_these"]
    render(page, crafted(labels, []))
    assert verdict.inner_text().startswith(f"{none_of_these}.")
    assert note.is_hidden()

    render(page, crafted(labels, ["Group A"]))
    assert verdict.inner_text().startswith("Most like Group A (40%)")
    assert "90% of photos" in note.inner_text()

    render(page, crafted(labels, ["Group A", "Group B"]))
    assert verdict.inner_text() == "One of: Group A or Group B."
    assert "90% of photos" in note.inner_text() and note.is_visible()

    render(page, crafted(labels, labels[:4]))
    assert verdict.inner_text() == "One of: Group A, Group B, Group C or Group D."
    assert verdict.locator("details").count() == 0

    render(page, crafted(labels, labels[:5]))
    assert verdict.locator("p").inner_text() == "Uncertain: it could be any of 5 labels."
    details = verdict.locator("details")
    assert details.count() == 1 and details.get_attribute("open") is None, "the long list starts folded"
    assert details.locator("li").all_text_contents() == labels[:5]
    assert details.locator("li").first.is_hidden()
    details.locator("summary").click()
    assert details.locator("li").first.is_visible()

    render(page, crafted(labels, None))  # an older server without sets: today's wording
    assert verdict.inner_text() == "Most like Group A (40%)."
    assert note.is_hidden()
    assert page.errors == []


# -- phones ----------------------------------------------------------------------------------
def test_phone_scrolls_to_the_result_and_offers_no_paste(
    new_page, live_server: LiveServer, tmp_path: Path
) -> None:
    desktop = new_page()
    desktop.goto(f"{live_server.base}/recognize.html")
    assert "Ctrl" in desktop.locator("#drop-text").inner_text()

    page = new_page(viewport=PHONE, has_touch=True, is_mobile=True)
    page.goto(f"{live_server.base}/recognize.html")
    page.wait_for_function("() => window.Recognize !== undefined")
    assert page.evaluate("matchMedia('(pointer: coarse)').matches")
    drop_text = page.locator("#drop-text").inner_text()
    assert "Ctrl" not in drop_text and "paste" not in drop_text.lower()

    (tmp_path / "p.jpg").write_bytes(encode(photo(5, (600, 800)), "JPEG"))
    upload(page, tmp_path / "p.jpg")
    assert page.evaluate("document.getElementById('result').offsetTop") > PHONE["height"], (
        "the result starts below the first screen, so it has to be scrolled to"
    )
    page.wait_for_function(
        "() => { const r = document.getElementById('result').getBoundingClientRect();"
        " return r.top >= 0 && r.top < innerHeight / 2; }"
    )
    assert page.evaluate("scrollY") > 0
    page.screenshot(path=str(tmp_path / "phone-result.png"))
    assert page.errors == []


def test_percentages_stay_beside_badges_on_a_phone(new_page, live_server: LiveServer, tmp_path: Path) -> None:
    page = new_page(viewport=PHONE, has_touch=True, is_mobile=True)
    page.goto(f"{live_server.base}/recognize.html")
    page.wait_for_function("() => window.Recognize !== undefined")
    labels = [
        "Tripuri people of the northeast",
        "Chakma people",
        "A label long enough to need two lines here",
    ]
    render(page, crafted(labels, labels[:1], low_data=True))
    rows = page.evaluate(
        """() => [...document.querySelectorAll('#scores .score-head')].map((head) => {
             const label = head.querySelector('.score-label').getBoundingClientRect();
             const value = head.querySelector('.score-value').getBoundingClientRect();
             const box = head.getBoundingClientRect();
             return {label: label.top, value: value.top, valueHeight: value.height, right: value.right, headRight: box.right};
           })"""
    )
    assert len(rows) == 4
    for row in rows:
        assert abs(row["value"] - row["label"]) < row["valueHeight"] / 2, f"percentage wrapped: {row}"
        assert row["right"] <= row["headRight"] + 1
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(tmp_path / "phone-badges.png"), full_page=True)
    assert page.errors == []


# -- downscaling -------------------------------------------------------------------------------
def test_large_photo_is_downscaled_before_sending(new_page, live_server: LiveServer, tmp_path: Path) -> None:
    """A 2400 x 1800 noisy PNG (about 12 MiB, over the test server's 2 MiB limit) is sent as a JPEG
    with its short side at twice the model's input size."""
    model = httpx.get(f"{live_server.base}/api/v1/model").json()
    short_side = 2 * model["preprocessing"]["image_size"]
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 255, (1800, 2400, 3), dtype=np.uint8))
    path = tmp_path / "big.png"
    big.save(path)
    assert path.stat().st_size > model["serving"]["max_upload_bytes"]

    page = new_page()
    page.goto(f"{live_server.base}/recognize.html")
    page.wait_for_function("() => document.getElementById('size-hint').textContent.includes('MiB')")
    assert "2.0 MiB" in page.locator("#size-hint").inner_text()
    bodies: list[tuple[str, bytes]] = []

    def capture(route: object) -> None:
        """Keep what the page sends (Chromium hides a blob body from request events), pass it on."""
        bodies.append((route.request.headers["content-type"], route.request.post_data_buffer))
        route.continue_()

    page.route("**/api/v1/predict*", capture)
    page.set_input_files("#file", str(path))
    page.locator("#result").wait_for(state="visible")
    assert page.locator("#error").is_hidden()
    ((content_type, body),) = bodies
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    sent = next(
        part
        for part in message.iter_parts()
        if part.get_param("name", header="content-disposition") == "image"
    )
    image = Image.open(io.BytesIO(sent.get_payload(decode=True)))
    assert image.format == "JPEG"
    assert image.size == (round(2400 * short_side / 1800), short_side)
    assert "reduced from 2400 × 1800 px" in page.locator("#status").inner_text()
    assert page.errors == []


# -- a static site the server does not allow ------------------------------------------------------
class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        """Keep test output clean."""


def test_static_site_without_cors_says_how_to_fix_it(
    new_page, live_server: LiveServer, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    build_site(live_server.base, site)
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    assert origin not in json.dumps(httpx.get(f"{live_server.base}/api/v1/model").json()), (
        "not an allowed origin"
    )
    server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fix = f"egr serve --cors-origins {origin}"
    try:
        page = new_page()
        page.goto(f"{origin}/recognize.html")
        page.wait_for_function(
            "(fix) => document.getElementById('gallery-note').textContent.includes(fix)", arg=fix
        )
        assert "No example photos on this server" not in page.locator("#gallery-note").inner_text()
        (tmp_path / "p.jpg").write_bytes(encode(photo(9), "JPEG"))
        page.set_input_files("#file", str(tmp_path / "p.jpg"))
        error = page.locator("#error")
        error.wait_for(state="visible")
        assert fix in error.inner_text() and live_server.base in error.inner_text()
        assert "CORS" in error.inner_text()
    finally:
        server.shutdown()
        server.server_close()


# -- About ------------------------------------------------------------------------------------
def test_about_headings_sources_and_faces(new_page, live_server: LiveServer) -> None:
    labels = httpx.get(f"{live_server.base}/api/v1/labels").json()["labels"]
    page = new_page()
    page.goto(f"{live_server.base}/about.html")
    page.wait_for_function("() => document.getElementById('card-status').hidden")
    page.wait_for_function("() => !document.getElementById('labels-table').hidden")
    headings = page.locator("h1, h2, h3, h4, h5, h6").all_inner_texts()
    assert sum(h.startswith("Model card") for h in headings) == 1, headings
    assert page.locator("#labels-heading").inner_text() == f"The {len(labels)} labels"
    text = page.locator("body").inner_text()
    assert "not present on this machine" not in text
    assert "does not look at faces" not in text
    assert "the model is using that face" in text and "never will" in text
    data = page.locator("#card").locator("h2, h3, h4, h5, h6", has_text=re.compile(r"^Data", re.I))
    link = page.locator("#sources-text a")
    if data.count():  # the shipped card has a Data section: the page points at it, by its id
        assert link.get_attribute("href") == f"#{data.first.get_attribute('id')}"
    else:
        assert link.count() == 0 and "does not list" in page.locator("#sources-text").inner_text()
    page.goto(f"{live_server.base}/")
    assert "does not look at faces" not in page.locator("body").inner_text()
    assert page.errors == []
