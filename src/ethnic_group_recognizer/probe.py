"""The linear probe, a leaf: logistic regression on unit embeddings blended with class prototypes.

Training fits it on frozen features (probe mode, and the LP of LP-FT in fine-tuning); cleaning
uses ``unit`` for cosine geometry. Only numpy and scikit-learn (imported when fitting) are needed.
"""

from __future__ import annotations

import numpy as np

#: Logit bias for an output with no training images (e.g. the abstain class without ``other``): never chosen.
NO_ABSTAIN_BIAS = -30.0
#: Cosine similarities live in [-1, 1]; prototypes are scaled to a logit range like the head's.
PROTOTYPE_SCALE = 10.0


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 length (a zero row stays zero), the geometry every head works in."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def class_prototypes(unit_features: np.ndarray, targets: np.ndarray, n_outputs: int) -> np.ndarray:
    """(n_outputs, d) unit class means scaled to logits; zero rows for classes without images.

    A nearest-class-mean needs no fitting, so it helps most the classes with a handful of images.
    """
    prototypes = np.zeros((n_outputs, unit_features.shape[1]))
    for cls in np.unique(targets):
        prototypes[cls] = unit(unit_features[targets == cls].mean(axis=0, keepdims=True))[0] * PROTOTYPE_SCALE
    return prototypes


def fit_probe_head(
    features: np.ndarray,
    targets: np.ndarray,
    n_outputs: int,
    *,
    regularization: float,
    prototype_weight: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression on standardised unit embeddings, blended with class prototypes.

    Returns (W, b) acting directly on unit-length embeddings: the standardisation and the
    prototype (cosine nearest-class-mean) logits are folded in, so the ONNX head is one MatMul.
    ``regularization`` is the inverse L2 strength (C); ``prototype_weight`` the prototypes' share.
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    unit_features = unit(features)
    mean, std = unit_features.mean(axis=0), unit_features.std(axis=0) + 1e-6
    classifier = LogisticRegression(C=regularization, max_iter=3000, random_state=seed)
    # One BLAS thread: on these small matrices OpenBLAS's second thread only busy-waits, and under
    # load a fit took 10x the wall time and 17x the CPU of a single-threaded one (same result).
    with threadpool_limits(limits=1, user_api="blas"):
        classifier.fit((unit_features - mean) / std, targets)
    coef, intercept = classifier.coef_, classifier.intercept_
    if len(classifier.classes_) == 2:
        # Two classes (two labels, no ``other``): scikit-learn keeps one row, the log-odds of the
        # second class. The same softmax, one row a class: -half and +half of it.
        coef, intercept = (
            np.vstack([-coef[0] / 2, coef[0] / 2]),
            np.array([-intercept[0] / 2, intercept[0] / 2]),
        )
    weights = np.zeros((n_outputs, unit_features.shape[1]))
    bias = np.full(n_outputs, NO_ABSTAIN_BIAS)
    for row, cls in enumerate(classifier.classes_):
        weights[cls] = coef[row] / std
        bias[cls] = intercept[row] - coef[row] @ (mean / std)
    if prototype_weight > 0:
        prototypes = class_prototypes(unit_features, targets, n_outputs)
        present = np.isin(np.arange(n_outputs), np.unique(targets))
        alpha = prototype_weight
        weights[present] = (1 - alpha) * weights[present] + alpha * prototypes[present]
        bias[present] = (1 - alpha) * bias[present]
    return weights, bias


def head_logits(features: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Logits of a probe head (W, b) for raw embeddings: the ONNX head's computation, in numpy."""
    return unit(features) @ weights.T + bias
