"""``egr review`` in a real browser: the page served by a real uvicorn on 127.0.0.1, driven by
headless Chromium; every click and key is checked against the files on disk."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fixtures_static.servers import serve_in_thread
from test_clean import make_planted, snapshot

from ethnic_group_recognizer import clean
from ethnic_group_recognizer.serve.review import create_review_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TIMEOUT_MS = 20_000


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = make_planted(tmp_path / "dataset", per_class=6)
    for name in ("dupA.jpg", "dupB.jpg"):  # a group of three identical files
        shutil.copy(root / "Hani people/checker_5.jpg", root / f"Hani people/{name}")
    report = clean.find_issues(root, clean.CleanOptions(embeddings=False), show_progress=False)
    clean.save_queue(root, report)
    return root


@pytest.fixture
def review(dataset: Path) -> Iterator[str]:
    with serve_in_thread(create_review_app(dataset)) as url:
        yield url + "/"


def left(page) -> int:
    return int(page.locator("#left").text_content())


def wait_left(page, value: int) -> None:
    page.wait_for_function(
        f"() => document.getElementById('left').textContent === '{value}'", timeout=TIMEOUT_MS
    )


def card(page, path: str):
    return page.locator(f'.card[data-path="{path}"]')


def test_review_page_keys_clicks_groups_and_undo(browser, dataset: Path, review: str) -> None:
    before = snapshot(dataset)
    queue = clean.load_queue(dataset)
    page = browser.new_page()
    try:
        page.goto(review)
        page.wait_for_selector(".card", timeout=TIMEOUT_MS)
        total = len(queue)
        assert left(page) == total and page.locator("#total").text_content() == str(total)
        # Cards show their reasons; within a class the most suspicious comes first.
        copy_card = card(page, "Bai people/copy.jpg")
        assert "exact duplicate of Bai people/stripes_0.jpg" in copy_card.locator(".reasons").text_content()
        assert page.locator(".card img").first.evaluate("img => img.complete && img.naturalWidth > 0")

        # Keyboard: the focused card is removed with 'x' (moved to the quarantine, not deleted).
        first = page.locator(".card.current").get_attribute("data-path")
        page.keyboard.press("x")
        wait_left(page, total - 1)
        assert not (dataset / first).exists()
        assert (dataset / ".quarantine" / first).read_bytes() == before[first]

        # Bulk: keep one copy of a duplicate group and remove the rest, in one click.
        dup = card(page, "Hani people/dupB.jpg")
        dup.locator("button.keep-one").click()
        wait_left(page, total - 3)  # dupB kept, dupA (queued) and checker_5 removed
        assert (dataset / "Hani people/dupB.jpg").exists()
        assert not (dataset / "Hani people/dupA.jpg").exists()
        assert not (dataset / "Hani people/checker_5.jpg").exists()

        # Relabel with the card's own controls.
        tiny = card(page, "Kazakhs/tiny.jpg")
        tiny.locator("select.relabel-to").select_option("Hani people")
        tiny.locator("button.relabel").click()
        wait_left(page, total - 4)
        assert (dataset / "Hani people/tiny.jpg").read_bytes() == before["Kazakhs/tiny.jpg"]

        # 'k' keeps the focused card; 'u' undoes the last action (the keep), then the relabel.
        kept = page.locator(".card.current").get_attribute("data-path")
        page.keyboard.press("k")
        wait_left(page, total - 5)
        assert clean.Dataset(dataset).records[kept].extra["review"]["decision"] == "keep"
        page.keyboard.press("u")
        wait_left(page, total - 4)
        assert "review" not in clean.Dataset(dataset).records[kept].extra
        page.locator("#undo").click()
        wait_left(page, total - 3)
        assert (dataset / "Kazakhs/tiny.jpg").read_bytes() == before["Kazakhs/tiny.jpg"]

        # The class filter shows one class; 'show reviewed' brings back the decided cards.
        page.select_option("#class-filter", "Kazakhs")
        labels = page.locator("section").evaluate_all("sections => sections.map(s => s.dataset.label)")
        assert labels == ["Kazakhs"]
        page.select_option("#class-filter", "")
        page.check("#show-done")
        assert card(page, "Hani people/dupB.jpg").locator(".status").text_content() == "kept"
    finally:
        page.close()
    # Every action through the page is logged and undoable to the byte.
    clean.undo(dataset, all_actions=True)
    assert snapshot(dataset) == before


def page_token(client: httpx.Client) -> str:
    """The session token the review page carries (what the page's script sends back)."""
    match = re.search(r'name="egr-review-token" content="([^"]+)"', client.get("/").text)
    assert match, "the review page carries no session token"
    return match.group(1)


def test_review_api_refuses_bad_requests(dataset: Path, review: str) -> None:
    with httpx.Client(base_url=review, timeout=10) as client:
        client.headers["X-Review-Token"] = page_token(client)
        response = client.get("/api/image", params={"path": "../../etc/passwd"})
        assert response.status_code == 404
        assert response.json()["error"]["status"] == 404
        response = client.post("/api/action", json={"action": "explode", "paths": ["Bai people/copy.jpg"]})
        assert response.status_code == 422
        response = client.post("/api/action", json={"action": "relabel", "paths": ["Bai people/copy.jpg"]})
        assert response.status_code == 422 and "needs a label" in response.json()["error"]["message"]
        response = client.post("/api/action", json={"action": "remove", "paths": ["Bai people/nope.jpg"]})
        assert response.status_code == 404
        assert client.post("/api/undo", json={}).status_code == 409  # nothing to undo yet
        response = client.get("/api/image", params={"path": "Bai people/corrupt.jpg"})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"


def test_relabel_offers_only_the_dataset_labels_and_chooses_none(browser, dataset: Path, review: str) -> None:
    """Issue 14: no shipped label is offered, nothing is preselected, 'r' then Enter moves nothing."""
    before = snapshot(dataset)
    page = browser.new_page()
    try:
        page.goto(review)
        page.wait_for_selector(".card select.relabel-to", timeout=TIMEOUT_MS)
        current = page.locator(".card.current")
        select = current.locator("select.relabel-to")
        own = current.evaluate("card => card.closest('section').dataset.label")
        options = select.locator("option").evaluate_all("os => os.map(o => [o.value, o.disabled])")
        assert options[0] == ["", True], "the first entry is a prompt, not a label"
        offered = [value for value, _ in options[1:]]
        assert offered == [x for x in ["Bai people", "Hani people", "Kazakhs", "other"] if x != own]
        assert select.evaluate("s => s.value") == ""
        page.keyboard.press("r")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "() => document.getElementById('message').textContent.includes('choose a label')",
            timeout=TIMEOUT_MS,
        )
        assert left(page) == len(clean.load_queue(dataset))
    finally:
        page.close()
    assert snapshot(dataset) == before
    assert not (dataset / "Akha people").exists()


def test_review_needs_a_queue(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="run 'egr clean"):
        create_review_app(tmp_path / "empty")
