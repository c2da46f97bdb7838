"""The in-browser page renders a model's views as ``views.render_views`` does (format 2), and still
runs format-1 models (one view a graph row, rows averaged by the page).

Under Node, ``web/local/views.js`` must give ``render_views``'s float32 input bit for bit, on
photo sizes where a crop box lands on a half pixel (Python's ``round`` rounds half to even,
JavaScript's ``Math.round`` half up), and must refuse the views ``parse_views`` refuses. In
headless Chromium, a site built for a format-2 model whose views sit on half pixels gives
``Recognizer.probabilities`` within 1e-4 (float noise between onnxruntime builds, not pixels)
and the heatmap of ``explain.explain``; a site for a format-1 model (the session's model with a
one-view-a-row graph, and the shipped model while it is format 1) gives its answers too. Each
browser check includes photos chosen (deterministically) because rounding half up, or dropping
the mirror's row, would move their probabilities by over 0.01: it fails for such a page.
The site, server and browser helpers are those of ``test_site_in_browser.py``.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from node_runner import run_node
from PIL import Image
from test_site_in_browser import (
    EXPLAIN_TIMEOUT_MS,
    SUB_PATH,
    WEB_LOCAL,
    StaticSite,
    assert_same,
    build,
    classify,
    drawing,
    in_browser,
    offline_context,
    open_page,
    save,
    serve,
    texture,
)

from ethnic_group_recognizer.config import DEFAULT_MODEL_DIR
from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.views import FULL, VIEW_SETS, View, pixel_box, render_views, scaled

#: Page against Python on the same pixels: only the two onnxruntime builds' float rounding differs.
EXACT = 1e-4
#: A probability change that float noise never gives: a photo whose views move it is "sensitive".
SENSITIVE = 1e-2
#: Views whose boxes land on half pixels for the photo sizes below (0.5 * 125 = 62.5, 0.25 * 90 = 22.5).
HALF_PIXEL_VIEWS = (
    View(),
    View(mirror=True),
    View((0.5, 0.25, 1.0, 0.75)),
    View((0.25, 0.5, 0.75, 1.0), True),
    View((0.1, 0.3, 0.9, 0.7)),
)
#: Non-square photo sizes (odd widths, heights of 2 mod 4) where those boxes round half to even.
HALF_PIXEL_SIZES = ((125, 90), (130, 66), (251, 170), (97, 310))


def half_pixel_cases(views: tuple[View, ...], sizes: tuple[tuple[int, int], ...]) -> int:
    """How many box edges land exactly on .5, where Python's round and Math.round disagree."""
    count = 0
    for width, height in sizes:
        for view in views:
            exact = (view.box[0] * width, view.box[1] * height, view.box[2] * width, view.box[3] * height)
            count += sum(math.floor(v + 0.5) != round(v) for v in exact)
            assert pixel_box(view.box, width, height) == tuple(round(v) for v in exact)
    return count


def test_the_half_pixel_cases_are_real() -> None:
    """The photo sizes used below do hit round-half-even, so a page using Math.round would fail."""
    assert half_pixel_cases(HALF_PIXEL_VIEWS, HALF_PIXEL_SIZES) >= 6


# -- without a browser ---------------------------------------------------------------------------
RENDER_CHECK = """
import fs from "node:fs";
import { modelViews, renderViews } from "VIEWS_JS";
const { cases, metadata } = JSON.parse(fs.readFileSync(0, "utf8"));
const rendered = cases.map((c) => {
  const rgb = Uint8Array.from(Buffer.from(c.input, "base64"));
  const { pixels, full } = renderViews(rgb, c.w, c.h, c.views, c.size);
  return { pixels: Buffer.from(pixels.buffer).toString("base64"), full: Buffer.from(full).toString("base64") };
});
const refusals = metadata.map((m) => {
  try {
    return { views: modelViews(m) };
  } catch (error) {
    return { error: error.message };
  }
});
process.stdout.write(JSON.stringify({ rendered, refusals }));
"""


def run_views_js(tmp_path: Path, payload: dict) -> dict:
    script = tmp_path / "views.mjs"
    script.write_text(RENDER_CHECK.replace("VIEWS_JS", (WEB_LOCAL / "views.js").as_uri()))
    return run_node(script, payload)


