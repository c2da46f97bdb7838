"""Prediction sets with a coverage guarantee: split-conformal APS / RAPS, optionally per class.

A leaf module (numpy and the standard library only) so training, the model metadata and every
surface can share one implementation. See docs/PREDICTION_SETS.md for what the guarantee covers.

Order of decisions for one photo:

1. abstention first, by the model's calibrated abstain rule (``calibrate.in_scope_scores``): an
   in-scope score below ``threshold`` → the empty set ("none of these");
2. otherwise the conformal set among the K known labels, on probabilities renormalised over those
   K labels (the ``other`` column, if any, is dropped): the set answers "given that it is one of
   the K, which ones?", which is exactly the question calibration on in-domain photos measures.

Scores (``p`` sorted in decreasing order, rank ``r`` of a label counted from 1, ``u`` in [0, 1]):

- APS  (Romano et al. 2020):       s = p(ranked above the label) + u · p(label)
- RAPS (Angelopoulos et al. 2021): s = APS score + lam · max(0, r - k_reg)

Non-randomised (the default, for deterministic serving): ``u = 0``. Any fixed score function keeps
the split-conformal guarantee, so coverage is still ≥ 1 - α; it is conservative (discrete scores:
when the top label alone is right often enough every set is a single label and coverage equals
top-1 accuracy). Classic non-randomised APS (``u = 1``, "include the label that crosses") is
also valid but its sets are supersets of these, so it is not offered.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ethnic_group_recognizer.calibrate import ABSTAIN_RULES, LEGACY_ABSTAIN_RULE, in_scope_scores

METHODS = ("aps", "raps")
#: Default method APS: parameter-free, and on synthetic 12-label scores RAPS gave the same or larger
#: sets (its penalty helps most with hundreds of labels and noisy tails, Angelopoulos et al. 2021).
#: RAPS defaults, when chosen: no penalty for the first two labels (the "one of X or Y" answer the
#: product aims at); from the third label on, each rank adds 0.05 to the score, small next to the
#: mass of the top labels, so it trims the long tail (sets of five and more on a confusing photo)
#: rather than reshaping small sets. A heavy lam makes every set about k_reg + 1 labels; lam = 0
#: is APS. (The paper's rule, k_reg = the (1-α) quantile of the true label's rank with lam tuned
#: for size, needs a separate tuning split, which the out-of-fold predictions do not leave.)
DEFAULT_K_REG = 2
DEFAULT_LAMBDA = 0.05
#: Quantiles are rounded *up* to this many decimals: JSON-stable across platforms, never less covering.
DECIMALS = 10
FORMAT = 1


def smallest_finite_count(coverage: float) -> int:
    """Fewest calibration photos for which the conformal quantile is finite: ceil((1-α)/α).

    The quantile is the ceil((n+1)(1-α))-th smallest of n scores; with fewer photos that rank is
    past n and the only valid set is every label. 9 photos at 0.9 coverage, 19 at 0.95.
    """
    _check_coverage(coverage)
    return max(1, math.ceil(coverage / (1.0 - coverage) - 1e-9))


def _check_coverage(coverage: float) -> None:
    if not isinstance(coverage, numbers.Real) or isinstance(coverage, bool) or not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be a number strictly between 0 and 1, got {coverage!r}")


def _round_up(value: float) -> float:
    if not math.isfinite(value):
        return value
    rounded = round(value, DECIMALS)
    if rounded < value:
        rounded = round(rounded + 10.0**-DECIMALS, DECIMALS)
    return float(rounded)


@dataclass(frozen=True)
class ConformalCalibration:
    """Everything needed to turn one probability row into a prediction set (JSON-safe via to_dict).

    ``qhat`` is the marginal quantile (``inf``: too few calibration photos, every label is in the
    set). ``per_class_qhat[k]`` is class k's own quantile, or None where class k had fewer than
    ``min_class_count`` calibration photos (or ``mondrian`` is off); such classes use
    ``fallback_qhat``: the marginal quantile, raised to the quantile of the low-data classes pooled
    together when those have enough photos between them (``low_data_qhat``).
    """

    method: str
    coverage: float
    qhat: float
    n_labels: int
    n_calibration: int
    mondrian: bool = False
    per_class_qhat: tuple[float | None, ...] = ()
    class_counts: tuple[int, ...] = ()
    low_data_qhat: float | None = None
    min_class_count: int = 0
    k_reg: int = 0
    lam: float = 0.0
    randomized: bool = False
    threshold: float = 0.0
    seed: int = 0
    #: The abstain rule ``threshold`` applies to (``calibrate.ABSTAIN_RULES``); older dicts: top-label.
    abstain_rule: str = LEGACY_ABSTAIN_RULE
    _label_qhat: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown conformal method {self.method!r}: use one of {', '.join(METHODS)}")
        _check_coverage(self.coverage)
        if self.abstain_rule not in ABSTAIN_RULES:
            raise ValueError(
                f"unknown abstain rule {self.abstain_rule!r}: use one of {', '.join(ABSTAIN_RULES)}"
            )
        if self.n_labels < 1:
            raise ValueError(f"n_labels must be at least 1, got {self.n_labels}")
        if self.per_class_qhat and len(self.per_class_qhat) != self.n_labels:
            raise ValueError(
                f"per_class_qhat has {len(self.per_class_qhat)} entries for {self.n_labels} labels"
            )
        if self.class_counts and len(self.class_counts) != self.n_labels:
            raise ValueError(f"class_counts has {len(self.class_counts)} entries for {self.n_labels} labels")
        per_label = [self.fallback_qhat if q is None else q for q in self.per_class_qhat] or [
            self.qhat
        ] * self.n_labels
        object.__setattr__(self, "_label_qhat", np.array(per_label, dtype=float))

    @property
    def fallback_qhat(self) -> float:
        """The quantile used by a class without its own (never below the marginal one)."""
        if self.low_data_qhat is None:
            return self.qhat
        return max(self.qhat, self.low_data_qhat)

    def label_qhat(self) -> np.ndarray:
        """The quantile each label's score is compared with (a copy)."""
        return self._label_qhat.copy()

    def fallback_labels(self) -> list[int]:
        """Label indices without a per-class quantile of their own (low-data classes)."""
        if not self.mondrian:
            return list(range(self.n_labels))
        return [k for k, q in enumerate(self.per_class_qhat) if q is None]

    def to_dict(self) -> dict:
        """JSON-safe: floats as stored (already rounded), ``inf`` as None."""
        return {
            "format": FORMAT,
            "method": self.method,
            "coverage": self.coverage,
            "qhat": None if math.isinf(self.qhat) else self.qhat,
            "n_labels": self.n_labels,
            "n_calibration": self.n_calibration,
            "mondrian": self.mondrian,
            "per_class_qhat": list(self.per_class_qhat),
            "class_counts": list(self.class_counts),
            "low_data_qhat": self.low_data_qhat,
            "min_class_count": self.min_class_count,
            "k_reg": self.k_reg,
            "lam": self.lam,
            "randomized": self.randomized,
            "threshold": self.threshold,
            "seed": self.seed,
            "abstain_rule": self.abstain_rule,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ConformalCalibration:
        """Read back ``to_dict`` output; refuses malformed data (metadata files are untrusted)."""
        if not isinstance(data, Mapping):
            raise ValueError("conformal calibration must be a JSON object")
        if data.get("format", FORMAT) != FORMAT:
            raise ValueError(f"unsupported conformal calibration format {data.get('format')!r}")

        def number(key: str, default: float | None = None, allow_none: bool = False) -> float | None:
            value = data.get(key, default)
            if value is None and allow_none:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"conformal calibration: {key!r} must be a finite number, got {value!r}")
            if value < 0:
                raise ValueError(f"conformal calibration: {key!r} must not be negative, got {value!r}")
            return float(value)

        def integer(key: str, default: int | None = None) -> int:
            value = data.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"conformal calibration: {key!r} must be a non-negative integer, got {value!r}"
                )
            return value

        def flag(key: str) -> bool:
            value = data.get(key, False)
            if not isinstance(value, bool):
                raise ValueError(f"conformal calibration: {key!r} must be true or false, got {value!r}")
            return value

        def listing(key: str) -> list:
            value = data.get(key, [])
            if not isinstance(value, list):
                raise ValueError(f"conformal calibration: {key!r} must be a list")
            return value

        per_class = []
        for i, value in enumerate(listing("per_class_qhat")):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            ):
                raise ValueError(f"conformal calibration: per_class_qhat[{i}] must be a number or null")
            if value is not None and value < 0:
                raise ValueError(f"conformal calibration: per_class_qhat[{i}] must not be negative")
            per_class.append(None if value is None else float(value))
        counts = []
        for i, value in enumerate(listing("class_counts")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"conformal calibration: class_counts[{i}] must be a non-negative integer")
            counts.append(value)
        qhat = number("qhat", allow_none=True)
        threshold = number("threshold", 0.0)
        if threshold > 1.0:
            raise ValueError(f"conformal calibration: threshold must be at most 1, got {threshold}")
        method = data.get("method")
        if not isinstance(method, str):
            raise ValueError(f"conformal calibration: 'method' must be a string, got {method!r}")
        rule = data.get("abstain_rule", LEGACY_ABSTAIN_RULE)
        if rule not in ABSTAIN_RULES:
            raise ValueError(f"conformal calibration: unknown abstain_rule {rule!r}")
        return cls(
            method=method,
            coverage=number("coverage"),
            qhat=math.inf if qhat is None else qhat,
            n_labels=integer("n_labels"),
            n_calibration=integer("n_calibration"),
            mondrian=flag("mondrian"),
            per_class_qhat=tuple(per_class),
            class_counts=tuple(counts),
            low_data_qhat=number("low_data_qhat", None, allow_none=True),
            min_class_count=integer("min_class_count", 0),
            k_reg=integer("k_reg", 0),
            lam=number("lam", 0.0),
            randomized=flag("randomized"),
            threshold=threshold,
            seed=integer("seed", 0),
            abstain_rule=rule,
        )


