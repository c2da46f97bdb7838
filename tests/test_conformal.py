"""Conformal prediction sets on synthetic exchangeable scores: coverage, sets, fallback, round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ethnic_group_recognizer.conformal import (
    ConformalCalibration,
    calibrate_sets,
    coverage_curve,
    prediction_set,
    prediction_sets,
    set_metrics,
    smallest_finite_count,
)

K = 12


def sample_photos(n: int, seed: int, alpha: float = 0.08, other_share: float = 0.0):
    """Dirichlet probabilities over K labels + an abstain column, labels drawn from them.

    Rows are i.i.d., hence exchangeable. ``other_share`` of the rows are out-of-domain photos
    (target K) whose mass sits mostly in the abstain column.
    """
    rng = np.random.default_rng(seed)
    known = rng.dirichlet(np.full(K, alpha), size=n)
    targets = (known.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    other_mass = rng.uniform(0.0, 0.3, size=n)
    is_other = rng.random(n) < other_share
    other_mass[is_other] = rng.uniform(0.7, 1.0, size=is_other.sum())
    targets[is_other] = K
    probabilities = np.hstack([known * (1 - other_mass)[:, None], other_mass[:, None]])
    return probabilities, targets


def hard_class_photos(n: int, seed: int):
    """Class 0 is hard (its true label is rarely on top), the other classes easy."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, K, size=n)
    logits = rng.normal(size=(n, K))
    boost = np.where(targets == 0, 0.8, 4.0)
    logits[np.arange(n), targets] += boost
    probabilities = np.exp(logits)
    return probabilities / probabilities.sum(axis=1, keepdims=True), targets


def covered(sets: list[list[int]], targets: np.ndarray) -> np.ndarray:
    return np.array([t in s for s, t in zip(sets, targets, strict=True)])


@pytest.mark.parametrize("method", ["aps", "raps"])
@pytest.mark.parametrize("mondrian", [False, True])
def test_coverage_over_random_calibration_test_splits(method, mondrian):
    probabilities, targets = sample_photos(1200, seed=1, other_share=0.1)
    in_domain = np.flatnonzero(targets < K)
    coverages, sizes = [], []
    for split_seed in range(200):
        order = np.random.default_rng(split_seed).permutation(len(probabilities))
        calibration_rows, test_rows = order[:600], order[600:]
        calibration = calibrate_sets(
            probabilities[calibration_rows], targets[calibration_rows], 0.9, method, mondrian, n_labels=K
        )
        test_rows = np.intersect1d(test_rows, in_domain)
        sets = prediction_sets(probabilities[test_rows], calibration)
        coverages.append(covered(sets, targets[test_rows]).mean())
        sizes.append(np.mean([len(s) for s in sets]))
    coverages = np.array(coverages)
    assert 0.89 <= coverages.mean() <= 0.93, coverages.mean()
    assert coverages.min() >= 0.82, coverages.min()
    assert np.mean(sizes) < 3.0  # adaptive sets, not "every label"


def test_mondrian_covers_a_hard_class_that_marginal_sets_miss():
    probabilities, targets = hard_class_photos(4000, seed=2)
    per_class = {False: [], True: []}
    for split_seed in range(20):
        order = np.random.default_rng(split_seed).permutation(len(targets))
        calibration_rows, test_rows = order[:2000], order[2000:]
        for mondrian in (False, True):
            calibration = calibrate_sets(
                probabilities[calibration_rows], targets[calibration_rows], 0.9, "aps", mondrian
            )
            sets = prediction_sets(probabilities[test_rows], calibration)
            metrics = set_metrics(sets, targets[test_rows], K)
            per_class[mondrian].append([metrics["by_class"][str(k)]["coverage"] for k in range(K)])
    marginal, mondrian = np.mean(per_class[False], axis=0), np.mean(per_class[True], axis=0)
    assert marginal[0] < 0.8  # the hard class is under-covered by one quantile for all
    assert (mondrian >= 0.88).all(), mondrian


def test_randomised_variant_also_covers_and_is_reproducible_with_a_seeded_rng():
    probabilities, targets = sample_photos(2000, seed=3)
    coverages = []
    for split_seed in range(20):
        order = np.random.default_rng(split_seed).permutation(len(targets))
        calibration = calibrate_sets(
            probabilities[order[:1000]], targets[order[:1000]], 0.9, randomized=True, seed=split_seed
        )
        sets = prediction_sets(
            probabilities[order[1000:]], calibration, rng=np.random.default_rng(split_seed)
        )
        again = prediction_sets(
            probabilities[order[1000:]], calibration, rng=np.random.default_rng(split_seed)
        )
        assert sets == again and all(sets)  # randomised scores could leave none: top label kept
        coverages.append(covered(sets, targets[order[1000:]]).mean())
    assert np.mean(coverages) >= 0.89


