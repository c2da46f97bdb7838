"""The in-browser site (`egr site build --in-browser`): the model runs in headless Chromium.

The site is built into tmp_path (onnxruntime-web fetched with npm into the test cache on first
use), served by a plain static file server on 127.0.0.1 under a sub-path, as GitHub Pages
serves a project; no recognition server runs. Every request that is not for 127.0.0.1 is
aborted, and the server's own log must show only the site's files. Each photo's answer in the
browser is compared with :class:`Recognizer` in Python: the same label or abstention, the same
prediction set in the same order, every probability within 0.02, and the same words as the API's
page (both draw the result with ``web/result.js``). Under Node, ``web/local/decide.js`` is checked
against ``Recognizer.decide_rows`` bit for bit under every abstain rule and set calibration.
"""

from __future__ import annotations

import functools
import io
import json
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, pattern_image, require_shared_data
from node_runner import node_or_skip, run_node
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from ethnic_group_recognizer.cli import app as cli
from ethnic_group_recognizer.config import DEFAULT_MODEL_DIR
from ethnic_group_recognizer.images import load_image
from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.serve.core import model_texts
from ethnic_group_recognizer.vendor_ort import RuntimeFetchError

SUB_PATH = "project-name"
TOLERANCE = 0.02
LOAD_TIMEOUT_MS = 180_000  # first load: 14 MB runtime + model from a local server, WASM compile
PHOTO_TIMEOUT_MS = 120_000  # one photo, up to 7 views, one thread on a busy machine
EXPLAIN_TIMEOUT_MS = 480_000  # 50 single-view passes
WEB_LOCAL = REPO / "src" / "ethnic_group_recognizer" / "web" / "local"


# -- the site and its static server --------------------------------------------------------------
def build(out: Path, *extra: str) -> Path:
    """``egr site build --in-browser --out OUT``; skips only when npm is absent and nothing is cached."""
    result = CliRunner().invoke(cli, ["site", "build", "--in-browser", "--out", str(out), *extra])
    if result.exit_code != 0 and shutil.which("npm") is None and "npm is needed" in result.output:
        pytest.skip("npm is not installed, and the in-browser build needs it once to fetch onnxruntime-web")
    assert result.exit_code == 0, result.output
    return out


@dataclass
class StaticSite:
    base: str  # http://127.0.0.1:PORT/project-name/
    root: Path  # the built site
    requested: list[str] = field(default_factory=list)