def test_views_js_is_render_views_bit_for_bit(tmp_path: Path) -> None:
    """web/local/views.js against views.render_views: the same float32 input for every view (crops
    on half pixels, mirrors, the shipped ``crops`` set), and the full view an explanation occludes."""
    rng = np.random.default_rng(0)
    size = 64
    view_sets = [HALF_PIXEL_VIEWS, VIEW_SETS["crops"], VIEW_SETS["full"]]
    cases, expected = [], []
    for views in view_sets:
        for width, height in (*HALF_PIXEL_SIZES, (50, 40), (640, 37)):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            cases.append(
                {
                    "w": width,
                    "h": height,
                    "size": size,
                    "views": [v.to_json() for v in views],
                    "input": base64.b64encode(pixels.tobytes()).decode(),
                }
            )
            full = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR)).tobytes()
            expected.append((render_views(image, views, size), full))
    out = run_views_js(tmp_path, {"cases": cases, "metadata": []})
    for case, (want, want_full), got in zip(cases, expected, out["rendered"], strict=True):
        pixels = np.frombuffer(base64.b64decode(got["pixels"]), np.float32).reshape(want.shape)
        where = f"{case['w']}x{case['h']}"
        for index, view in enumerate(case["views"]):
            assert np.array_equal(pixels[index], want[index]), f"{where}, view {index} {view}"
        assert base64.b64decode(got["full"]) == want_full, where


def test_views_js_reads_the_views_parse_views_reads(tmp_path: Path) -> None:
    """modelViews: format 2's preprocessing.views as parse_views checks them; format 1's photo and mirror."""
    from ethnic_group_recognizer.views import parse_views

    good = [v.to_json() for v in HALF_PIXEL_VIEWS]
    bad = [
        [],
        "crops",
        [{"box": [0, 0, 1]}],
        [{"box": [0.5, 0, 0.5, 1]}],
        [{"box": [0, 0, 1.2, 1]}],
        [{"box": [0, 0, 1, 1], "mirror": "yes"}],
        [{"box": [0, 0, 1, 1], "flip": True}],
        [{"box": [0, 0, True, 1]}],
        [{"box": [0, 0, 1, 1]}] * 33,
    ]
    metadata = [{"format_version": 2, "preprocessing": {"views": v}} for v in [good, *bad]]
    metadata += [
        {"format_version": 1, "tta": True},
        {"format_version": 1, "tta": False},
        {"format_version": 3},
    ]
    out = run_views_js(tmp_path, {"cases": [], "metadata": metadata})["refusals"]
    assert out[0] == {"views": [{"box": list(v.box), "mirror": v.mirror} for v in parse_views(good)]}
    for views, answer in zip(bad, out[1 : 1 + len(bad)], strict=True):
        with pytest.raises(ValueError):
            parse_views(views)
        assert "preprocessing.views" in answer.get("error", ""), (views, answer)
    full = {"box": [0, 0, 1, 1], "mirror": False}
    assert out[-3] == {"views": [full, {**full, "mirror": True}]}
    assert out[-2] == {"views": [full]}
    assert "format version 3" in out[-1]["error"]


def test_check_preprocessing_reads_format_2() -> None:
    from ethnic_group_recognizer.site import check_preprocessing

    steps = {"image_size": 320, "resize": "squish", "scale": "(pixel - 127) / 128", "channels": "RGB"}
    views = [v.to_json() for v in VIEW_SETS["crops"]]
    check_preprocessing({"format_version": 1, "preprocessing": steps})
    check_preprocessing({"format_version": 2, "preprocessing": {**steps, "views": views}})
    refused = [
        ({"format_version": 2, "preprocessing": steps}, "lists no views"),
        ({"format_version": 2, "preprocessing": {**steps, "views": [{"box": [0, 0, 2, 1]}]}}, "views"),
        ({"format_version": 1, "preprocessing": {**steps, "views": views}}, "preprocessing"),
        ({"format_version": 3, "preprocessing": {**steps, "views": views}}, "format version"),
        ({"format_version": 2, "preprocessing": {**steps, "views": views, "crops": 4}}, "preprocessing"),
    ]
    for metadata, message in refused:
        with pytest.raises(ValueError, match=message):
            check_preprocessing(metadata)


