"""Evaluation report: metrics with intervals, pictures, top losses and the model card."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_dataset

from ethnic_group_recognizer.evaluate import evaluate, expected_calibration_error, wilson_interval


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490, abs=0.002) and high == pytest.approx(0.943, abs=0.002)
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_not():
    confidence = np.array([0.75] * 4)
    assert expected_calibration_error(confidence, np.array([1, 1, 1, 0]))[0] == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0.95] * 4), np.array([0, 0, 0, 0]))[0] == pytest.approx(0.95)


def test_report_has_everything(trained_model, tmp_path):
    dataset = make_dataset(tmp_path / "eval", per_class=4)
    out = tmp_path / "report"
    metrics = evaluate(trained_model, dataset, out, split="all")
    for name in (
        "metrics.json",
        "report.html",
        "MODEL_CARD.md",
        "confusion_matrix.png",
        "reliability.png",
        "coverage.png",
    ):
        assert (out / name).is_file(), name
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["in_domain_images"] == 12 and stored["other_images"] == 4
    assert stored["accuracy"] >= 0.5
    low, high = stored["accuracy_ci95"]
    assert low <= stored["accuracy"] <= high
    assert set(stored["per_class"]) == {"Bai people", "Hani people", "Kazakhs"}
    assert metrics["per_class"]["Kazakhs"]["training_images"] == 8
    card = (out / "MODEL_CARD.md").read_text()
    # A model of its own labels gets the neutral card: the responsible-use rules, no shipped wording.
    assert "Article 5(1)(g)" in card and "Inferring anything about the people in a photo" in card
    assert "low data" in card  # 8 training images is under the low-data bar
    report = (out / "report.html").read_text()
    # top-loss thumbnails inline, or the honest "no mistakes" (test_evaluate_report checks both)
    assert "data:image/jpeg;base64," in report or "No mistakes" in report


def test_val_split_needs_a_recorded_split(trained_model, tmp_path):
    model = tmp_path / "copy"
    model.mkdir()
    for name in ("model.onnx", "labels.json", "metadata.json"):
        (model / name).write_bytes((trained_model / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="split"):
        evaluate(model, make_dataset(tmp_path / "d", 2), tmp_path / "r", split="val")