def test_sets_are_never_empty_and_most_likely_first():
    probabilities, targets = sample_photos(800, seed=4)
    calibration = calibrate_sets(probabilities[:400], targets[:400], 0.9, "raps", n_labels=K)
    sets = prediction_sets(probabilities[400:], calibration)
    for row, members in zip(probabilities[400:], sets, strict=True):
        assert members, "an answered photo always gets at least its top label"
        assert members[0] == int(np.argmax(row[:K]))
        assert all(0 <= m < K for m in members) and len(set(members)) == len(members)
        chosen = row[members]
        assert (np.diff(chosen) <= 0).all(), "most likely first"
    assert any(len(s) > 1 for s in sets) and any(len(s) == 1 for s in sets)


def test_a_very_high_quantile_still_never_gives_an_empty_or_out_of_range_set():
    probabilities, targets = sample_photos(5, seed=5)  # too few photos: every label
    calibration = calibrate_sets(probabilities, targets, 0.9, n_labels=K)
    assert math.isinf(calibration.qhat)
    assert all(sorted(s) == list(range(K)) for s in prediction_sets(probabilities, calibration))


def test_abstention_comes_first_and_only_answered_in_domain_photos_calibrate():
    probabilities, targets = sample_photos(1000, seed=6, other_share=0.3)
    threshold = 0.5
    calibration = calibrate_sets(probabilities, targets, 0.9, n_labels=K, threshold=threshold)
    answered = probabilities[:, :K].max(axis=1) >= threshold
    assert calibration.n_calibration == int((answered & (targets < K)).sum())
    assert calibration.threshold == threshold
    sets = prediction_sets(probabilities, calibration)
    assert all((len(s) == 0) == (not a) for s, a in zip(sets, answered, strict=True))
    # an explicit threshold (the Recognizer's, possibly overridden) wins over the calibrated one
    assert all(prediction_sets(probabilities, calibration, threshold=0.0))
    row = probabilities[np.flatnonzero(~answered)[0]]
    assert prediction_set(row, calibration) == []
    assert prediction_set(row, calibration, threshold=0.0) != []


def test_a_model_without_an_other_column_gives_sets():
    probabilities, targets = sample_photos(600, seed=7)
    known_only = probabilities[:, :K] / probabilities[:, :K].sum(axis=1, keepdims=True)
    calibration = calibrate_sets(known_only[:300], targets[:300], 0.9)
    assert calibration.n_labels == K
    sets = prediction_sets(known_only[300:], calibration)
    assert all(sets) and covered(sets, targets[300:]).mean() > 0.8
    # the same photos with an (unused) abstain column and no abstention: the same sets
    trained_without_other = np.hstack([known_only, np.full((600, 1), 1e-13)])
    with_column = calibrate_sets(trained_without_other[:300], targets[:300], 0.9, n_labels=K)
    assert with_column.qhat == pytest.approx(calibration.qhat, abs=1e-9)
    assert prediction_sets(trained_without_other[300:], with_column) == sets


def test_sets_are_over_the_known_labels_renormalised():
    probabilities, targets = sample_photos(600, seed=8, other_share=0.2)
    calibration = calibrate_sets(probabilities, targets, 0.9, n_labels=K)
    row = probabilities[0]
    renormalised = row[:K] / row[:K].sum()
    assert prediction_set(row, calibration) == prediction_set(renormalised, calibration)


def test_low_data_class_falls_back_to_the_marginal_quantile():
    probabilities, targets = sample_photos(800, seed=9)
    rare = np.flatnonzero(targets == 3)
    keep = np.setdiff1d(np.arange(len(targets)), rare[5:])  # class 3 keeps 5 calibration photos
    calibration = calibrate_sets(probabilities[keep], targets[keep], 0.9, n_labels=K)
    assert calibration.min_class_count == 9
    assert calibration.class_counts[3] == 5
    assert calibration.per_class_qhat[3] is None and calibration.fallback_labels() == [3]
    assert calibration.low_data_qhat is None  # 5 photos pooled are still too few
    assert calibration.label_qhat()[3] == calibration.qhat
    assert all(q is not None for k, q in enumerate(calibration.per_class_qhat) if k != 3)


