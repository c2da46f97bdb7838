"""A user's own 3-class model, end to end, through the real commands: nothing speaks of the shipped groups.

Made as a new user would make it (issue 14): a folder per class (kimono, kilt, hanbok) with and
without an ``other`` folder, then ``egr data import``, ``egr data info``, ``egr train``, ``egr
evaluate --update-model``, ``egr predict`` (table, ``--jsonl``, ``--csv``), ``egr serve`` (a real
server on 127.0.0.1: pages, API, OpenAPI, predict, and the pages as Chromium renders them),
``egr clean`` + ``egr review``, ``egr site build`` (both kinds) and ``egr space build``. Every
line printed and every page, API answer, card, report and built file is searched for the
shipped model's 12 labels and for "12 groups"-style wording; each failure names where and
quotes the text around the offence. The images are generated here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from conftest import REPO, pattern_image
from fixtures_static.servers import Server, egr_serve, free_port, run_server

pytestmark = pytest.mark.slow

OWN_LABELS = ("kimono", "kilt", "hanbok")
PATTERNS = {"kimono": "stripes", "kilt": "checker", "hanbok": "circles", "other": "noise"}
PER_CLASS = 8
#: The About page, as the pages link to it.
ABOUT = "/about.html"
#: The shipped model's labels, as whole words and case-sensitive ("Mon" but not "Monday" or "mon").
SHIPPED_LABEL = re.compile(r"\b(?:Akha|Bai|Chakma|Hani|Kazakhs?|Lisu|Mon|Naga|Qiang|Tatar|Tripuri|Uzbeks?)\b")
#: How the shipped model's wording counts its labels.
TWELVE = re.compile(r"\b(?:12 groups|12 ethnic|12 labels|of the 12|these 12)\b", re.IGNORECASE)
TEXT_SUFFIXES = {
    ".html",
    ".js",
    ".json",
    ".md",
    ".txt",
    ".py",
    ".css",
    ".toml",
    ".yaml",
    ".yml",
    ".csv",
    ".svg",
}
#: Each command's wall-clock limit: generous, so a busy machine does not fail the test.
COMMAND_TIMEOUT_S = 900
CARD_TOML = """title = "Garment finder"
description = "Tells a kimono, a kilt and a hanbok apart in a photo."
none_of_these = "none of these garments"
intended_use = "Sorting a costume collection's photos."
out_of_scope_use = "Anything about the people wearing them."

[label_names]
kilt = "Kilt (Scotland)"
"""


def offences(text: str) -> list[str]:
    """Every mention of a shipped label or of the 12, with the text around it."""
    found = []
    for pattern in (SHIPPED_LABEL, TWELVE):
        for match in pattern.finditer(text):
            start, end = max(0, match.start() - 50), min(len(text), match.end() + 50)
            found.append(f"{match.group(0)!r} in …{text[start:end]!r}…")
    return found


def assert_own_words_only(texts: dict[str, str]) -> None:
    """Fail naming every surface (``where``) that mentions a shipped label or the 12, and how."""
    problems = [f"{where}: {offence}" for where, text in texts.items() for offence in offences(text)]
    assert not problems, f"{len(problems)} mentions of the shipped model:\n" + "\n".join(problems)


def text_files(root: Path, skip_dirs: tuple[str, ...] = ()) -> dict[str, str]:
    """The text files under ``root`` (relative path -> text), outside the ``skip_dirs`` folders."""
    texts = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and path.suffix in TEXT_SUFFIXES and not set(relative.parts[:-1]) & set(skip_dirs):
            texts[str(relative)] = path.read_text(encoding="utf-8", errors="replace")
    return texts


@dataclass
class Journey:
    """One user's dataset, model and report, and every command line they ran with its output."""

    root: Path
    with_other: bool
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def dataset(self) -> Path:
        return self.root / "costumes"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def egr(self, *args: str | Path) -> str:
        """Run ``egr ARGS`` as a user would (a fresh process); its stdout and stderr, which must succeed."""
        command = [sys.executable, "-m", "ethnic_group_recognizer.cli", *map(str, args)]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            cwd=self.root,
            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        )
        output = done.stdout + done.stderr
        line = "egr " + " ".join(map(str, args))
        assert done.returncode == 0, f"{line} exited {done.returncode}:\n{output[-4000:]}"
        self.outputs[line] = output
        return done.stdout


def make_source(root: Path, with_other: bool) -> Path:
    """A user's photo folders: one per class, and optionally ``other`` (photos that are none of them)."""
    for index, (label, kind) in enumerate(PATTERNS.items()):
        if label == "other" and not with_other:
            continue
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            pattern_image(kind, seed=index * 100 + i, size=128).save(folder / f"{label}_{i}.jpg", quality=90)
    return root


def new_photos(root: Path) -> Path:
    """Photos the model has not seen, one of each kind, to predict."""
    root.mkdir(parents=True)
    for index, kind in enumerate(PATTERNS.values()):
        pattern_image(kind, seed=5000 + index, size=128).save(root / f"new_{kind}.jpg", quality=90)
    return root


