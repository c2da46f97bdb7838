"""Training on generated images with the real backbone: probe, calibration, metadata, fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_dataset, pattern_image

from ethnic_group_recognizer import Recognizer
from ethnic_group_recognizer.calibrate import abstain_decisions, choose_threshold, fit_temperature, softmax
from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.probe import NO_ABSTAIN_BIAS, fit_probe_head, head_logits, unit
from ethnic_group_recognizer.train import TrainOptions, train


def test_probe_model_learns_and_records_its_data(trained_model):
    recognizer = Recognizer.load(trained_model)
    assert recognizer.labels == ["Bai people", "Hani people", "Kazakhs"]
    for kind, label in (("stripes", "Bai people"), ("checker", "Hani people"), ("circles", "Kazakhs")):
        predictions = [recognizer.predict(pattern_image(kind, seed=5000 + i)) for i in range(3)]
        assert [p.label for p in predictions].count(label) >= 2, (kind, [p.label for p in predictions])
    metadata = recognizer.metadata
    assert metadata["training_counts"] == {"Bai people": 8, "Hani people": 8, "Kazakhs": 8}
    assert metadata["abstain_training_count"] == 8
    assert metadata["split"]["val_images"] == 8 and len(metadata["split"]["train_hash"]) == 64
    split = json.loads((trained_model / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    assert not list(trained_model.glob("*.pkl"))


def test_noise_photo_is_less_confident_than_a_clear_one(trained_model):
    recognizer = Recognizer.load(trained_model)
    noise = recognizer.predict(pattern_image("noise", seed=777))
    clear = recognizer.predict(pattern_image("checker", seed=778))
    assert noise.abstain_probability > clear.abstain_probability


def test_training_refuses_a_dataset_with_one_label(tmp_path):
    folder = tmp_path / "ds" / "Bai people"
    folder.mkdir(parents=True)
    for i in range(3):
        pattern_image("stripes", i).save(folder / f"{i}.jpg")
    with pytest.raises(ValueError, match="at least 2 labels"):
        train(tmp_path / "ds", tmp_path / "model")


def test_temperature_recovers_a_known_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(2000, 4)) * 2
    targets = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    assert fit_temperature(true_logits * 3, targets) == pytest.approx(3, rel=0.15)


def test_threshold_trades_coverage_for_abstaining_on_other():
    # three labels + abstain column; rows 0-3 in-domain and confident, rows 4-7 "other" and unsure
    probs = np.array([[0.9, 0.05, 0.03, 0.02]] * 4 + [[0.4, 0.3, 0.2, 0.1]] * 4)
    targets = np.array([0, 0, 0, 0, 3, 3, 3, 3])
    threshold = choose_threshold(probs, targets, n_labels=3)
    assert 0.4 < threshold <= 0.9
    assert (abstain_decisions(probs, 3, threshold) == [0, 0, 0, 0, -1, -1, -1, -1]).all()
    assert choose_threshold(probs[:4], targets[:4], n_labels=3) == 0.0  # no "other" data: never abstain


def test_threshold_with_a_target_abstains_on_that_share_of_other_photos():
    # "other" photos with top probabilities 0.2, 0.3, ..., 0.6; in-domain ones at 0.9
    other = np.array([[p, (1 - p) / 3, (1 - p) / 3, (1 - p) / 3] for p in (0.2, 0.3, 0.4, 0.5, 0.6)])
    probs = np.vstack([[[0.9, 0.04, 0.03, 0.03]] * 5, other])
    targets = np.array([0] * 5 + [3] * 5)
    threshold = choose_threshold(probs, targets, n_labels=3, other_target=0.8)
    decided = abstain_decisions(probs, 3, threshold)
    assert (decided[5:] == -1).mean() >= 0.8 and (decided[:5] == 0).all()
    assert 0.5 < threshold <= 0.6  # the lowest threshold that abstains on 4 of the 5
    assert choose_threshold(probs, targets, n_labels=3, other_target=0.6) < threshold


def test_probe_head_separates_classes_and_never_chooses_an_absent_one():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    targets = np.repeat(np.arange(3), 20)
    features = centres[targets] + rng.normal(size=(60, 16))
    weights, bias = fit_probe_head(features, targets, 4, regularization=1.0, prototype_weight=0.3, seed=0)
    assert weights.shape == (4, 16) and bias[3] == NO_ABSTAIN_BIAS  # output 3 had no images
    logits = head_logits(features, weights, bias)
    assert (logits.argmax(axis=1) == targets).mean() > 0.95
    np.testing.assert_allclose(head_logits(features * 7, weights, bias), logits)  # scale-free: unit first
    np.testing.assert_allclose(np.linalg.norm(unit(features), axis=1), 1.0)
    assert not unit(np.zeros((1, 4))).any()  # a zero vector stays zero, no NaN


def test_probe_head_of_two_classes_has_a_row_per_class():
    """Two labels and no ``other``: scikit-learn's binary model keeps one row; the head needs two."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    targets = np.repeat(np.arange(2), 25)
    features = rng.normal(size=(2, 8))[targets] * 2 + rng.normal(size=(50, 8))
    weights, bias = fit_probe_head(features, targets, 3, regularization=1.0, prototype_weight=0.0, seed=0)
    assert weights.shape == (3, 8) and bias[2] == NO_ABSTAIN_BIAS
    logits = head_logits(features, weights, bias)[:, :2]
    # the same probabilities as scikit-learn's binary model on the standardised unit features
    x = unit(features)
    reference = LogisticRegression(C=1.0, max_iter=3000).fit((x - x.mean(0)) / (x.std(0) + 1e-6), targets)
    expected = reference.predict_proba((x - x.mean(0)) / (x.std(0) + 1e-6))
    np.testing.assert_allclose(softmax(logits), expected, atol=1e-6)


