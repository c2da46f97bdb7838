"""Calibration, a leaf every stage may import: softmax, temperature scaling, the abstain rule.

Training fits the temperature and the threshold on held-out predictions; evaluation and cleaning
apply them. Only numpy is needed, so prediction-side modules can use it without the train extra.

The abstain rule ("is this photo out of scope?") turns a probability row (K labels + the abstain
class last) into an *in-scope score*; the model abstains when the score is under its threshold,
so for every rule a lower threshold answers more photos and 0 never abstains:

- ``top-label`` (models before prediction sets): the best of the K label probabilities;
- ``in-scope-share``: best / (best + P(other)), i.e. how the best known label compares with the
  abstain class. A photo split between two known groups keeps a high score (and gets a set of
  two), while the old rule abstained on it. (A JavaScript copy: web/local/decide.js.)
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

AbstainRule = Literal["top-label", "in-scope-share"]
ABSTAIN_RULES: tuple[str, ...] = get_args(AbstainRule)
#: The rule of model directories that do not name one (written before prediction sets).
LEGACY_ABSTAIN_RULE = "top-label"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so large logits do not overflow."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood of held-out logits (grid search)."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(10.0), 200))
    losses = [-np.log(softmax(logits / t)[np.arange(len(targets)), targets] + 1e-12).mean() for t in grid]
    return float(grid[int(np.argmin(losses))])


def in_scope_scores(probabilities: np.ndarray, n_labels: int, rule: str = LEGACY_ABSTAIN_RULE) -> np.ndarray:
    """Each row's in-scope score under ``rule`` (module docstring); abstain where it is < threshold."""
    if rule not in ABSTAIN_RULES:
        raise ValueError(f"unknown abstain rule {rule!r}: use {' or '.join(map(repr, ABSTAIN_RULES))}")
    array = np.asarray(probabilities, dtype=float)
    best = array[:, :n_labels].max(axis=1)
    if rule == "top-label" or array.shape[1] <= n_labels:
        return best
    other = array[:, n_labels]
    total = best + other
    return np.where(total > 0, best / np.where(total > 0, total, 1.0), 0.0)


def abstain_decisions(
    probabilities: np.ndarray, n_labels: int, threshold: float, rule: str = LEGACY_ABSTAIN_RULE
) -> np.ndarray:
    """Predicted label index per row, or -1 where the rule's in-scope score is under threshold."""
    best = probabilities[:, :n_labels].argmax(axis=1)
    confident = in_scope_scores(probabilities, n_labels, rule) >= threshold
    return np.where(confident, best, -1)


def choose_threshold(
    probabilities: np.ndarray,
    targets: np.ndarray,
    n_labels: int,
    other_target: float | None = None,
    rule: str = LEGACY_ABSTAIN_RULE,
) -> float:
    """The abstain threshold, from held-out probabilities of in-domain and ``other`` photos.

    With ``other_target`` (e.g. 0.85): the lowest threshold that abstains on at least that share of
    the ``other`` photos — abstention calibrated on the other cultures, answering as many in-domain
    photos as that allows. Without: the threshold maximising the mean of in-domain accuracy
    (abstaining counts as a mistake) and the rate of abstaining on ``other``. Without ``other``
    data: 0 (never abstain). ``rule`` is the abstain rule whose threshold is chosen; the grid is
    0.01 wide for ``top-label`` (as always) and 0.0025 for ``in-scope-share``, whose scores crowd
    near 1.
    """
    in_domain = targets < n_labels
    if in_domain.all() or not in_domain.any():
        return 0.0
    grid = np.linspace(0.0, 0.95, 96) if rule == "top-label" else np.linspace(0.0, 0.9975, 400)
    thresholds = [round(float(t), 6) for t in grid]
    decisions = [abstain_decisions(probabilities, n_labels, t, rule) for t in thresholds]
    abstained_other = [(d[~in_domain] == -1).mean() for d in decisions]
    if other_target is not None:
        reaching = [
            t for t, rate in zip(thresholds, abstained_other, strict=True) if rate >= other_target - 1e-9
        ]
        return reaching[0] if reaching else thresholds[-1]
    scores = [
        (d[in_domain] == targets[in_domain]).mean() + rate
        for d, rate in zip(decisions, abstained_other, strict=True)
    ]
    best = max(scores)  # the lowest threshold among equal scores (float noise included)
    return next(t for t, score in zip(thresholds, scores, strict=True) if score >= best - 1e-9)