def test_low_data_classes_pooled_never_lower_than_marginal():
    probabilities, targets = hard_class_photos(3000, seed=10)
    rare_kept = np.concatenate([np.flatnonzero(targets == 0)[:6], np.flatnonzero(targets == 1)[:7]])
    keep = ~np.isin(targets, [0, 1])
    keep[rare_kept] = True  # classes 0 and 1: 6 and 7 photos, 13 between them
    counts = np.bincount(targets[keep], minlength=K)
    assert counts[0] < 9 and counts[1] < 9 and counts[0] + counts[1] >= 9
    calibration = calibrate_sets(probabilities[keep], targets[keep], 0.9)
    assert calibration.fallback_labels() == [0, 1]
    assert calibration.low_data_qhat is not None
    assert calibration.fallback_qhat == max(calibration.qhat, calibration.low_data_qhat)
    assert calibration.label_qhat()[0] >= calibration.qhat


def test_min_class_count_follows_the_finite_sample_rule():
    assert smallest_finite_count(0.9) == 9
    assert smallest_finite_count(0.95) == 19
    assert smallest_finite_count(0.8) == 4
    probabilities, targets = sample_photos(300, seed=11)
    assert calibrate_sets(probabilities, targets, 0.95, n_labels=K).min_class_count == 19
    assert calibrate_sets(probabilities, targets, 0.9, n_labels=K, min_class_count=30).min_class_count == 30
    with pytest.raises(ValueError, match="at least 9"):
        calibrate_sets(probabilities, targets, 0.9, n_labels=K, min_class_count=5)


def test_quantile_is_rounded_up_and_the_dict_round_trip_is_exact():
    probabilities, targets = sample_photos(500, seed=12, other_share=0.1)
    for method in ("aps", "raps"):
        calibration = calibrate_sets(probabilities, targets, 0.9, method, n_labels=K, threshold=0.3)
        assert round(calibration.qhat, 10) == calibration.qhat
        text = json.dumps(calibration.to_dict(), sort_keys=True)
        restored = ConformalCalibration.from_dict(json.loads(text))
        assert restored == calibration
        assert json.dumps(restored.to_dict(), sort_keys=True) == text
        assert prediction_sets(probabilities, restored) == prediction_sets(probabilities, calibration)
        # re-calibrating the same data is byte-identical
        again = calibrate_sets(probabilities, targets, 0.9, method, n_labels=K, threshold=0.3)
        assert json.dumps(again.to_dict(), sort_keys=True) == text
    empty = calibrate_sets(probabilities[:3], targets[:3], 0.9, n_labels=K)
    assert empty.to_dict()["qhat"] is None
    assert math.isinf(ConformalCalibration.from_dict(json.loads(json.dumps(empty.to_dict()))).qhat)


def test_raps_parameters_are_recorded_and_change_the_scores():
    probabilities, targets = sample_photos(800, seed=13)
    aps = calibrate_sets(probabilities, targets, 0.9, "aps", False, n_labels=K)
    raps = calibrate_sets(probabilities, targets, 0.9, "raps", False, n_labels=K, k_reg=1, lam=0.5)
    assert (aps.k_reg, aps.lam) == (0, 0.0)
    assert (raps.k_reg, raps.lam) == (1, 0.5)
    assert calibrate_sets(probabilities, targets, 0.9, "raps", n_labels=K).to_dict()["k_reg"] == 2
    # a heavy penalty past rank k_reg makes set sizes uniform: the long tail of large sets is cut
    aps_sizes = [len(s) for s in prediction_sets(probabilities, aps)]
    raps_sizes = [len(s) for s in prediction_sets(probabilities, raps)]
    assert max(raps_sizes) < max(aps_sizes)
    assert np.std(raps_sizes) < np.std(aps_sizes)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"method": "lac"}, "unknown conformal method"),
        ({"coverage": 1.5}, "coverage"),
        ({"coverage": float("nan")}, "coverage"),
        ({"qhat": -1}, "qhat"),
        ({"qhat": "0.5"}, "qhat"),
        ({"n_labels": True}, "n_labels"),
        ({"per_class_qhat": [0.5]}, "per_class_qhat"),
        ({"per_class_qhat": "x"}, "per_class_qhat"),
        ({"class_counts": [-1] * K}, "class_counts"),
        ({"randomized": "yes"}, "randomized"),
        ({"threshold": 2}, "threshold"),
        ({"format": 99}, "format"),
    ],
)
def test_from_dict_refuses_malformed_metadata(change, message):
    probabilities, targets = sample_photos(300, seed=14)
    data = calibrate_sets(probabilities, targets, 0.9, n_labels=K).to_dict()
    data.update(change)
    with pytest.raises(ValueError, match=message):
        ConformalCalibration.from_dict(data)
    with pytest.raises(ValueError, match="JSON object"):
        ConformalCalibration.from_dict([1, 2])


