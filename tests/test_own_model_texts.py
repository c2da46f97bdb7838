"""A model of the user's own classes speaks for itself, with and without ``other`` photos (issue 14).

Two real 3-class models (kimono / kilt / hanbok, generated photos, the real backbone) are trained
with the installed ``egr``: one with an ``other`` folder, one without. Their model card, API,
OpenAPI title, ``egr predict`` output and home page (headless Chromium) must name none of the
shipped groups and never speak of "12"; the model without ``other`` warns at ``data info`` and
``train`` time and says everywhere that it cannot answer "none of these". The shipped model keeps
its own wording, now read from its directory.
"""

# ruff: noqa: F811 - the serve_fixtures fixtures are imported by name for pytest
from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import pattern_image
from serve_fixtures import LiveServer, live_server, recognizer, site_origin  # noqa: F401

from ethnic_group_recognizer.config import LABELS
from ethnic_group_recognizer.evaluate import evaluate
from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.serve.app import ServeSettings, create_app

EGR = str(Path(sys.executable).parent / "egr")
#: Kinds of generated photo per class; the labels are the user's, nothing shipped.
OWN = {"kimono": "stripes", "kilt": "checker", "hanbok": "circles"}
TIMEOUT_MS = 60_000
#: How the product used to speak of the shipped model's 12 groups.
TWELVE = re.compile(r"\b12 (labels|groups|ethnic)|these 12|the 12\b|of 12\b", re.IGNORECASE)
SHIPPED_WORDS = (*LABELS, "Ethnic Group Recognizer", "Hani", "Akha", "other cultures", "costume photos")


