"""The model directory format, the ONNX head and the Recognizer's decisions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from conftest import pattern_image

from ethnic_group_recognizer import LABELS, Recognizer
from ethnic_group_recognizer.config import DEFAULT_MODEL_DIR
from ethnic_group_recognizer.images import ImageError
from ethnic_group_recognizer.model import attach_head


def test_attach_head_matches_numpy(tmp_path):
    """The head averages each photo's unit view features, then computes softmax((unit(m) @ W.T + b) / T)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["embedding"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 4])],
    )
    backbone = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), backbone)
    rng = np.random.default_rng(0)
    weights, bias, temperature = rng.normal(size=(3, 4)), rng.normal(size=3), 1.7
    attach_head(backbone, weights, bias, temperature, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    for views in (1, 3):
        pixels = rng.normal(size=(5, views, 4, 8, 8)).astype(np.float32)
        probabilities, embedding = session.run(None, {"pixels": pixels})
        per_view = pixels.mean(axis=(3, 4))  # the tiny backbone: (5, views, 4)
        mean = (per_view / np.linalg.norm(per_view, axis=2, keepdims=True)).mean(axis=1)
        np.testing.assert_allclose(embedding, mean, rtol=1e-4, atol=1e-6)
        unit = mean / np.linalg.norm(mean, axis=1, keepdims=True)
        logits = (unit @ weights.T + bias) / temperature
        expected = np.exp(logits - logits.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)


def test_shipped_default_model_is_complete_and_small():
    for name in ("model.onnx", "labels.json", "metadata.json", "MODEL_CARD.md"):
        assert (DEFAULT_MODEL_DIR / name).is_file(), name
    assert (DEFAULT_MODEL_DIR / "model.onnx").stat().st_size < 20_000_000
    assert json.loads((DEFAULT_MODEL_DIR / "labels.json").read_text()) == list(LABELS)
    assert not list(DEFAULT_MODEL_DIR.glob("*.pkl")) and not list(DEFAULT_MODEL_DIR.glob("*.pickle"))
    metadata = json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text())
    assert set(metadata["training_counts"]) == set(LABELS)
    assert 0 <= metadata["threshold"] < 1 and metadata["temperature"] > 0


def test_default_model_predicts_every_label_score():
    recognizer = Recognizer.load()
    prediction = recognizer.predict(pattern_image("stripes", 1))
    assert set(prediction.scores) == set(LABELS)
    assert 0.0 <= sum(prediction.scores.values()) <= 1.0 + 1e-5
    assert prediction.confidence == pytest.approx(max(prediction.scores.values()), abs=1e-6)
    again = recognizer.predict(pattern_image("stripes", 1))
    assert again.scores == prediction.scores  # deterministic
    assert set(recognizer.low_data_labels()) >= {"Akha people", "Chakma people", "Mon people"}


def test_decide_abstains_below_threshold():
    recognizer = Recognizer.load()
    n = len(recognizer.labels)
    confident = np.zeros(n + 1)
    confident[3] = 0.99
    confident[n] = 0.01
    assert recognizer.decide(confident).label == recognizer.labels[3]
    unsure = np.full(n + 1, 1 / (n + 1))
    result = recognizer.decide(unsure)
    assert result.label is None and result.abstained and result.display_label == "None of the 12 groups"
    assert result.to_dict("x.jpg")["label"] is None


def test_predict_rejects_bad_input_clearly(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a photo")
    with pytest.raises(ImageError, match="not an image"):
        Recognizer.load().predict(bad)
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        Recognizer.load(tmp_path)


def test_prediction_needs_only_onnxruntime_numpy_and_pillow():
    """Serving and predicting must not pull in torch, the weight packages, onnx or scikit-learn."""
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from ethnic_group_recognizer import Recognizer\n"
        "Recognizer.load().predict(Image.new('RGB', (64, 64), 'red'))\n"
        "heavy = sorted(m for m in ('torch', 'efficientnet_lite_pytorch', 'onnx', 'sklearn', 'matplotlib') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_no_telemetry_is_written_under_home(tmp_path):
    """onnxruntime writes a device id under ~/.cache at import unless told not to; egr must not."""
    home = tmp_path / "home"
    home.mkdir()
    code = (
        "from PIL import Image\n"
        "from ethnic_group_recognizer import Recognizer\n"
        "Recognizer.load().predict(Image.new('RGB', (64, 64), 'red'))\n"
    )
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "EGR_CACHE_DIR": str(tmp_path / "egr-cache")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert [p.relative_to(home) for p in home.rglob("*")] == []