# -- scores --------------------------------------------------------------------------------
def _as_probabilities(probabilities: np.ndarray, n_labels: int | None) -> tuple[np.ndarray, int]:
    """(N, columns) float64 array, validated; ``n_labels`` defaults to all columns."""
    array = np.asarray(probabilities, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"probabilities must be a 2-D array (photos × outputs), got shape {array.shape}")
    k = array.shape[1] if n_labels is None else int(n_labels)
    if not 1 <= k <= array.shape[1]:
        raise ValueError(f"n_labels={k} does not fit probabilities with {array.shape[1]} columns")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    return array, k


def _known(array: np.ndarray, n_labels: int) -> np.ndarray:
    """Probabilities of the K known labels, renormalised to sum to 1 (uniform for an all-zero row)."""
    known = array[:, :n_labels]
    total = known.sum(axis=1, keepdims=True)
    uniform = np.full_like(known, 1.0 / n_labels)
    return np.where(total > 0, known / np.where(total > 0, total, 1.0), uniform)


def _sorted_scores(
    known: np.ndarray, k_reg: int, lam: float, u: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels in decreasing probability (ties: lower index first) and each label's score in that order.

    Scores are non-decreasing along the ranking for any u, so a threshold on them cuts a prefix.
    """
    order = np.argsort(-known, axis=1, kind="stable")
    ranked = np.take_along_axis(known, order, axis=1)
    above = np.zeros_like(ranked)  # mass ranked strictly above each label: a shifted cumulative sum
    np.cumsum(ranked[:, :-1], axis=1, out=above[:, 1:])
    scores = above if u is None else above + u[:, None] * ranked
    if lam > 0:
        ranks = np.arange(1, known.shape[1] + 1)
        scores = scores + lam * np.maximum(ranks - k_reg, 0)
    return order, scores


def _quantile(scores: np.ndarray, coverage: float) -> float:
    """The ceil((n+1)·coverage)-th smallest score, rounded up; ``inf`` when that rank exceeds n."""
    n = len(scores)
    rank = math.ceil((n + 1) * coverage - 1e-9)
    if rank > n or n == 0:
        return math.inf
    return _round_up(float(np.partition(scores, rank - 1)[rank - 1]))


def _method_parameters(method: str, k_reg: int | None, lam: float | None) -> tuple[int, float]:
    if method not in METHODS:
        raise ValueError(f"unknown conformal method {method!r}: use one of {', '.join(METHODS)}")
    if method == "aps":
        return 0, 0.0
    k_reg = DEFAULT_K_REG if k_reg is None else k_reg
    lam = DEFAULT_LAMBDA if lam is None else lam
    if isinstance(k_reg, bool) or not isinstance(k_reg, numbers.Integral) or k_reg < 0:
        raise ValueError(f"k_reg must be a non-negative integer, got {k_reg!r}")
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a non-negative number, got {lam!r}")
    return int(k_reg), float(lam)


def calibrate_sets(
    probabilities: np.ndarray,
    targets: np.ndarray,
    coverage: float = 0.9,
    method: str = "aps",
    mondrian: bool = True,
    *,
    n_labels: int | None = None,
    threshold: float = 0.0,
    min_class_count: int | None = None,
    k_reg: int | None = None,
    lam: float | None = None,
    randomized: bool = False,
    seed: int = 0,
    abstain_rule: str = LEGACY_ABSTAIN_RULE,
    pool_low_data: bool = True,
) -> ConformalCalibration:
    """Calibrate prediction sets on held-out probabilities (e.g. out-of-fold ones).

    ``probabilities``: (N, K) or (N, K+1) with the abstain column last; ``n_labels`` = K (default:
    every column is a label). Only in-domain photos (target < K) that the threshold rule would
    answer (best known-label probability ≥ ``threshold``) are used: the guarantee is then for the
    photos that reach the set stage. ``min_class_count`` (default and minimum: the smallest count
    with a finite quantile, 9 at 0.9) decides which classes get their own quantile.
    ``abstain_rule`` names the in-scope score ``threshold`` applies to (``calibrate.in_scope_scores``).
    ``pool_low_data=False`` gives the low-data classes the marginal quantile only: pooled, a few
    photos of barely learnt classes make a quantile near 1, which puts every low-data label in
    every set (measured on the shipped data: mean size 7 instead of 2).
    """
    _check_coverage(coverage)
    array, k = _as_probabilities(probabilities, n_labels)
    labels_true = np.asarray(targets)
    if labels_true.shape != (len(array),) or not np.issubdtype(labels_true.dtype, np.integer):
        raise ValueError(f"targets must be {len(array)} integer label indices, got shape {labels_true.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    k_reg, lam = _method_parameters(method, k_reg, lam)
    finite_count = smallest_finite_count(coverage)
    if min_class_count is None:
        min_class_count = finite_count
    elif min_class_count < finite_count:
        raise ValueError(
            f"min_class_count={min_class_count} is too small for coverage {coverage}: a class needs at "
            f"least {finite_count} calibration photos for a finite quantile"
        )

    in_domain = (labels_true >= 0) & (labels_true < k)
    if abstain_rule not in ABSTAIN_RULES:
        raise ValueError(f"unknown abstain rule {abstain_rule!r}: use one of {', '.join(ABSTAIN_RULES)}")
    answered = in_scope_scores(array, k, abstain_rule) >= threshold
    keep = in_domain & answered
    known = _known(array[keep], k)
    y = labels_true[keep].astype(int)
    u = np.random.default_rng(seed).random(len(y)) if randomized else None
    order, sorted_scores = _sorted_scores(known, k_reg, lam, u)
    position = np.argmax(order == y[:, None], axis=1)
    scores = sorted_scores[np.arange(len(y)), position]

    qhat = _quantile(scores, coverage)
    counts = np.bincount(y, minlength=k)
    per_class: list[float | None] = []
    low_data_qhat = None
    if mondrian:
        enough = counts >= min_class_count
        per_class = [_quantile(scores[y == c], coverage) if enough[c] else None for c in range(k)]
        low_data = ~enough[y]
        if pool_low_data and low_data.sum() >= min_class_count:
            low_data_qhat = _quantile(scores[low_data], coverage)
    return ConformalCalibration(
        method=method,
        coverage=float(coverage),
        qhat=qhat,
        n_labels=k,
        n_calibration=int(len(y)),
        mondrian=mondrian,
        per_class_qhat=tuple(per_class),
        class_counts=tuple(int(c) for c in counts),
        low_data_qhat=low_data_qhat,
        min_class_count=int(min_class_count),
        k_reg=k_reg,
        lam=lam,
        randomized=randomized,
        threshold=float(threshold),
        seed=seed,
        abstain_rule=abstain_rule,
    )


# -- sets ----------------------------------------------------------------------------------
def prediction_sets(
    probabilities: np.ndarray,
    calibration: ConformalCalibration,
    threshold: float | None = None,
    rng: np.random.Generator | None = None,
) -> list[list[int]]:
    """Prediction sets (label indices, most likely first) for each row.

    Empty where the photo is abstained on (in-scope score under the calibration's abstain rule
    < ``threshold``, default the calibration's threshold); otherwise the labels whose score is within their class's quantile
    (the marginal one without Mondrian), plus the top label always. Without Mondrian the set is a
    prefix of the ranking; with it, it need not be (an easy class ranked second can be left out
    while a hard one ranked third is in). Closing it into a prefix would keep the guarantee but
    multiplied mean set size by 2.5 on synthetic data, so it is not done.
    ``rng`` is only used by randomised calibrations (unseeded when not given).
    """
    array, k = _as_probabilities(probabilities, calibration.n_labels)
    if array.shape[1] > k + 1:
        raise ValueError(
            f"probabilities have {array.shape[1]} columns; the calibration expects {k} labels (+1 abstain)"
        )
    threshold = calibration.threshold if threshold is None else threshold
    if len(array) == 0:
        return []
    known = _known(array, k)
    u = None
    if calibration.randomized:
        u = (rng or np.random.default_rng()).random(len(array))
    order, sorted_scores = _sorted_scores(known, calibration.k_reg, calibration.lam, u)
    passes = sorted_scores <= calibration.label_qhat()[order]
    passes[:, 0] = True  # never empty for an answered photo: the top label is always in
    answered = in_scope_scores(array, k, calibration.abstain_rule) >= threshold
    return [order[i][passes[i]].tolist() if answered[i] else [] for i in range(len(array))]


def prediction_set(
    probabilities_row: Sequence[float] | np.ndarray,
    calibration: ConformalCalibration,
    threshold: float | None = None,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """The prediction set of one photo's probability row (K or K+1 values); see prediction_sets."""
    row = np.asarray(probabilities_row, dtype=float)
    if row.ndim != 1:
        raise ValueError(f"a probability row must be 1-D, got shape {row.shape}")
    return prediction_sets(row[None, :], calibration, threshold, rng)[0]


# -- metrics -------------------------------------------------------------------------------
def _rate(hits: int, total: int) -> float | None:
    return None if total == 0 else round(hits / total, 6)


def set_metrics(
    sets: Sequence[Sequence[int]],
    targets: Sequence[int] | np.ndarray,
    n_labels: int | None = None,
    labels: Sequence[str] | None = None,
) -> dict:
    """Empirical coverage and set size for the evaluate report.

    In-domain photos (target < ``n_labels``; all when None): ``coverage`` counts an empty set
    (abstained) as a miss; ``answered_coverage`` and ``mean_set_size`` are over non-empty sets only.
    Photos with target ≥ ``n_labels`` (``other``) are reported as the share given the empty set.
    ``by_class`` is keyed by label name when ``labels`` is given, else by index (as a string).
    """
    targets = np.asarray(targets, dtype=int)
    if len(sets) != len(targets):
        raise ValueError(f"{len(sets)} sets for {len(targets)} targets")
    if n_labels is None:
        n_labels = len(labels) if labels is not None else int(targets.max(initial=-1)) + 1
    if labels is not None and len(labels) != n_labels:
        raise ValueError(f"{len(labels)} label names for {n_labels} labels")
    names = list(labels) if labels is not None else [str(i) for i in range(n_labels)]

    covered = answered = size_total = in_domain = 0
    other_total = other_empty = 0
    by_class = {name: {"images": 0, "covered": 0, "answered": 0, "size_total": 0} for name in names}
    by_size: dict[int, dict[str, int]] = {}
    for members, target in zip(sets, targets, strict=True):
        size = len(members)
        if not 0 <= target < n_labels:
            other_total += 1
            other_empty += size == 0
            continue
        hit = int(target) in members
        in_domain += 1
        covered += hit
        answered += size > 0
        size_total += size
        entry = by_class[names[target]]
        entry["images"] += 1
        entry["covered"] += hit
        entry["answered"] += size > 0
        entry["size_total"] += size
        bucket = by_size.setdefault(size, {"images": 0, "covered": 0})
        bucket["images"] += 1
        bucket["covered"] += hit
    return {
        "images": in_domain,
        "coverage": _rate(covered, in_domain),
        "answered": _rate(answered, in_domain),
        "answered_coverage": _rate(covered, answered),
        "mean_set_size": None if answered == 0 else round(size_total / answered, 6),
        "by_class": {
            name: {
                "images": e["images"],
                "coverage": _rate(e["covered"], e["images"]),
                "answered_coverage": _rate(e["covered"], e["answered"]),
                "mean_set_size": None if e["answered"] == 0 else round(e["size_total"] / e["answered"], 6),
            }
            for name, e in by_class.items()
        },
        "by_set_size": {
            str(size): {
                "images": b["images"],
                "share": _rate(b["images"], in_domain),
                "coverage": _rate(b["covered"], b["images"]),
            }
            for size, b in sorted(by_size.items())
        },
        "other_images": other_total,
        "other_empty_set": _rate(other_empty, other_total),
    }


def coverage_curve(
    probabilities: np.ndarray,
    targets: np.ndarray,
    calibrations: Sequence[ConformalCalibration],
) -> list[dict]:
    """Target coverage, empirical coverage and mean set size per calibration (report.html's curve)."""
    points = []
    for calibration in calibrations:
        metrics = set_metrics(prediction_sets(probabilities, calibration), targets, calibration.n_labels)
        points.append(
            {
                "target": calibration.coverage,
                "coverage": metrics["coverage"],
                "answered_coverage": metrics["answered_coverage"],
                "mean_set_size": metrics["mean_set_size"],
            }
        )
    return points