def serve(www: Path, site: Path) -> Iterator[StaticSite]:
    requested: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        extensions_map = {
            **SimpleHTTPRequestHandler.extensions_map,
            ".mjs": "text/javascript",
            ".wasm": "application/wasm",
        }

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            requested.append(self.path)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
            """Keep test output clean."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield StaticSite(f"http://127.0.0.1:{server.server_address[1]}/{SUB_PATH}/", site, requested)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def shipped_site(tmp_path_factory) -> Iterator[StaticSite]:
    if not (DEFAULT_MODEL_DIR / "model.onnx").is_file():
        pytest.skip(f"the shipped default model is not in this checkout ({DEFAULT_MODEL_DIR})")
    www = tmp_path_factory.mktemp("www")
    site = build(www / SUB_PATH)
    yield from serve(www, site)


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer.load()


@pytest.fixture
def context(browser: object, shipped_site: StaticSite) -> Iterator[object]:
    yield from offline_context(browser)


def offline_context(browser: object) -> Iterator[object]:
    """A browser context that can reach 127.0.0.1 only: other hosts go to a dead proxy and are aborted."""
    context = browser.new_context(  # type: ignore[attr-defined]
        proxy={"server": "http://127.0.0.1:9", "bypass": "127.0.0.1"}
    )
    context.route(
        "**/*",
        lambda route: (
            route.continue_() if route.request.url.startswith("http://127.0.0.1:") else route.abort()
        ),
    )
    try:
        yield context
    finally:
        context.close()


def open_page(context: object, site: StaticSite) -> object:
    page = context.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(site.base + "recognize.html")
    page.wait_for_function(
        "() => ['ready', 'error', 'unsupported'].includes(document.documentElement.dataset.egrState)",
        timeout=LOAD_TIMEOUT_MS,
    )
    state = page.evaluate("document.documentElement.dataset.egrState")
    assert state == "ready", f"{state}: {page.text_content('#error')} {errors}"
    return page


def classify(page: object, photo: Path) -> dict:
    """Choose ``photo`` in the page; its label ("" = abstained) and every probability, as the page shows them."""
    page.set_input_files("#file", str(photo))  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "(name) => document.getElementById('result').dataset.photo === name"
        " || !document.getElementById('error').hidden",
        arg=photo.name,
        timeout=PHOTO_TIMEOUT_MS,
    )
    assert page.is_hidden("#error"), page.text_content("#error")  # type: ignore[attr-defined]
    result = page.locator("#result")  # type: ignore[attr-defined]
    warning = page.locator("#low-data-warning")  # type: ignore[attr-defined]
    return {
        "label": result.get_attribute("data-label"),
        "scores": json.loads(result.get_attribute("data-scores")),
        "prediction_set": json.loads(result.get_attribute("data-prediction-set")),
        "verdict": page.text_content("#verdict") or "",  # type: ignore[attr-defined]
        "coverage_note": page.text_content("#coverage-note") if page.is_visible("#coverage-note") else None,  # type: ignore[attr-defined]
        "low_data_warning": warning.text_content() if warning.is_visible() else "",
        "rows": page.locator("#scores li").count(),  # type: ignore[attr-defined]
    }


def assert_same(recognizer: Recognizer, photo: Path, shown: dict) -> None:
    """The page's answer is Recognizer's: label or abstention, the prediction set (same labels,
    same order), probabilities within TOLERANCE; and it says it as the API's page does."""
    expected = recognizer.predict(photo)
    assert shown["label"] == (expected.label or ""), (photo.name, shown, expected)
    assert shown["prediction_set"] == expected.prediction_set, (photo.name, shown, expected)
    wanted = {**expected.scores, "other": expected.abstain_probability}
    assert set(shown["scores"]) == set(wanted), photo.name
    gap = max(abs(shown["scores"][label] - p) for label, p in wanted.items())
    assert gap <= TOLERANCE, f"{photo.name}: probabilities differ by {gap:.4f}"
    members, verdict = expected.prediction_set, shown["verdict"]
    count = len(recognizer.labels)
    assert shown["rows"] == count + 1, "every label and the none-of-these row"
    if not members:  # the model card's own words for "none of these" (card.none_of_these)
        assert verdict.startswith(f"{model_texts(recognizer).abstain_text}."), verdict
    elif len(members) == 1:
        assert verdict.startswith(f"Most like {members[0]} ("), verdict
    elif len(members) <= 4:
        assert verdict == f"One of: {', '.join(members[:-1])} or {members[-1]}.", verdict
    else:
        assert verdict.startswith(f"Uncertain: it could be any of {len(members)} labels."), verdict
    if members and expected.coverage is not None:
        assert f"{expected.coverage:.0%} of photos" in (shown["coverage_note"] or ""), shown
    else:
        assert shown["coverage_note"] is None, shown
    low = [label for label in members if label in recognizer.low_data_labels()]
    for label in low:
        assert f"training photos of {label}" in shown["low_data_warning"] or (
            f"training photo of {label}" in shown["low_data_warning"]
        ), shown
    assert bool(low) == bool(shown["low_data_warning"]), shown


