"""Prediction sets end to end: calibrated in training, stored in metadata, returned by Recognizer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_dataset, pattern_image

from ethnic_group_recognizer import Recognizer
from ethnic_group_recognizer.calibrate import abstain_decisions, choose_threshold, in_scope_scores
from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.evaluate import evaluate
from ethnic_group_recognizer.model_dir import ModelError, read_model_dir
from ethnic_group_recognizer.train import TrainOptions, train

KINDS = {"Bai people": "stripes", "Hani people": "checker", "Kazakhs": "circles"}


def _photos(recognizer: Recognizer) -> list:
    images = [pattern_image(kind, seed=7000 + i) for kind in KINDS.values() for i in range(3)]
    images += [pattern_image("noise", seed=7100 + i) for i in range(3)]
    return recognizer.predict_images(images)


def test_trained_model_stores_a_conformal_calibration(trained_model):
    meta = read_model_dir(trained_model).metadata
    assert meta.conformal is not None
    assert meta.conformal.n_labels == 3 and meta.conformal.coverage == 0.9
    assert meta.conformal.method == "aps" and meta.conformal.mondrian
    assert meta.calibration.abstain_rule == "in-scope-share" == meta.conformal.abstain_rule
    assert meta.conformal.threshold == meta.calibration.threshold
    assert [c.coverage for c in meta.conformal_curve][:2] == [0.5, 0.6]
    stored = json.loads((trained_model / "metadata.json").read_text())
    assert stored["abstain_rule"] == "in-scope-share" and stored["conformal"]["method"] == "aps"


def test_recognizer_answers_with_a_set_and_abstains_with_an_empty_one(trained_model):
    recognizer = Recognizer.load(trained_model)
    predictions = _photos(recognizer)
    assert any(p.label for p in predictions)
    for p in predictions:
        assert p.coverage == 0.9
        if p.label is None:
            assert p.prediction_set == []
        else:
            assert p.prediction_set and p.prediction_set[0] == p.label
            assert len(set(p.prediction_set)) == len(p.prediction_set) <= 3
            scores = [p.scores[label] for label in p.prediction_set]
            assert scores == sorted(scores, reverse=True)  # most likely first
    row = predictions[0].to_dict("a.jpg")
    assert row["prediction_set"] == predictions[0].prediction_set and row["coverage"] == 0.9
    assert json.loads(json.dumps(row)) == row


def test_never_abstaining_threshold_gives_sets_for_every_photo(trained_model):
    recognizer = Recognizer.load(trained_model, threshold=0.0)
    assert all(p.label and p.prediction_set for p in _photos(recognizer))


def test_model_trained_without_other_photos_never_gives_an_empty_set(tmp_path):
    dataset = make_dataset(tmp_path / "dataset", per_class=6)
    shutil.rmtree(dataset / "other")
    train(dataset, tmp_path / "model", TrainOptions(name="no-other", augment_copies=1), Config())
    recognizer = Recognizer.load(tmp_path / "model")
    assert recognizer.threshold == 0.0 and recognizer.conformal is not None
    for p in _photos(recognizer):  # noise photos included: nothing to abstain with
        assert p.label is not None and p.prediction_set and p.prediction_set[0] == p.label


def _old_copy(trained_model, tmp_path):
    """The trained model as a model from before prediction sets wrote it."""
    old = tmp_path / "old"
    shutil.copytree(trained_model, old)
    data = json.loads((old / "metadata.json").read_text())
    for key in ("abstain_rule", "conformal", "conformal_curve"):
        data.pop(key)
    (old / "metadata.json").write_text(json.dumps(data))
    return old


def test_old_model_without_sets_still_loads_with_the_top_label_rule(trained_model, tmp_path):
    recognizer = Recognizer.load(_old_copy(trained_model, tmp_path))
    assert recognizer.conformal is None and recognizer.coverage is None
    assert recognizer.abstain_rule == "top-label"
    for p in _photos(recognizer):
        assert p.coverage is None
        assert p.prediction_set == ([] if p.label is None else [p.label])
        assert (p.label is None) == (p.confidence < recognizer.threshold)


def test_conformal_calibration_must_match_the_model(trained_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained_model, broken)
    data = json.loads((broken / "metadata.json").read_text())
    data["conformal"]["abstain_rule"] = "top-label"
    (broken / "metadata.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="abstain_rule"):
        read_model_dir(broken)
    data["conformal"] = {"method": "magic", "coverage": 0.9, "qhat": 0.5, "n_labels": 3, "n_calibration": 1}
    (broken / "metadata.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="conformal"):
        read_model_dir(broken)


def test_evaluation_reports_set_coverage_and_size(trained_model, tmp_path):
    dataset = make_dataset(tmp_path / "eval", per_class=4)
    metrics = evaluate(trained_model, dataset, tmp_path / "report", split="all")
    sets = metrics["prediction_sets"]
    assert sets["target_coverage"] == 0.9 and sets["images"] == 12
    assert 0 <= sets["coverage"] <= sets["answered_coverage"] <= 1
    assert set(sets["by_class"]) == set(KINDS)
    assert sum(b["images"] for b in sets["by_set_size"].values()) == 12
    assert sets["other_images"] == 4
    assert [p["target"] for p in metrics["set_coverage_curve"]][:2] == [0.5, 0.6]
    assert (tmp_path / "report" / "set_coverage.png").is_file()
    assert "Prediction sets" in (tmp_path / "report" / "report.html").read_text()
    card = (tmp_path / "report" / "MODEL_CARD.md").read_text()
    assert "## Prediction sets" in card and "mean set size" in card


def test_in_scope_share_answers_ambiguity_between_known_groups():
    # 3 labels + other: split between two known groups, P(other) small -> answered only by the new rule
    split_between_known = [0.45, 0.45, 0.05, 0.05]
    clearly_other = [0.2, 0.1, 0.1, 0.6]
    probabilities = np.array([split_between_known, clearly_other])
    assert list(abstain_decisions(probabilities, 3, 0.5, "top-label")) == [-1, -1]
    assert list(abstain_decisions(probabilities, 3, 0.5, "in-scope-share")) == [0, -1]
    assert in_scope_scores(probabilities, 3, "in-scope-share")[0] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="abstain rule"):
        in_scope_scores(probabilities, 3, "magic")


def test_in_scope_share_threshold_reaches_the_other_target():
    rng = np.random.default_rng(0)
    in_domain = rng.dirichlet([4, 1, 1, 0.3], size=200)
    other = rng.dirichlet([1, 1, 1, 3], size=100)
    probabilities = np.vstack([in_domain, other])
    targets = np.array([0] * 200 + [3] * 100)
    threshold = choose_threshold(probabilities, targets, 3, 0.9, "in-scope-share")
    decided = abstain_decisions(probabilities, 3, threshold, "in-scope-share")
    assert (decided[200:] == -1).mean() >= 0.9
    looser = choose_threshold(probabilities, targets, 3, 0.7, "in-scope-share")
    assert looser < threshold
    assert choose_threshold(probabilities[:200], targets[:200], 3, 0.9, "in-scope-share") == 0.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "prob"}, "mode must be 'probe' or 'finetune'"),
        ({"coverage": 1.0}, "coverage must be in"),
        ({"coverage": 0}, "coverage must be in"),
        ({"abstain_target": 1.0}, "abstain_target"),
        ({"epochs": 0}, "epochs"),
        ({"abstain_rule": "max"}, "abstain_rule"),
        ({"regularization": float("nan")}, "regularization"),
        ({"views": "all"}, "views"),
        ({"image_size": 8}, "image_size"),
        ({"mode": "finetune", "views": "crops"}, "views 'crops' is for the probe"),
    ],
)
def test_train_options_refuse_impossible_settings(options, message):
    with pytest.raises(ValueError, match=message):
        TrainOptions(**options)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"backbone": "lite7"}, "backbone must be 'lite0' or 'lite2'"),
        ({"feature_pooling": "max"}, "feature_pooling must be 'mean' or 'gem'"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"threads": -1}, "threads"),
    ],
)
def test_config_refuses_impossible_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        Config(**settings)