def test_two_labels_without_other_train_and_never_abstain(tmp_path):
    root = tmp_path / "ds"
    for label, kind in (("checks", "checker"), ("dots", "circles")):
        (root / label).mkdir(parents=True)
        for i in range(8):
            pattern_image(kind, seed=i).save(root / label / f"{i}.jpg")
    result = train(root, tmp_path / "model", TrainOptions(name="two", views="full"), Config())
    assert result.model_metadata.calibration.threshold == 0.0
    recognizer = Recognizer.load(tmp_path / "model")
    prediction = recognizer.predict(root / "dots" / "0.jpg")
    assert prediction.label == "dots" and not prediction.abstained


@pytest.mark.slow
def test_finetune_runs_and_exports_a_self_contained_model(tmp_path, capfd):
    dataset = make_dataset(tmp_path / "ds", per_class=6)
    options = TrainOptions(mode="finetune", epochs=1, head_epochs=1, name="ft-test")
    result = train(dataset, tmp_path / "model", options, Config(batch_size=8))
    logged = capfd.readouterr()
    assert logged.out == ""  # stdout stays free for the CLI's own output
    assert "fine-tune epoch 1: train loss" in logged.err
    assert not (tmp_path / "model" / "backbone.onnx").exists()
    recognizer = Recognizer.load(result.out_dir)
    prediction = recognizer.predict(pattern_image("checker", 1))
    assert set(prediction.scores) == {"Bai people", "Hani people", "Kazakhs"}
    assert recognizer.metadata["options"]["mode"] == "finetune"


@pytest.mark.slow
def test_finetune_never_reads_the_held_out_split(tmp_path, monkeypatch):
    """Early stopping and calibration use a fifth of the training split, so evaluation stays honest."""
    import ethnic_group_recognizer.finetune as finetune_module
    from ethnic_group_recognizer.images import sha256_file
    from ethnic_group_recognizer.model_dir import read_split

    dataset = make_dataset(tmp_path / "ds", per_class=6)
    decoded: list[str] = []
    real_load = finetune_module.load_image

    def recording_load(path, *args, **kwargs):  # a spy: the real decoder runs
        decoded.append(sha256_file(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "load_image", recording_load)
    options = TrainOptions(mode="finetune", epochs=1, head_epochs=0, name="ft-split")
    result = train(dataset, tmp_path / "model", options, Config(batch_size=8))
    held_out, trained_on = read_split(result.out_dir, "val"), read_split(result.out_dir, "train")
    assert held_out and decoded and not held_out & set(decoded)
    assert set(decoded) <= trained_on
    assert "fifth of the training split" in result.model_metadata.calibration.calibrated_on


@pytest.mark.parametrize("inside", [".", "model", "checks/model"])
def test_the_model_directory_cannot_be_inside_the_dataset(tmp_path, inside):
    root = tmp_path / "ds"
    for label, kind in (("checks", "checker"), ("dots", "circles")):
        (root / label).mkdir(parents=True)
        pattern_image(kind, seed=1).save(root / label / "1.jpg")
    with pytest.raises(ValueError, match="must be outside the dataset"):
        train(root, root / inside, TrainOptions(views="full"), Config())
    assert not (root / "model").exists() and not (root / "model.onnx").exists()