# -- in Chromium ---------------------------------------------------------------------------------
def half_pixel_model(trained_model: Path, folder: Path) -> Path:
    """The session's format-2 model with views on half pixels (the graph takes any number of views)."""
    shutil.copytree(trained_model, folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["format_version"] == 2, "egr train writes format 2"
    metadata["preprocessing"]["views"] = [v.to_json() for v in HALF_PIXEL_VIEWS]
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=1))
    return folder


def site_for(model: Path, www: Path) -> Iterator[StaticSite]:
    yield from serve(www, build(www / SUB_PATH, "--model", str(model), "--weights", "fp32"))


def assert_probabilities(recognizer: Recognizer, photo: Path, shown: dict) -> None:
    """The page's probabilities are Python's for the same photo, to float noise."""
    expected = recognizer.probabilities([recognizer.decode(photo)])[0]
    wanted = {**dict(zip(recognizer.labels, expected.tolist(), strict=False)), "other": float(expected[-1])}
    assert set(shown["scores"]) == set(wanted)
    gap = max(abs(shown["scores"][label] - p) for label, p in wanted.items())
    assert gap <= EXACT, f"{photo.name}: probabilities differ by {gap:.2e}"


def half_pixel_photos(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        save(texture(size, 40 + index), folder / f"half{size[0]}x{size[1]}.png")
        for index, size in enumerate(HALF_PIXEL_SIZES)
    ]


def rounded_half_up(image: Image.Image, views: tuple[View, ...], size: int) -> np.ndarray:
    """What a page using Math.round (half up) for the boxes would send: render_views but for that."""
    width, height = image.size
    out = []
    for view in views:
        box = [math.floor(v * d + 0.5) for v, d in zip(view.box, (width, height, width, height), strict=True)]
        source = image if view.box == FULL else image.crop(tuple(box))
        pixels = scaled(np.asarray(source.resize((size, size), Image.Resampling.BILINEAR)))
        out.append(pixels[:, :, ::-1] if view.mirror else pixels)
    return np.stack(out)


def sensitive_photos(
    recognizer: Recognizer, folder: Path, wrong: Callable[[Image.Image], np.ndarray], wanted: int = 2
) -> list[Path]:
    """Photos whose probabilities move by more than SENSITIVE when a page sends ``wrong(photo)``
    instead of the model's views (render_views).

    The pattern model is very sure of most pictures, so a crop one pixel off or a missing mirror
    rarely shows in its probabilities; these photos make the browser comparison fail for a page
    that does it wrongly. The search is deterministic (generated drawings, fixed seeds).
    """
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for seed in range(8):
        for width, height in HALF_PIXEL_SIZES:
            image = drawing((width, height), seed)
            right = recognizer.run(recognizer.pixels(image)[None])[0][0]
            if np.abs(right - recognizer.run(wrong(image)[None])[0][0]).max() > SENSITIVE:
                found.append(save(image, folder / f"sensitive{seed}-{width}x{height}.png"))
                if len(found) == wanted:
                    return found
    assert found, (
        "no candidate photo shows the difference in the model's probabilities: the check could not fail"
    )
    return found


