"""The model directory: typed metadata that re-writes byte-identically, and folders refused at load.

Every broken folder is a copy of the shipped default model with one thing wrong, as a model
copied from someone else might be; each must be refused with one clear line (and by the CLI
with exit 2), never a traceback and never silently wrong answers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset, pattern_image

from ethnic_group_recognizer import Recognizer
from ethnic_group_recognizer.config import DEFAULT_MODEL_DIR
from ethnic_group_recognizer.model_dir import (
    FORMAT_VERSION,
    ModelError,
    ModelFileMissing,
    read_model_dir,
    write_model_dir,
)

EGR = str(Path(sys.executable).parent / "egr")


def copy_default_model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.onnx", "labels.json", "metadata.json"):
        shutil.copyfile(DEFAULT_MODEL_DIR / name, folder / name)
    return folder


def edit_json(path: Path, change: Callable[[object], object]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(change(data), indent=2), encoding="utf-8")


def tiny_onnx(path: Path, input_name: str, input_shape: list, outputs: dict[str, list]) -> None:
    """A small valid ONNX graph: the input, global-average-pooled or passed through, as each output."""
    import onnx
    from onnx import TensorProto, helper

    nodes, values = [], []
    for name, shape in outputs.items():
        nodes.append(helper.make_node("Identity", [input_name], [name]))
        values.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)], values
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


# -- the typed metadata ----------------------------------------------------------------------
def test_shipped_model_rewrites_byte_identically(tmp_path):
    model_dir = read_model_dir(DEFAULT_MODEL_DIR)
    write_model_dir(tmp_path, model_dir.metadata)
    for name in ("labels.json", "metadata.json"):
        assert (tmp_path / name).read_bytes() == (DEFAULT_MODEL_DIR / name).read_bytes(), name
    stored = json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text(encoding="utf-8"))
    assert model_dir.metadata.to_json() == stored


def test_typed_metadata_of_the_shipped_model():
    meta = read_model_dir(DEFAULT_MODEL_DIR).metadata
    assert meta.format_version == FORMAT_VERSION and len(meta.labels) == 12
    assert meta.backbone.name == "efficientnet-lite0" and meta.backbone.image_size == 320
    assert meta.backbone.pooling == "gem" and meta.head == "probe" and meta.tta is True
    assert 0 < meta.calibration.threshold < 1 and meta.calibration.temperature > 0
    assert meta.calibration.abstain_target == 0.9 and meta.calibration.policy == "other-target"
    assert set(meta.training_counts) == set(meta.labels)
    assert meta.provenance.train_images + meta.provenance.val_images > 0
    assert len(meta.provenance.train_hash) == 64
    with pytest.raises(TypeError):
        meta.training_counts["Uzbeks"] = 0  # read-only: one loaded model cannot be changed under a server


def test_unknown_keys_survive_a_rewrite(tmp_path):
    folder = copy_default_model(tmp_path)
    edit_json(folder / "metadata.json", lambda data: {**data, "note": {"added": "by a newer tool"}})
    meta = read_model_dir(folder).metadata
    assert meta.extra == {"note": {"added": "by a newer tool"}}
    write_model_dir(tmp_path / "again", meta)
    assert json.loads((tmp_path / "again" / "metadata.json").read_text())["note"] == {
        "added": "by a newer tool"
    }


def test_recognizer_metadata_is_a_copy_and_matches_the_typed_one():
    recognizer = Recognizer.load()
    metadata = recognizer.metadata
    assert metadata["preprocessing"]["image_size"] == recognizer.model_dir.metadata.backbone.image_size
    metadata["threshold"] = 0.0
    metadata["training_counts"]["Uzbeks"] = 0
    assert recognizer.metadata["threshold"] == recognizer.threshold > 0
    assert recognizer.training_counts["Uzbeks"] > 0


def test_metrics_stored_by_evaluate_round_trip(trained_model, tmp_path):
    from ethnic_group_recognizer.evaluate import evaluate

    folder = tmp_path / "model"
    shutil.copytree(trained_model, folder)
    evaluate(folder, make_dataset(tmp_path / "data", 3), tmp_path / "report", split="all", update_model=True)
    meta = read_model_dir(folder).metadata
    assert meta.metrics["split"] == "all" and "reliability_bins" not in meta.metrics
    before = (folder / "metadata.json").read_bytes()
    write_model_dir(folder, meta)
    assert (folder / "metadata.json").read_bytes() == before


# -- folders refused at load -------------------------------------------------------------------
def _drop_label(data: dict, label: str) -> dict:
    data["training_counts"].pop(label)
    return _without_sets(data)


def _add_label(data: dict, label: str, keep_sets: bool = False) -> dict:
    data["training_counts"][label] = 5
    return data if keep_sets else _without_sets(data)


def _without_sets(data: dict) -> dict:
    """The metadata without its prediction-set calibration (so the graph check is what refuses)."""
    data.pop("conformal", None)
    data.pop("conformal_curve", None)
    return data


BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing metadata key": (
        lambda f: edit_json(f / "metadata.json", lambda d: {k: v for k, v in d.items() if k != "threshold"}),
        "threshold is missing",
    ),
    "missing nested key": (
        lambda f: edit_json(f / "metadata.json", lambda d: {**d, "preprocessing": {"resize": "squish"}}),
        "preprocessing.image_size is missing",
    ),
    "wrong type": (
        lambda f: edit_json(f / "metadata.json", lambda d: {**d, "temperature": "warm"}),
        "temperature must be a number",
    ),
    "threshold out of range": (
        lambda f: edit_json(f / "metadata.json", lambda d: {**d, "threshold": 1.5}),
        "threshold must be between 0 and 1",
    ),
    "bool is not an integer": (
        lambda f: edit_json(f / "metadata.json", lambda d: {**d, "abstain_training_count": True}),
        "abstain_training_count must be an integer",
    ),
    "unsupported preprocessing": (
        lambda f: edit_json(
            f / "metadata.json", lambda d: {**d, "preprocessing": {**d["preprocessing"], "resize": "crop"}}
        ),
        "preprocessing.resize is 'crop'",
    ),
    "views missing": (
        lambda f: edit_json(
            f / "metadata.json",
            lambda d: {**d, "preprocessing": {k: v for k, v in d["preprocessing"].items() if k != "views"}},
        ),
        "preprocessing.views: views must be a list",
    ),
    "view outside the photo": (
        lambda f: edit_json(
            f / "metadata.json",
            lambda d: {**d, "preprocessing": {**d["preprocessing"], "views": [{"box": [0, 0, 2, 1]}]}},
        ),
        "preprocessing.views: a view's box must lie inside the photo",
    ),
    "unknown format version": (
        lambda f: edit_json(f / "metadata.json", lambda d: {**d, "format_version": FORMAT_VERSION + 1}),
        f"model format version {FORMAT_VERSION + 1} is newer than this egr understands",
    ),
    "metadata not JSON": (
        lambda f: (f / "metadata.json").write_text("{ not json"),
        "metadata.json: not valid JSON",
    ),
    "metadata not an object": (lambda f: (f / "metadata.json").write_text("[1, 2]"), "must be a JSON object"),
    "empty model.onnx": (lambda f: (f / "model.onnx").write_bytes(b""), "model.onnx: the file is empty"),
    "corrupt model.onnx": (
        lambda f: (f / "model.onnx").write_bytes(np.random.default_rng(0).bytes(4096)),
        "not a usable ONNX model",
    ),
    "truncated model.onnx": (
        lambda f: (f / "model.onnx").write_bytes((DEFAULT_MODEL_DIR / "model.onnx").read_bytes()[:100_000]),
        "not a usable ONNX model",
    ),
    "foreign model.onnx": (
        lambda f: tiny_onnx(f / "model.onnx", "input", [1, 10], {"output": [1, 10]}),
        "expected one input named 'pixels', found 'input'",
    ),
    "one-channel model.onnx": (
        lambda f: tiny_onnx(
            f / "model.onnx",
            "pixels",
            ["batch", "views", 1, 320, 320],
            {"probabilities": ["batch", 1, 320, 320], "embedding": ["batch", 1, 320, 320]},
        ),
        "expected float [batch, views, 3, 320, 320]",
    ),
    "other image size": (
        lambda f: tiny_onnx(
            f / "model.onnx",
            "pixels",
            ["batch", "views", 3, 224, 224],
            {"probabilities": ["batch", 3, 224, 224]},
        ),
        "expected float [batch, views, 3, 320, 320]",
    ),
    "no embedding output": (
        lambda f: tiny_onnx(
            f / "model.onnx",
            "pixels",
            ["batch", "views", 3, 320, 320],
            {"probabilities": ["batch", 3, 320, 320]},
        ),
        "no output named 'embedding'",
    ),
    "11 labels": (
        lambda f: (
            edit_json(f / "labels.json", lambda labels: labels[:-1]),
            edit_json(f / "metadata.json", lambda d: _drop_label(d, "Uzbeks")),
        ),
        "the graph has 13 outputs but labels.json lists 11 labels",
    ),
    "13 labels": (
        lambda f: (
            edit_json(f / "labels.json", lambda labels: [*labels, "Yi people"]),
            edit_json(f / "metadata.json", lambda d: _add_label(d, "Yi people")),
        ),
        "the graph has 13 outputs but labels.json lists 13 labels",
    ),
    "sets calibrated for other labels": (
        lambda f: (
            edit_json(f / "labels.json", lambda labels: [*labels, "Yi people"]),
            edit_json(f / "metadata.json", lambda d: _add_label(d, "Yi people", keep_sets=True)),
        ),
        "conformal: calibrated for 12 labels, labels.json lists 13",
    ),
    "labels and counts disagree": (
        lambda f: edit_json(f / "labels.json", lambda labels: [*labels[:-1], "Yi people"]),
        "training_counts must name exactly the labels",
    ),
    "duplicate labels": (
        lambda f: edit_json(f / "labels.json", lambda labels: [*labels[:-1], labels[0]]),
        "label 'Akha people' appears twice",
    ),
    "numeric labels": (
        lambda f: edit_json(f / "labels.json", lambda labels: list(range(len(labels)))),
        "label 1 is 0, not a string",
    ),
    "empty label": (
        lambda f: edit_json(f / "labels.json", lambda labels: ["", *labels[1:]]),
        "a label must not be empty",
    ),
    "abstain class as a label": (
        lambda f: edit_json(f / "labels.json", lambda labels: [*labels[:-1], "other"]),
        "'other' is the abstain class",
    ),
    "labels not a list": (
        lambda f: (f / "labels.json").write_text('{"a": 1}'),
        "must be a non-empty JSON list",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_model_folder_is_refused_with_one_clear_line(tmp_path, case):
    folder = copy_default_model(tmp_path)
    breaks, message = BROKEN[case]
    breaks(folder)
    with pytest.raises(ModelError) as caught:
        Recognizer.load(folder)
    text = str(caught.value)
    assert message in text, text
    assert "\n" not in text and str(folder) in text


def test_a_graph_with_a_dynamic_output_width_is_measured(tmp_path):
    """A width the graph does not declare is found by running it once on a blank photo (7 views)."""
    import onnx
    from onnx import TensorProto, helper

    folder = copy_default_model(tmp_path)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["embedding"]),
            helper.make_node("Identity", ["embedding"], ["probabilities"]),
        ],
        "dynamic",
        [
            helper.make_tensor_value_info(
                "pixels", TensorProto.FLOAT, ["batch", "views", 3, "height", "width"]
            )
        ],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", "classes"]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", "features"]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    # GlobalAveragePool reads the 7 views as channels: 7 outputs
    with pytest.raises(ModelError, match="the graph has 7 outputs but labels.json lists 12 labels"):
        Recognizer.load(folder)


def test_missing_file_is_a_model_error_and_a_file_not_found_error(tmp_path):
    folder = copy_default_model(tmp_path)
    (folder / "labels.json").unlink()
    with pytest.raises(ModelFileMissing, match=r"not a model directory \(no labels.json\)") as caught:
        Recognizer.load(folder)
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, ModelError)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        Recognizer.load(tmp_path / "nowhere")


def test_write_refuses_metadata_a_reader_would_refuse(tmp_path):
    from dataclasses import replace

    meta = read_model_dir(DEFAULT_MODEL_DIR).metadata
    with pytest.raises(ModelError, match="appears twice"):
        write_model_dir(tmp_path, replace(meta, labels=(*meta.labels[:-1], meta.labels[0])))
    assert not (tmp_path / "metadata.json").exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize(
    "case", ["missing metadata key", "corrupt model.onnx", "13 labels", "numeric labels"]
)
def test_cli_prints_the_line_and_exits_2(tmp_path, command, case):
    folder = copy_default_model(tmp_path)
    breaks, message = BROKEN[case]
    breaks(folder)
    photo = tmp_path / "photo.jpg"
    pattern_image("stripes", 1).save(photo)
    if command == "predict":
        args = ["predict", str(photo), "--model", str(folder)]
    else:
        args = [
            "evaluate",
            str(folder),
            str(make_dataset(tmp_path / "data", 2)),
            "--out",
            str(tmp_path / "r"),
        ]
    result = subprocess.run([EGR, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and message in result.stderr
    assert result.stderr.strip().startswith("error:") and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1  # one clear line