# -- photos made here -------------------------------------------------------------------------------
def save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def texture(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth colours, stripes and noise: every resize detail shows in the model's input."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    period = float(rng.uniform(6, 60))
    pixels = np.stack(
        [x * 255 / size[0], y * 255 / size[1], (np.sin(x / period) * np.cos(y / period) + 1) * 127], axis=-1
    )
    pixels += rng.normal(0, float(rng.uniform(2, 30)), pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def drawing(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, x1 = sorted(int(v) for v in rng.integers(0, size[0], 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, size[1], 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return image


def make_photos(folder: Path) -> list[Path]:
    """22 photos: PNG and JPEG, 48 px to 3000 px a side, square, tall and wide, grey, rotated by EXIF."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [
        (160, 120),
        (640, 480),
        (1600, 1200),
        (2400, 600),
        (300, 900),
        (64, 48),
        (320, 320),
        (3000, 2000),
    ]
    photos = []
    for index, size in enumerate(sizes):
        photos.append(save(texture(size, index), folder / f"texture{index}.png"))
        photos.append(save(drawing(size, index), folder / f"drawing{index}.jpg", quality=int(70 + 3 * index)))
    for index, kind in enumerate(("stripes", "checker", "circles", "noise")):
        photos.append(save(pattern_image(kind, seed=index, size=200 + 90 * index), folder / f"{kind}.jpg"))
    photos.append(save(texture((500, 375), 99).convert("L"), folder / "grey.png"))
    rotated = drawing((480, 320), 7)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    photos.append(save(rotated, folder / "exif-rotated.jpg", exif=exif, quality=90))
    return photos


# -- the tests --------------------------------------------------------------------------------------
def in_browser(test):
    """Drives headless Chromium (the ``browser`` marker) and takes more than a few seconds."""
    return pytest.mark.slow(pytest.mark.browser(test))


@in_browser
def test_photos_classified_in_the_browser_match_python(
    context: object, shipped_site: StaticSite, recognizer: Recognizer, tmp_path: Path
) -> None:
    photos = make_photos(tmp_path / "photos")
    assert len(photos) >= 20
    page = open_page(context, shipped_site)
    notice = page.text_content("#mode") or ""  # type: ignore[attr-defined]
    assert "runs on your device; no photo is sent anywhere" in notice
    manifest = json.loads((shipped_site.root / "site.json").read_text())
    assert not (shipped_site.root / "review").exists()  # needs egr review's server
    assert (shipped_site.root / "result.js").is_file()  # the result is drawn by the API page's code
    hint = page.text_content("#threshold-hint") or ""  # type: ignore[attr-defined]
    assert f"{recognizer.threshold:.0%} (its calibrated threshold)" in hint, hint
    if recognizer.abstain_rule == "in-scope-share":
        assert "row together" in hint, hint
    size_text = page.text_content("#model-size") or ""  # type: ignore[attr-defined]
    assert f"{manifest['model']['file']['bytes'] / 1e6:.1f} MB" in size_text
    assert manifest["model"]["weights"] in size_text
    assert page.evaluate(
        "document.getElementById('download').value === document.getElementById('download').max"
    )  # type: ignore[attr-defined]
    assert page.evaluate("document.getElementById('download').max") == (  # type: ignore[attr-defined]
        manifest["model"]["file"]["bytes"] + manifest["runtime"]["wasm"]["bytes"]
    )
    before = len(shipped_site.requested)
    for photo in photos:
        assert_same(recognizer, photo, classify(page, photo))
    # Nothing was fetched while classifying (no photo goes anywhere), and every request of the
    # whole visit was for the site's own files under its sub-path.
    assert shipped_site.requested[before:] == []
    assert shipped_site.requested and all(path.startswith(f"/{SUB_PATH}/") for path in shipped_site.requested)
    page.close()  # type: ignore[attr-defined]


@in_browser
def test_heatmap_is_computed_in_a_worker_like_explain_py(
    context: object, shipped_site: StaticSite, recognizer: Recognizer, tmp_path: Path
) -> None:
    from ethnic_group_recognizer.explain import explain

    photo = save(drawing((400, 300), 3), tmp_path / "explained.png")
    page = open_page(context, shipped_site)
    page.check("#explain")  # type: ignore[attr-defined]
    page.set_input_files("#file", str(photo))  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "() => document.getElementById('result').dataset.explained === 'explained.png'"
        " || !document.getElementById('error').hidden",
        timeout=EXPLAIN_TIMEOUT_MS,
    )
    assert page.is_hidden("#error"), page.text_content("#error")  # type: ignore[attr-defined]
    shown = json.loads(page.get_attribute("#result", "data-heatmap"))  # type: ignore[attr-defined]
    expected = explain(recognizer, load_image(photo))
    assert shown["label"] == expected.label
    assert np.abs(np.array(shown["heatmap"]) - expected.heatmap).max() <= TOLERANCE
    assert page.is_visible("#heatmap")  # type: ignore[attr-defined]
    assert (page.get_attribute("#heatmap", "src") or "").startswith("data:image/png")  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]


@in_browser
def test_a_browser_without_webassembly_is_told_why(context: object, shipped_site: StaticSite) -> None:
    page = context.new_page()  # type: ignore[attr-defined]
    page.add_init_script("delete window.WebAssembly")
    before = len(shipped_site.requested)
    page.goto(shipped_site.base + "recognize.html")
    page.wait_for_function(
        "() => document.documentElement.dataset.egrState === 'unsupported'", timeout=30_000
    )
    assert "WebAssembly" in (page.text_content("#unsupported") or "")
    assert page.is_visible("#unsupported") and page.is_disabled("#file")
    assert not any("model.onnx" in path or ".wasm" in path for path in shipped_site.requested[before:])
    page.close()


@in_browser
def test_about_page_reads_the_model_from_the_site(context: object, shipped_site: StaticSite) -> None:
    page = context.new_page()  # type: ignore[attr-defined]
    page.goto(shipped_site.base + "about.html")
    page.wait_for_function("() => !document.getElementById('labels-table').hidden", timeout=30_000)
    assert page.locator("#labels-table tbody tr").count() == 12
    page.wait_for_function("() => document.getElementById('card').textContent.length > 100", timeout=30_000)
    assert page.is_hidden("[data-api-link]")  # no API to link to
    page.close()


@in_browser
def test_a_site_for_another_model_gives_its_labels_and_low_data_warnings(
    browser: object, trained_model: Path, tmp_path: Path
) -> None:
    """``--model``: a 3-label model trained on patterns; it labels them, and every label is low-data."""
    www = tmp_path / "www"
    site_root = build(www / SUB_PATH, "--model", str(trained_model))
    other = Recognizer.load(trained_model)
    assert other.conformal is not None, "egr train calibrates prediction sets: the page must give them"
    photos = [
        save(pattern_image(kind, seed=500 + i), tmp_path / f"{kind}{i}.{'png' if i % 2 else 'jpg'}")
        for i, kind in enumerate(("stripes", "checker", "circles", "noise", "stripes", "checker"))
    ]
    for site in serve(www, site_root):
        for context in offline_context(browser):
            page = open_page(context, site)
            labelled = 0
            for photo in photos:
                shown = classify(page, photo)
                assert_same(other, photo, shown)
                if shown["label"]:
                    labelled += 1
                    assert page.is_visible("#low-data-warning")  # type: ignore[attr-defined]
                    assert "training photo" in (page.text_content("#low-data-warning") or "")  # type: ignore[attr-defined]
            assert labelled >= 3, "the pattern model should label its own patterns"


@pytest.mark.shared
@in_browser
def test_real_photos_match_python(
    context: object, shipped_site: StaticSite, recognizer: Recognizer, tmp_path: Path
) -> None:
    examples = require_shared_data() / "examples"
    photos = sorted(p for p in examples.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:8]
    if not photos:
        pytest.skip(f"no JPEG or PNG photos under {examples}")
    page = open_page(context, shipped_site)
    for index, source in enumerate(photos):
        photo = tmp_path / f"real{index}{source.suffix.lower()}"
        shutil.copyfile(source, photo)
        assert_same(recognizer, photo, classify(page, photo))
    page.close()  # type: ignore[attr-defined]


# -- without a browser ---------------------------------------------------------------------------------
NODE_CHECK = """
import fs from "node:fs";
import { resizeBilinear, gaussianBlur, rgbaToRgbOnWhite } from "PILLOW_JS";
const cases = JSON.parse(fs.readFileSync(0, "utf8"));
const out = cases.map((c) => {
  const input = Uint8Array.from(Buffer.from(c.input, "base64"));
  const got = c.op === "resize" ? resizeBilinear(input, c.w, c.h, c.ow, c.oh)
    : c.op === "blur" ? gaussianBlur(input, c.w, c.h, c.radius) : rgbaToRgbOnWhite(input);
  return Buffer.from(got).toString("base64");
});
process.stdout.write(JSON.stringify(out));
"""


@pytest.mark.parametrize("seed", [0, 1])
def test_pillow_js_is_pillow_bit_for_bit(tmp_path: Path, seed: int) -> None:
    """web/local/pillow.js against Pillow: bilinear resize (up, down, one axis), Gaussian blur, alpha."""
    from PIL import ImageFilter

    node_or_skip()
    rng = np.random.default_rng(seed)
    cases, expected = [], []
    for w, h, ow, oh in [
        (640, 480, 320, 320),
        (97, 41, 320, 320),
        (321, 320, 320, 320),
        (2999, 37, 320, 320),
        (50, 60, 13, 7),
    ]:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cases.append({"op": "resize", "w": w, "h": h, "ow": ow, "oh": oh, "input": pixels.tobytes()})
        expected.append(Image.fromarray(pixels).resize((ow, oh), Image.Resampling.BILINEAR).tobytes())
    for side, radius in [(320, 320 / 7 / 2), (64, 3.3), (20, 40.0), (100, 0.7)]:
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        cases.append({"op": "blur", "w": side, "h": side, "radius": radius, "input": pixels.tobytes()})
        expected.append(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)).tobytes())
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    cases.append({"op": "alpha", "input": rgba.tobytes()})
    white = Image.new("RGBA", (16, 16), (255, 255, 255, 255))
    expected.append(Image.alpha_composite(white, Image.fromarray(rgba, "RGBA")).convert("RGB").tobytes())
    import base64

    for case in cases:
        case["input"] = base64.b64encode(case["input"]).decode()
    script = tmp_path / "check.mjs"
    script.write_text(NODE_CHECK.replace("PILLOW_JS", (WEB_LOCAL / "pillow.js").as_uri()))
    for case, want, got in zip(cases, expected, run_node(script, cases), strict=True):
        assert base64.b64decode(got) == want, case["op"]


DECIDE_CHECK = """
import fs from "node:fs";
import { decide, modelFacts } from "DECIDE_JS";
const { labels, metadata, rows } = JSON.parse(fs.readFileSync(0, "utf8"));
const facts = modelFacts(labels, metadata, { low_data_below: LOW_DATA, abstain_text: "none" });
const out = rows.map((row) => {
  const p = decide(Float32Array.from(row), facts);
  return { label: p.label, set: p.prediction_set, coverage: p.coverage, low: p.low_data, order: p.scores.map((s) => s.label) };
});
process.stdout.write(JSON.stringify(out));
"""


def decision_rows(k: int, seed: int) -> np.ndarray:
    """float32 rows of K labels + other: peaked, flat, tied, near-uniform, all mass on other."""
    rng = np.random.default_rng(seed)
    rows = [rng.dirichlet(np.full(k + 1, alpha)) for alpha in (0.1, 0.3, 1.0, 3.0) for _ in range(60)]
    tied = rng.dirichlet(np.ones(k + 1), 20)
    tied[:, 1] = tied[:, 0]  # equal probabilities: ranked by label order, as numpy's stable argsort
    rows += list(tied / tied.sum(axis=1, keepdims=True))
    rows += [np.eye(k + 1)[k], np.full(k + 1, 1 / (k + 1))]  # nothing on the labels; uniform
    # Rows whose label sum in numpy's pairwise order differs from a left-to-right sum in the last
    # bit: only an exact copy of numpy's summation gives their sets at a quantile on the boundary.
    candidates = rng.dirichlet(np.full(k + 1, 0.05), 6000).astype(np.float32).astype(float)
    pairwise = candidates[:, :k].sum(axis=1)
    in_order = np.cumsum(candidates[:, :k], axis=1)[:, -1]
    rows += list(candidates[pairwise != in_order][:40])
    return np.asarray(rows, dtype=np.float32)


def summed_differently(rows: np.ndarray, k: int) -> np.ndarray:
    """Which rows' label sums differ between numpy's pairwise order and a left-to-right sum."""
    known = rows[:, :k].astype(float)
    return known.sum(axis=1) != np.cumsum(known, axis=1)[:, -1]


def boundary_calibration(rows: np.ndarray, conformal: dict, nudge: bool) -> dict:
    """Each class's quantile set to the exact score one row gives it (or the float just below):
    a set differs as soon as JavaScript's score differs from numpy's in the last bit."""
    from ethnic_group_recognizer.conformal import _known, _sorted_scores

    k = conformal["n_labels"]
    known = _known(rows.astype(float), k)
    order, scores = _sorted_scores(known, 0, 0.0, None)
    qhat = list(conformal["per_class_qhat"])
    tricky = summed_differently(rows, k)
    for label in range(k):
        hits = np.argwhere((order[:, 1:3] == label) & (scores[:, 1:3] > 0))
        hits = hits[np.argsort(~tricky[hits[:, 0]], kind="stable")]  # the tricky rows first
        if len(hits):
            row, rank = hits[0]
            exact = float(scores[row, rank + 1])
            qhat[label] = float(np.nextafter(exact, 0.0)) if nudge else exact
    return {**conformal, "method": "aps", "k_reg": 0, "lam": 0.0, "per_class_qhat": qhat}


def metadata_variants(metadata: dict) -> dict[str, dict]:
    """The shipped model's metadata, and the same model under every other decision rule."""
    conformal = metadata.get("conformal")
    if conformal is None:
        pytest.skip("the shipped model has no conformal calibration to vary")
    legacy = {
        key: value
        for key, value in metadata.items()
        if key not in ("abstain_rule", "conformal", "conformal_curve")
    }
    top_label = {**conformal, "abstain_rule": "top-label"}
    variants = {
        "shipped": metadata,
        "legacy (no rule, no sets)": {**legacy, "threshold": 0.49},
        "legacy, never abstains": {**legacy, "threshold": 0.0},
        "top-label rule, marginal sets": {
            **legacy,
            "abstain_rule": "top-label",
            "conformal": {**top_label, "mondrian": False, "per_class_qhat": [], "qhat": 0.8},
        },
        "raps, pooled low-data quantile": {
            **metadata,
            "conformal": {**conformal, "method": "raps", "k_reg": 2, "lam": 0.05, "low_data_qhat": 0.97},
        },
        "too few photos: every label": {
            **metadata,
            "conformal": {**conformal, "mondrian": False, "per_class_qhat": [], "qhat": None},
        },
    }
    rows = decision_rows(len(metadata["training_counts"]), 0)
    for nudge in (False, True):
        variants[f"boundary{'-1 ulp' if nudge else ''}"] = {
            **metadata,
            "conformal": boundary_calibration(rows, conformal, nudge),
        }
    return variants


def test_decide_js_is_recognizer_decide(tmp_path: Path) -> None:
    """web/local/decide.js against Recognizer.decide_rows under Node: abstention, label, the same
    prediction set in the same order, coverage, low-data flag and ranking, for 300-odd rows under
    every abstain rule and set calibration (and quantiles that sit exactly on a row's score)."""
    from ethnic_group_recognizer.model import LOW_DATA_IMAGES

    node_or_skip()
    if not (DEFAULT_MODEL_DIR / "model.onnx").is_file():
        pytest.skip("the shipped default model is not in this checkout")
    labels = json.loads((DEFAULT_MODEL_DIR / "labels.json").read_text())
    metadata = json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text())
    rows = decision_rows(len(labels), 0)
    script = tmp_path / "decide.mjs"
    script.write_text(
        DECIDE_CHECK.replace("DECIDE_JS", (WEB_LOCAL / "decide.js").as_uri()).replace(
            "LOW_DATA", str(LOW_DATA_IMAGES)
        )
    )
    sizes: set[int] = set()
    for name, variant in metadata_variants(metadata).items():
        model = tmp_path / re.sub(r"\W+", "-", name)
        model.mkdir()
        shutil.copyfile(DEFAULT_MODEL_DIR / "model.onnx", model / "model.onnx")
        (model / "labels.json").write_text(json.dumps(labels))
        (model / "metadata.json").write_text(json.dumps(variant))
        other = Recognizer.load(model)
        expected = other.decide_rows(rows)
        low = set(other.low_data_labels())
        payload = {"labels": labels, "metadata": variant, "rows": [[float(v) for v in row] for row in rows]}
        for index, (want, got) in enumerate(zip(expected, run_node(script, payload), strict=True)):
            where = f"{name}, row {index}: {rows[index].tolist()}"
            assert got["label"] == want.label, where
            assert got["set"] == want.prediction_set, where
            assert got["coverage"] == want.coverage, where
            assert got["low"] == (want.label in low), where
            assert got["order"] == [label for label, _ in want.ranked()], where
            sizes.add(len(want.prediction_set))
    assert {0, 1, 2, 3, len(labels)} <= sizes, f"the rows should give every kind of set, got sizes {sizes}"


def test_fp16_weights_halve_the_download_and_keep_the_graph(tmp_path: Path) -> None:
    from ethnic_group_recognizer.site import compare_models, fp16_weights, probe_images

    if not (DEFAULT_MODEL_DIR / "model.onnx").is_file():
        pytest.skip("the shipped default model is not in this checkout")
    half = tmp_path / "half"
    half.mkdir()
    for name in ("labels.json", "metadata.json"):
        shutil.copyfile(DEFAULT_MODEL_DIR / name, half / name)
    assert fp16_weights(DEFAULT_MODEL_DIR / "model.onnx", half / "model.onnx") > 50
    assert (half / "model.onnx").stat().st_size < 0.55 * (DEFAULT_MODEL_DIR / "model.onnx").stat().st_size
    check = compare_models(Recognizer.load(), Recognizer.load(half), probe_images(6))
    assert check["photos"] == 6 and 0 < check["max_probability_difference"] < TOLERANCE


def test_npm_missing_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ethnic_group_recognizer.vendor_ort import ensure_runtime

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("EGR_ORT_WEB_TARBALL", raising=False)
    with pytest.raises(RuntimeFetchError, match="install Node.js with npm"):
        ensure_runtime(tmp_path / "cache")
    result = CliRunner().invoke(
        cli,
        ["site", "build", "--in-browser", "--out", str(tmp_path / "s")],
        env={"EGR_CACHE_DIR": str(tmp_path / "c")},
    )
    assert result.exit_code == 2 and "npm is needed" in result.output


def test_a_tarball_that_is_not_the_pinned_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tarfile

    from ethnic_group_recognizer.vendor_ort import ensure_runtime

    fake = tmp_path / "onnxruntime-web-1.30.0.tgz"
    with tarfile.open(fake, "w:gz") as archive:
        data = b'{"version": "1.30.0"}'
        info = tarfile.TarInfo("package/package.json")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("EGR_ORT_WEB_TARBALL", str(fake))
    with pytest.raises(RuntimeFetchError, match="not the pinned"):
        ensure_runtime(tmp_path / "cache")
    assert not (tmp_path / "cache" / "npm" / "onnxruntime-web-1.30.0").exists()


def test_cli_needs_exactly_one_mode(tmp_path: Path) -> None:
    runner = CliRunner()
    neither = runner.invoke(cli, ["site", "build", "--out", str(tmp_path / "a")])
    assert neither.exit_code == 2 and "--api-url" in neither.output
    both = runner.invoke(
        cli, ["site", "build", "--in-browser", "--api-url", "https://a.org", "--out", str(tmp_path / "b")]
    )
    assert both.exit_code == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_model_with_other_preprocessing_is_refused() -> None:
    from ethnic_group_recognizer.site import check_preprocessing

    good = {"image_size": 320, "resize": "squish", "scale": "(pixel - 127) / 128", "channels": "RGB"}
    check_preprocessing({"preprocessing": good})
    for bad in ({**good, "resize": "center-crop"}, {**good, "crops": 4}, {**good, "image_size": "320"}):
        with pytest.raises(ValueError, match="preprocessing"):
            check_preprocessing({"preprocessing": bad})


class PageAudit(HTMLParser):
    """External URLs, inputs without a <label for>, the page language and its <main>."""

    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []
        self.inputs: list[str] = []
        self.label_for: set[str] = set()
        self.lang: str | None = None
        self.has_main = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.external += [
            v for k, v in values.items() if k in ("src", "href") and re.match(r"^(https?:)?//", v or "")
        ]
        self.lang = values.get("lang") if tag == "html" else self.lang
        self.has_main = self.has_main or tag == "main"
        if tag == "input" and values.get("type") != "hidden":
            self.inputs.append(values.get("id") or "")
        if tag == "label" and values.get("for"):
            self.label_for.add(values["for"] or "")


def test_the_in_browser_page_is_offline_and_accessible() -> None:
    audit = PageAudit()
    audit.feed((WEB_LOCAL / "recognize.html").read_text(encoding="utf-8"))
    assert audit.external == [] and audit.lang == "en" and audit.has_main
    assert all(audit.inputs) and set(audit.inputs) <= audit.label_for
    for script in WEB_LOCAL.glob("*.js"):
        assert not re.search(r"(import|from|fetch)\s*\(?\s*['\"`](https?:)?//", script.read_text()), script


def test_api_site_leaves_the_in_browser_sources_out(tmp_path: Path) -> None:
    from ethnic_group_recognizer.site import build_site

    files = build_site("https://api.example.org", tmp_path / "site")
    assert files and not (tmp_path / "site" / "local").exists()
    assert (tmp_path / "site" / "result.js").is_file()  # both Recognize pages draw results with it