@pytest.fixture(scope="module", params=["with-other", "without-other"])
def journey(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Journey:
    """Import, info, train, evaluate and predict, as README's "Train on your own classes" walks through."""
    with_other = request.param == "with-other"
    trip = Journey(tmp_path_factory.mktemp(request.param), with_other)
    source = make_source(trip.root / "photos", with_other)
    trip.egr("data", "import", source, "--out", trip.dataset)
    if with_other:  # the other journey keeps the neutral defaults
        (trip.dataset / "card.toml").write_text(CARD_TOML, encoding="utf-8")
    trip.egr("data", "info", trip.dataset)
    trip.egr("train", trip.dataset, "--out", trip.model)
    trip.egr("evaluate", trip.model, trip.dataset, "--out", trip.report, "--update-model")
    photos = new_photos(trip.root / "new")
    trip.egr("predict", photos, "--model", trip.model)
    trip.egr("predict", photos, "--model", trip.model, "--jsonl")
    trip.egr("predict", photos, "--model", trip.model, "--csv", trip.root / "predictions.csv")
    return trip


def test_the_model_has_the_users_labels(journey: Journey):
    labels = json.loads((journey.model / "labels.json").read_text(encoding="utf-8"))
    assert sorted(labels) == sorted(OWN_LABELS)
    jsonl = journey.outputs[next(line for line in journey.outputs if line.endswith("--jsonl"))]
    rows = [json.loads(line) for line in jsonl.splitlines() if line.startswith("{")]
    assert len(rows) == 4 and all(set(row["scores"]) == set(OWN_LABELS) for row in rows), rows


def test_train_and_info_warn_about_a_missing_other_folder_before_the_work(journey: Journey):
    train = journey.outputs[next(line for line in journey.outputs if line.startswith("egr train"))]
    info = journey.outputs[next(line for line in journey.outputs if line.startswith("egr data info"))]
    for output in (train, info):
        said = " ".join(output.split())
        assert ("has no 'other' photos" in said) == (not journey.with_other), said[-2000:]
    if not journey.with_other:  # before the minutes of embedding and fitting, not after them
        done = re.search(r"trained \d+ images in", train)
        assert done and train.index("has no 'other' photos") < done.start(), train[-2000:]


def test_evaluate_table_says_why_a_figure_is_missing(journey: Journey):
    evaluate = journey.outputs[next(line for line in journey.outputs if line.startswith("egr evaluate"))]
    assert "None" not in evaluate
    assert ("n/a (no 'other' photos)" in evaluate) == (not journey.with_other), evaluate


def test_cli_lines_speak_of_the_users_labels_only(journey: Journey):
    with (journey.root / "predictions.csv").open(encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle))
    assert not set(header) & {"Bai people", "Hani people", "Kazakhs"}, header
    texts = dict(journey.outputs)
    texts["predictions.csv"] = (journey.root / "predictions.csv").read_text(encoding="utf-8")
    helps = ("data", "train", "evaluate", "predict", "serve", "review", "site", "space")
    for command in helps if journey.with_other else ():  # the same text for both journeys
        texts[f"egr {command} --help"] = journey.egr(command, "--help")
    if journey.with_other:
        texts["egr --help"] = journey.egr("--help")
    assert_own_words_only(texts)


def test_model_card_and_report_speak_of_the_users_labels_only(journey: Journey):
    texts = {
        "model/MODEL_CARD.md": (journey.model / "MODEL_CARD.md").read_text(encoding="utf-8"),
        "report/MODEL_CARD.md": (journey.report / "MODEL_CARD.md").read_text(encoding="utf-8"),
        "report/report.html": (journey.report / "report.html").read_text(encoding="utf-8"),
        "model/metadata.json": (journey.model / "metadata.json").read_text(encoding="utf-8"),
    }
    for label in OWN_LABELS:
        assert label in texts["model/MODEL_CARD.md"], f"the card does not list {label}"
    assert_own_words_only(texts)


def test_card_toml_names_the_model_and_its_labels(journey: Journey, server: str):
    """card.toml's title heads the card and the API; its label names are what the API answers."""
    if not journey.with_other:
        pytest.skip("this journey has no card.toml")
    photo = (journey.root / "new" / "new_checker.jpg").read_bytes()
    answer = httpx.post(
        server + "/api/v1/predict", files={"image": ("k.jpg", photo, "image/jpeg")}, timeout=60
    ).json()
    card = (journey.model / "MODEL_CARD.md").read_text(encoding="utf-8")
    model = httpx.get(server + "/api/v1/model", timeout=30).text
    problems = [
        f"card.toml's title is not in {where}"
        for where, text in (("MODEL_CARD.md's heading", card.split("\n", 1)[0]), ("/api/v1/model", model))
        if "Garment finder" not in text
    ]
    if answer.get("label") != "kilt":
        problems.append(f"the checked photo is not a kilt: {answer}")
    elif answer.get("display_label") != "Kilt (Scotland)":
        problems.append(
            f"card.toml's label_names are not the API's display_label: {answer['display_label']!r}"
        )
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def served(journey: Journey) -> Iterator[Server]:
    """``egr serve --model`` the user's model on a free 127.0.0.1 port."""
    with egr_serve("--model", str(journey.model)) as running:
        yield running


