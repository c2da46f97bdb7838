"""Occlusion heatmaps: they find the region a model depends on, and work on the shipped model."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from serve_fixtures import photo, recognizer  # noqa: F401 - fixture

from ethnic_group_recognizer.config import LABELS
from ethnic_group_recognizer.explain import explain, occlusion_heatmap, png_data_url, render_overlay
from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.model_dir import (
    BackboneInfo,
    Calibration,
    ModelMetadata,
    Provenance,
    write_model_dir,
)

SIZE = 32


def corner_model(directory: Path) -> Path:
    """A real model directory whose ONNX graph looks only at the top-left 8x8 pixels.

    P(first label) rises with that corner's brightness; everything else is ignored, so a
    correct occlusion map must put all of its weight on the top-left cell.
    """
    directory.mkdir(parents=True, exist_ok=True)
    k = len(LABELS) + 1
    weights = np.zeros((1, k), np.float32)
    weights[0, 0] = 8.0
    nodes = [
        helper.make_node("Slice", ["pixels", "starts", "ends", "axes"], ["corner"]),
        helper.make_node("ReduceMean", ["corner"], ["brightness"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["brightness", "column"], ["brightness_2d"]),
        helper.make_node("MatMul", ["brightness_2d", "weights"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "corner",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", k]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3]),
        ],
        [
            numpy_helper.from_array(np.array([0, 0], np.int64), "starts"),
            numpy_helper.from_array(np.array([8, 8], np.int64), "ends"),
            numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
            numpy_helper.from_array(np.array([-1, 1], np.int64), "column"),
            numpy_helper.from_array(weights, "weights"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))
    write_model_dir(
        directory,
        ModelMetadata(
            labels=LABELS,
            name="corner",
            version="1",
            backbone=BackboneInfo(name="corner-slice", image_size=SIZE, pooling="mean"),
            calibration=Calibration(temperature=1.0, threshold=0.5, calibrated_on="nothing (a test graph)"),
            tta=False,
            format_version=1,  # a hand-made one-view-a-row graph [N, 3, S, S]
            training_counts=dict.fromkeys(LABELS, 100),
            abstain_training_count=0,
            provenance=Provenance(
                seed=0,
                val_fraction=0.2,
                train_images=0,
                val_images=0,
                train_hash="",
                val_hash="",
                training_seconds=0.0,
            ),
            options={},
        ),
    )
    return directory


@pytest.fixture(scope="module")
def corner(tmp_path_factory: pytest.TempPathFactory) -> Recognizer:
    return Recognizer.load(corner_model(tmp_path_factory.mktemp("corner") / "model"))


def corner_photo() -> Image.Image:
    """Dark photo with a bright top-left corner (the only thing the corner model sees)."""
    array = np.full((SIZE * 4, SIZE * 4, 3), 20, np.uint8)
    array[:SIZE, :SIZE] = 250
    return Image.fromarray(array)


def test_heatmap_finds_the_region_the_model_depends_on(corner: Recognizer) -> None:
    heatmap, overlay = occlusion_heatmap(corner, corner_photo(), grid=4, label=LABELS[0])
    assert heatmap.shape == (4, 4)
    assert np.unravel_index(int(np.argmax(heatmap)), heatmap.shape) == (0, 0)
    assert heatmap[0, 0] > 0.05
    # Regions the model never looks at do not matter at all.
    assert np.abs(heatmap[2:, 2:]).max() < 1e-6
    # The overlay is the photo with colour only over the relied-on corner.
    pixels = np.asarray(overlay, np.int16)
    assert overlay.size == (SIZE * 4, SIZE * 4)
    assert pixels[5, 5, 0] - pixels[5, 5, 2] > 30  # red/yellow tint
    assert abs(int(pixels[-5, -5, 0]) - int(pixels[-5, -5, 2])) < 3  # untouched grey


def test_default_label_is_the_top_score(corner: Recognizer) -> None:
    result = explain(corner, corner_photo(), grid=4)
    assert result.label == LABELS[0]
    assert result.milliseconds > 0
    data = result.to_dict()
    assert data["grid"] == 4 and data["method"] == "occlusion"
    assert data["heatmap_png"].startswith("data:image/png;base64,")


def test_bad_arguments_are_refused(corner: Recognizer) -> None:
    with pytest.raises(ValueError, match="grid"):
        occlusion_heatmap(corner, corner_photo(), grid=1)
    with pytest.raises(ValueError, match="unknown label"):
        occlusion_heatmap(corner, corner_photo(), label="Vikings")


def test_overlay_is_capped_and_keeps_aspect() -> None:
    image = Image.new("RGB", (1200, 600), (90, 90, 90))
    heat = np.zeros((5, 5), np.float32)
    heat[2, 2] = 0.4
    overlay = render_overlay(image, heat)
    assert overlay.size == (384, 192)
    flat = render_overlay(image, np.zeros((5, 5), np.float32))  # nothing relied on: no colour at all
    array = np.asarray(flat, np.int16)
    assert np.abs(array[..., 0] - array[..., 2]).max() == 0


def test_shipped_model_explanation(recognizer: Recognizer) -> None:  # noqa: F811
    image = photo(7)
    url = png_data_url(occlusion_heatmap(recognizer, image, grid=4)[1])
    png = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert png.size == image.size
    heatmap, _ = occlusion_heatmap(recognizer, image, grid=4)
    assert heatmap.shape == (4, 4) and np.isfinite(heatmap).all()
    assert np.abs(heatmap).max() > 0  # occluding something changes the answer


def test_batch_size_does_not_change_the_explanation(corner: Recognizer) -> None:
    """The server runs 5 occluded copies per model call; the map must equal the 25-copy one."""
    small = explain(corner, corner_photo(), grid=4, batch_size=5)
    default = explain(corner, corner_photo(), grid=4)
    assert small.label == default.label and small.base_probability == pytest.approx(default.base_probability)
    np.testing.assert_allclose(small.heatmap, default.heatmap, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        explain(corner, corner_photo(), grid=4, batch_size=0)