def egr(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([EGR, *args], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"egr {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
    return result


def assert_speaks_for_itself(text: str, where: str) -> None:
    assert not TWELVE.search(text), f"{where} speaks of 12: {TWELVE.search(text)[0]!r}"
    for word in SHIPPED_WORDS:
        assert word.lower() not in text.lower(), f"{where} says {word!r}"


@dataclass
class OwnModel:
    dataset: Path
    model: Path
    info: subprocess.CompletedProcess
    train: subprocess.CompletedProcess
    photos: Path


def make_own_model(root: Path, with_other: bool) -> OwnModel:
    dataset = root / "dataset"
    kinds = {**OWN, **({"other": "noise"} if with_other else {})}
    for index, (label, kind) in enumerate(kinds.items()):
        (dataset / label).mkdir(parents=True)
        for i in range(10):
            pattern_image(kind, seed=index * 1000 + i).save(dataset / label / f"{kind}_{i}.jpg", quality=90)
    photos = root / "photos"
    photos.mkdir()
    for index, kind in enumerate(("stripes", "checker", "noise")):
        pattern_image(kind, seed=50_000 + index).save(photos / f"{kind}.png")
    info = egr("data", "info", str(dataset))
    model = root / "model"
    trained = egr("train", str(dataset), "--out", str(model), "--name", "my-costumes")
    evaluate(model, dataset, root / "report", split="val", update_model=True)
    return OwnModel(dataset, model, info, trained, photos)


@pytest.fixture(scope="module")
def with_other(tmp_path_factory: pytest.TempPathFactory) -> OwnModel:
    return make_own_model(tmp_path_factory.mktemp("with-other"), with_other=True)


@pytest.fixture(scope="module")
def without_other(tmp_path_factory: pytest.TempPathFactory) -> OwnModel:
    return make_own_model(tmp_path_factory.mktemp("without-other"), with_other=False)


def serve(model: Path) -> LiveServer:
    return LiveServer(create_app(ServeSettings(), recognizer=Recognizer.load(model))).start()


@pytest.fixture(scope="module")
def server_with_other(with_other: OwnModel) -> Iterator[LiveServer]:
    server = serve(with_other.model)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server_without_other(without_other: OwnModel) -> Iterator[LiveServer]:
    server = serve(without_other.model)
    yield server
    server.stop()


# -- training without other -----------------------------------------------------------------------
def test_without_other_data_info_and_train_warn_in_one_line_how_to_fix_it(without_other: OwnModel) -> None:
    for result in (without_other.info, without_other.train):
        warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
        assert len(warnings) == 1, result.stderr
        assert "none of these" in warnings[0] and "'other/' folder" in warnings[0]
        assert "--label other" in warnings[0] and str(without_other.dataset) in warnings[0]


def test_with_other_there_is_no_warning(with_other: OwnModel) -> None:
    assert "warning:" not in with_other.info.stderr + with_other.train.stderr


def test_egr_train_refuses_a_bad_card_or_title_at_once(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    for index, (label, kind) in enumerate(OWN.items()):
        (dataset / label).mkdir(parents=True)
        pattern_image(kind, seed=index).save(dataset / label / "a.jpg")
    (dataset / "card.toml").write_text('titel = "a typo"\n')
    out = tmp_path / "model"
    for args, expected in (
        ((), "card.toml: unknown key 'titel'"),
        (("--card", str(tmp_path / "missing.toml")), "missing.toml: no such card file"),
        (("--title", "two\nlines"), "--title must be one line"),
    ):
        result = subprocess.run(
            [EGR, "train", str(dataset), "--out", str(out), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.stderr
        assert not out.exists()  # refused before any training


# -- the model card --------------------------------------------------------------------------------
def test_the_model_card_describes_the_users_own_model(with_other: OwnModel, without_other: OwnModel) -> None:
    card = (with_other.model / "MODEL_CARD.md").read_text()
    assert_speaks_for_itself(card, "MODEL_CARD.md")
    assert "None of these 3" in card and all(label in card for label in OWN)
    assert "Article 5(1)(g)" in card  # the responsible-use rules hold for every model
    assert "did not say where its training photos come from" in card
    assert "abstains on 90% of the out-of-fold photos of other things" in card

    never = (without_other.model / "MODEL_CARD.md").read_text()
    assert_speaks_for_itself(never, "MODEL_CARD.md without other")
    assert 'It cannot say "none of these"' in never and "never abstains" in never
    assert "abstains on 90%" not in never and "(abstains) when" not in never


# -- the API ----------------------------------------------------------------------------------------
def test_the_api_gives_the_card_and_whether_the_model_can_abstain(
    server_with_other: LiveServer, server_without_other: LiveServer
) -> None:
    for server, can_abstain in ((server_with_other, True), (server_without_other, False)):
        model = httpx.get(f"{server.base}/api/v1/model", timeout=60).json()
        assert model["can_abstain"] is can_abstain
        card = model["card"]
        assert card["title"] == "Recognizer: my costumes" and card["none_of_these"] == "None of these 3"
        assert card["label_names"] == {label: label for label in sorted(OWN)}
        assert {"description", "intended_use", "out_of_scope_use"} <= set(card)
        assert_speaks_for_itself(" ".join(str(v) for v in card.values()), "/api/v1/model card")
        labels = httpx.get(f"{server.base}/api/v1/labels", timeout=60).json()
        assert labels["abstain"] == {"label": None, "text": "None of these 3", "can_abstain": can_abstain}
        spec = httpx.get(f"{server.base}/openapi.json", timeout=60).json()
        info = spec["info"]
        assert info["title"] == "Recognizer: my costumes"
        summaries = [op.get("summary", "") for path in spec["paths"].values() for op in path.values()]
        assert_speaks_for_itself(
            " ".join([info["title"], info["summary"], info["description"], *summaries]), "OpenAPI"
        )
        assert ('cannot answer "none of these"' in info["description"]) is not can_abstain
        card_text = httpx.get(f"{server.base}/api/v1/model-card", timeout=60).text
        assert_speaks_for_itself(card_text, "/api/v1/model-card")


# -- the CLI ----------------------------------------------------------------------------------------
def test_egr_predict_speaks_of_the_models_own_labels(with_other: OwnModel, without_other: OwnModel) -> None:
    for own in (with_other, without_other):
        table = egr("predict", str(own.photos), "--model", str(own.model))
        assert_speaks_for_itself(table.stdout + table.stderr, "egr predict")
        assert any(label in table.stdout for label in OWN)
        jsonl = egr("predict", str(own.photos), "--model", str(own.model), "--jsonl")
        assert_speaks_for_itself(jsonl.stdout, "egr predict --jsonl")
    never = egr("predict", str(without_other.photos), "--model", str(without_other.model), "--jsonl")
    assert '"label": null' not in never.stdout  # a model without other photos never abstains


# -- the pages, in Chromium -------------------------------------------------------------------------
@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


def home_page_text(page: object, base: str) -> str:
    page.goto(f"{base}/")
    page.wait_for_function("() => document.querySelector('[data-model=label-count]').textContent === '3'")
    return page.locator("body").inner_text()


@pytest.mark.browser
def test_the_home_page_speaks_for_the_model_and_says_when_it_cannot_abstain(
    page: object, server_with_other: LiveServer, server_without_other: LiveServer
) -> None:
    text = home_page_text(page, server_with_other.base)
    assert_speaks_for_itself(text, "home page")
    assert page.locator(".brand").inner_text() == "Recognizer: my costumes"
    assert "hanbok, kilt and kimono" in page.locator("#label-list").inner_text()
    assert "none of these 3" in text
    assert page.locator("[data-model-cannot-abstain]").is_hidden()

    text = home_page_text(page, server_without_other.base)
    assert_speaks_for_itself(text, "home page without other")
    notice = page.locator("li[data-model-cannot-abstain]")
    assert notice.is_visible() and 'cannot answer "none of these"' in notice.inner_text()

    page.goto(f"{server_without_other.base}/recognize.html")
    page.wait_for_function("() => document.querySelector('.brand').textContent === 'Recognizer: my costumes'")
    page.wait_for_function("() => !document.querySelector('span[data-model-cannot-abstain]').hidden")
    assert page.locator("#threshold-hint").is_hidden()  # no threshold claim for a model that never abstains
    assert_speaks_for_itself(page.locator("body").inner_text(), "Recognize page without other")

    page.goto(f"{server_without_other.base}/about.html")
    page.wait_for_function("() => !document.getElementById('labels-table').hidden")
    page.wait_for_function("() => document.getElementById('card-status').hidden")
    assert page.locator("#labels-heading").inner_text() == "The 3 labels"
    assert page.locator("#cannot-abstain").is_visible()
    uses = page.locator("#uses").inner_text()
    assert "Intended use." in uses and "Article 5(1)(g)" in uses
    # Its card has a Data section, but one that states no source: the page does not claim otherwise.
    assert "does not list where its training photos come from" in page.locator("#sources-text").inner_text()
    assert_speaks_for_itself(page.locator("body").inner_text(), "About page")
    assert page.errors == []


# -- the shipped model keeps its words -------------------------------------------------------------
def test_the_shipped_model_keeps_its_wording(live_server: LiveServer) -> None:
    model = httpx.get(f"{live_server.base}/api/v1/model", timeout=60).json()
    assert model["can_abstain"] is True
    assert model["card"]["title"] == "Ethnic Group Recognizer"
    assert model["card"]["none_of_these"] == "None of the 12 groups"
    assert "Article 5(1)(g)" in model["card"]["out_of_scope_use"]
    assert "cultural-heritage photographs" in model["card"]["intended_use"]
    assert httpx.get(f"{live_server.base}/openapi.json", timeout=60).json()["info"]["title"] == (
        "Ethnic Group Recognizer"
    )
    labels = httpx.get(f"{live_server.base}/api/v1/labels", timeout=60).json()
    assert labels["abstain"]["text"] == "None of the 12 groups"
    card = httpx.get(f"{live_server.base}/api/v1/model-card", timeout=60).text
    for phrase in ("12 ethnic groups", "None of the 12 groups", "Hani and Akha overlap", "Article 5(1)(g)"):
        assert phrase in card, phrase