@in_browser
def test_format_2_views_in_the_browser_are_pythons(
    browser: object, trained_model: Path, tmp_path: Path
) -> None:
    """All views of a photo go in one run; the page's probabilities and heatmap are Python's."""
    from ethnic_group_recognizer.explain import explain

    model = half_pixel_model(trained_model, tmp_path / "model")
    recognizer = Recognizer.load(model)
    assert recognizer.views == HALF_PIXEL_VIEWS
    photos = half_pixel_photos(tmp_path / "photos")
    photos += sensitive_photos(
        recognizer,
        tmp_path / "photos",
        lambda image: rounded_half_up(image, HALF_PIXEL_VIEWS, recognizer.image_size),
    )
    for site in site_for(model, tmp_path / "www"):
        manifest = json.loads((site.root / "site.json").read_text())
        assert manifest["model"]["format_version"] == 2
        assert manifest["model"]["views"] == [v.to_json() for v in HALF_PIXEL_VIEWS]
        for context in offline_context(browser):
            page = open_page(context, site)
            for photo in photos:
                shown = classify(page, photo)
                assert_probabilities(recognizer, photo, shown)
                assert_same(recognizer, photo, shown)
            # The explanation occludes the full view alone (V = 1), as explain._occlude does.
            photo = photos[-1]  # the photo on the page
            page.check("#explain")  # type: ignore[attr-defined]
            page.wait_for_function(  # type: ignore[attr-defined]
                "(name) => document.getElementById('result').dataset.explained === name"
                " || !document.getElementById('error').hidden",
                arg=photo.name,
                timeout=EXPLAIN_TIMEOUT_MS,
            )
            assert page.is_hidden("#error"), page.text_content("#error")  # type: ignore[attr-defined]
            heatmap = json.loads(page.get_attribute("#result", "data-heatmap"))  # type: ignore[attr-defined]
            expected = explain(recognizer, recognizer.decode(photo))
            assert heatmap["label"] == expected.label
            assert np.abs(np.array(heatmap["heatmap"]) - expected.heatmap).max() <= EXACT
            page.close()  # type: ignore[attr-defined]


def format_1_model(trained_model: Path, folder: Path) -> Path:
    """The session's model as a format-1 directory: the graph takes one view a row, [N, 3, S, S]
    (a Reshape to [N, 1, 3, S, S] in front of the format-2 graph), and ``tta`` names its views,
    the photo and its mirror, which the reader averages outside the graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shutil.copytree(trained_model, folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    del metadata["preprocessing"]["views"]
    size = metadata["preprocessing"]["image_size"]
    metadata.update(format_version=1, tta=True)
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=1))
    model = onnx.load(str(folder / "model.onnx"))
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["pixels_one_view" if name == "pixels" else name for name in node.input]
    graph.initializer.append(numpy_helper.from_array(np.array([0, 1, 3, size, size], np.int64), "one_view"))
    graph.node.insert(0, helper.make_node("Reshape", ["pixels", "one_view"], ["pixels_one_view"]))
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size]))
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


@pytest.mark.parametrize("source", ["made here", "shipped"])
@in_browser
def test_a_format_1_model_still_runs_in_the_browser(
    browser: object, trained_model: Path, tmp_path: Path, source: str
) -> None:
    """A model from before views in the graph ([N, 3, S, S], ``tta``): the page averages its rows."""
    model = tmp_path / "format1"
    if source == "made here":
        format_1_model(trained_model, model)
    else:
        if not (DEFAULT_MODEL_DIR / "model.onnx").is_file():
            pytest.skip(f"the shipped default model is not in this checkout ({DEFAULT_MODEL_DIR})")
        if json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text()).get("format_version") != 1:
            pytest.skip("the shipped default model is no longer format 1 (the made-here case tests format 1)")
        shutil.copytree(DEFAULT_MODEL_DIR, model, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    recognizer = Recognizer.load(model)
    assert not recognizer.model_dir.metadata.views_in_graph and recognizer.tta
    photos = half_pixel_photos(tmp_path / "photos")
    # Photos whose mirror the model sees otherwise: a page not averaging both rows fails on them.
    photos += sensitive_photos(
        recognizer,
        tmp_path / "photos",
        lambda image: render_views(image, VIEW_SETS["full"], recognizer.image_size),
    )
    for site in site_for(model, tmp_path / "www"):
        manifest = json.loads((site.root / "site.json").read_text())
        assert manifest["model"]["format_version"] == 1 and manifest["model"]["tta"] is True
        assert manifest["model"]["views"] == [v.to_json() for v in VIEW_SETS["mirror"]]
        for context in offline_context(browser):
            page = open_page(context, site)
            for photo in photos:
                shown = classify(page, photo)
                assert_probabilities(recognizer, photo, shown)
                assert_same(recognizer, photo, shown)
            page.close()  # type: ignore[attr-defined]
