"""Calibration, a leaf every stage may import: softmax, temperature scaling, the abstain threshold.

Training fits the temperature and the threshold on held-out predictions; evaluation and cleaning
apply them. Only numpy is needed, so prediction-side modules can use it without the train extra.
"""

from __future__ import annotations

import numpy as np


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


def abstain_decisions(probabilities: np.ndarray, n_labels: int, threshold: float) -> np.ndarray:
    """Predicted label index per row, or -1 where the top label's probability is under threshold."""
    best = probabilities[:, :n_labels].argmax(axis=1)
    confident = probabilities[np.arange(len(best)), best] >= threshold
    return np.where(confident, best, -1)


def choose_threshold(
    probabilities: np.ndarray, targets: np.ndarray, n_labels: int, other_target: float | None = None
) -> float:
    """The abstain threshold, from held-out probabilities of in-domain and ``other`` photos.

    With ``other_target`` (e.g. 0.85): the lowest threshold that abstains on at least that share of
    the ``other`` photos — abstention calibrated on the other cultures, answering as many in-domain
    photos as that allows. Without: the threshold maximising the mean of in-domain accuracy
    (abstaining counts as a mistake) and the rate of abstaining on ``other``. Without ``other``
    data: 0 (never abstain).
    """
    in_domain = targets < n_labels
    if in_domain.all() or not in_domain.any():
        return 0.0
    thresholds = [float(t) for t in np.linspace(0.0, 0.95, 96)]
    decisions = [abstain_decisions(probabilities, n_labels, t) for t in thresholds]
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