def test_bad_inputs_are_refused_clearly():
    probabilities, targets = sample_photos(50, seed=15)
    with pytest.raises(ValueError, match="2-D"):
        calibrate_sets(probabilities[0], targets[:1], 0.9)
    with pytest.raises(ValueError, match="integer label indices"):
        calibrate_sets(probabilities, targets.astype(float), 0.9)
    with pytest.raises(ValueError, match="finite"):
        calibrate_sets(np.full((3, K), np.nan), np.zeros(3, int), 0.9)
    with pytest.raises(ValueError, match="coverage"):
        calibrate_sets(probabilities, targets, 1.0)
    with pytest.raises(ValueError, match="n_labels"):
        calibrate_sets(probabilities, targets, 0.9, n_labels=K + 5)
    calibration = calibrate_sets(probabilities, targets, 0.9, n_labels=K)
    with pytest.raises(ValueError, match="n_labels"):
        prediction_set(probabilities[0, :5], calibration)
    with pytest.raises(ValueError, match="columns"):
        prediction_sets(np.ones((2, K + 3)) / (K + 3), calibration)
    assert prediction_sets(np.zeros((0, K + 1)), calibration) == []


def test_set_metrics_counts_exactly():
    sets = [[0], [1, 0], [], [2, 1, 0], [0], []]
    targets = [0, 0, 1, 1, 3, 3]  # two 'other' photos (target 3 with 3 labels)
    metrics = set_metrics(sets, targets, n_labels=3, labels=["A", "B", "C"])
    assert metrics["images"] == 4
    assert metrics["coverage"] == 0.75  # the abstained B photo is a miss
    assert metrics["answered"] == 0.75 and metrics["answered_coverage"] == 1.0
    assert metrics["mean_set_size"] == 2.0
    assert metrics["by_class"]["A"] == {
        "images": 2,
        "coverage": 1.0,
        "answered_coverage": 1.0,
        "mean_set_size": 1.5,
    }
    assert metrics["by_class"]["C"]["coverage"] is None
    assert metrics["by_set_size"] == {
        "0": {"images": 1, "share": 0.25, "coverage": 0.0},
        "1": {"images": 1, "share": 0.25, "coverage": 1.0},
        "2": {"images": 1, "share": 0.25, "coverage": 1.0},
        "3": {"images": 1, "share": 0.25, "coverage": 1.0},
    }
    assert metrics["other_images"] == 2 and metrics["other_empty_set"] == 0.5
    json.dumps(metrics)


def test_coverage_curve_grows_with_the_target():
    probabilities, targets = sample_photos(2000, seed=16)
    calibrations = [
        calibrate_sets(probabilities[:1000], targets[:1000], c, mondrian=False, n_labels=K)
        for c in (0.8, 0.9, 0.95, 0.98)
    ]
    points = coverage_curve(probabilities[1000:], targets[1000:], calibrations)
    assert [p["target"] for p in points] == [0.8, 0.9, 0.95, 0.98]
    sizes = [p["mean_set_size"] for p in points]
    coverages = [p["coverage"] for p in points]
    assert sizes == sorted(sizes) and coverages == sorted(coverages)
    # conservative (deterministic scores) but close: never well below its target
    assert all(p["target"] - 0.03 <= p["coverage"] <= p["target"] + 0.05 for p in points), points


def test_fallback_quantile_is_never_below_the_marginal_one():
    calibration = ConformalCalibration(
        method="aps",
        coverage=0.9,
        qhat=0.6,
        n_labels=3,
        n_calibration=40,
        mondrian=True,
        per_class_qhat=(0.2, None, None),
        class_counts=(30, 5, 5),
        low_data_qhat=0.4,
        min_class_count=9,
    )
    assert calibration.fallback_qhat == 0.6
    assert calibration.label_qhat().tolist() == [0.2, 0.6, 0.6]
    raised = ConformalCalibration.from_dict({**calibration.to_dict(), "low_data_qhat": 0.8})
    assert raised.label_qhat().tolist() == [0.2, 0.8, 0.8]
    # scores = mass ranked above the label; class 0's tight quantile leaves it out at rank two
    assert prediction_set([0.3, 0.45, 0.25], raised) == [1, 2]
    assert prediction_set([0.6, 0.15, 0.25], raised) == [0, 2]  # label 1: 0.85 > 0.8
    assert prediction_set([0.5, 0.2, 0.3], raised) == [0, 2, 1]  # label 1: 0.8 <= 0.8