@pytest.fixture
def server(served: Server) -> str:
    return served.base


def same_origin_assets(base: str, page: str, html_text: str) -> dict[str, str]:
    """The scripts and styles a page loads from the server: text a visitor reads comes from them too."""
    found = {}
    for reference in re.findall(r"""(?:src|href)=["']([^"'#?]+\.(?:js|css))""", html_text):
        url = urljoin(base + page, reference)
        if url.startswith(base):
            response = httpx.get(url, timeout=30)
            if response.status_code == 200:
                found[url[len(base) :]] = response.text
    return found


def test_server_pages_and_api_speak_of_the_users_labels_only(journey: Journey, served: Server):
    server = served.base
    texts: dict[str, str] = {}
    for path in ("/", ABOUT, "/api/v1/model", "/api/v1/labels", "/api/v1/model-card", "/openapi.json"):
        response = httpx.get(server + path, timeout=30)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:300]}"
        texts[path] = response.text
        if path in ("/", ABOUT):
            texts.update(same_origin_assets(server, path, response.text))
    photo = (journey.root / "new" / "new_stripes.jpg").read_bytes()
    answer = httpx.post(
        server + "/api/v1/predict", files={"image": ("p.jpg", photo, "image/jpeg")}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    texts["POST /api/v1/predict"] = answer.text
    assert {score["label"] for score in answer.json()["scores"]} == set(OWN_LABELS)
    grey = (journey.root / "new" / "new_noise.jpg").read_bytes()
    texts["POST /api/v1/predict (noise)"] = httpx.post(
        server + "/api/v1/predict", files={"image": ("n.jpg", grey, "image/jpeg")}, timeout=60
    ).text
    labels = httpx.get(server + "/api/v1/labels", timeout=30).json()
    assert OWN_LABELS[0] in json.dumps(labels)
    texts["egr serve (what it printed)"] = served.log()
    assert_own_words_only(texts)


def test_rendered_pages_speak_of_the_users_labels_only(journey: Journey, server: str, browser):
    """What a visitor reads: the pages after their scripts filled them from the model's API."""
    page = browser.new_page()
    texts = {}
    try:
        for path in ("/", ABOUT):
            page.goto(server + path, wait_until="networkidle", timeout=60_000)
            page.wait_for_function(  # the labels are filled in from /api/v1/model (display names may be capitalised)
                "labels => labels.some(l => document.body.innerText.toLowerCase().includes(l))",
                arg=list(OWN_LABELS),
                timeout=30_000,
            )
            texts[f"{path} (rendered)"] = page.evaluate("document.title + '\\n' + document.body.innerText")
    finally:
        page.close()
    assert_own_words_only(texts)
    if journey.with_other:
        header = texts["/ (rendered)"][:400]
        assert "Garment finder" in header, f"the page header is not the model's title: {header!r}"


def test_review_offers_the_datasets_labels_only(journey: Journey):
    journey.egr("clean", journey.dataset)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "ethnic_group_recognizer.cli",
        "review",
        str(journey.dataset),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-open",
    ]
    base = f"http://127.0.0.1:{port}"
    with run_server(command, base, "/api/queue") as review:
        page = httpx.get(base + "/", timeout=30)
        queue = httpx.get(base + "/api/queue", timeout=30)
        texts = {"review /": page.text, "review /api/queue": queue.text}
        texts.update({f"review {k}": v for k, v in same_origin_assets(base, "/", page.text).items()})
    assert page.status_code == 200 and queue.status_code == 200, review.log()[-2000:]
    offered = set(queue.json()["labels"])
    assert set(OWN_LABELS) <= offered <= set(OWN_LABELS) | {"other"}, f"relabel offers {sorted(offered)}"
    assert_own_words_only(texts)


def test_built_sites_speak_of_the_users_labels_only(journey: Journey):
    api_site, local_site = journey.root / "site-api", journey.root / "site-local"
    journey.egr("site", "build", "--api-url", "http://127.0.0.1:9", "--out", api_site)
    journey.egr("site", "build", "--in-browser", "--model", journey.model, "--out", local_site)
    texts = {f"site-api/{k}": v for k, v in text_files(api_site).items()}
    # ort/ is onnxruntime-web itself, vendored unchanged: not the product's text.
    texts |= {f"site-local/{k}": v for k, v in text_files(local_site, skip_dirs=("ort",)).items()}
    assert any(name.endswith(".html") for name in texts), sorted(texts)
    assert_own_words_only(texts)


def test_space_folder_speaks_of_the_users_labels_only(journey: Journey):
    space = journey.root / "space"
    journey.egr("space", "build", "--out", space, "--model", journey.model, "--source", REPO)
    texts = text_files(space)
    assert {"app.py", "requirements.txt", "README.md"} <= set(texts), sorted(texts)
    assert_own_words_only({f"space/{k}": v for k, v in texts.items()})
