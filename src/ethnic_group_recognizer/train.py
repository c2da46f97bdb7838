"""Training: a linear probe on frozen embeddings (default) or full fine-tuning, then calibration.

Both modes end the same way: temperature scaling and an abstain threshold chosen on held-out
predictions, and a self-contained ONNX model (backbone + head) written with its labels and
metadata. The probe reads embeddings from the cache, so re-training takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from ethnic_group_recognizer.config import ABSTAIN_LABEL, Config
from ethnic_group_recognizer.dataset import Dataset, Record, duplicate_groups, group_folds, split
from ethnic_group_recognizer.images import load_image
from ethnic_group_recognizer.model import FORMAT_VERSION, LABELS_FILE, METADATA_FILE, MODEL_FILE, attach_head

SPLIT_FILE = "split.json"
#: Classes with fewer training images than this get augmented copies (probe mode).
SMALL_CLASS_IMAGES = 20
#: Logit bias for the abstain output when a dataset has no ``other`` images (never chosen).
NO_ABSTAIN_BIAS = -30.0


@dataclass
class TrainOptions:
    """What to train; defaults are the recipe of the shipped model."""

    mode: str = "probe"  # probe | finetune
    regularization: float = 0.05  # inverse L2 strength (C) of the logistic head, on standardised features
    augment_copies: int = 8  # augmented copies per image of a small class (probe)
    prototype_weight: float = 0.3  # blend of nearest-class-mean (cosine) logits into the head
    tta: bool = True  # average the photo and its mirror image at prediction time
    # share of held-out ``other`` photos the threshold must abstain on; None: balance it with accuracy.
    # 0.9: a wrong label misleads a cataloguer more than no label (README, Results)
    abstain_target: float | None = 0.9
    epochs: int = 8  # finetune
    head_epochs: int = 1  # finetune: head warm-up with the backbone frozen, after the probe initialisation
    learning_rate: float = 1e-3  # finetune, head; the backbone gets a tenth
    patience: int = 2  # finetune: early stopping on validation loss
    name: str = "model"


@dataclass
class TrainResult:
    out_dir: Path
    metadata: dict = field(default_factory=dict)


# -- augmentation (Pillow only, so the probe needs no torch) ---------------------------------
def augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """Random resized crop (50–100 % area), flip and colour jitter, the fastai-style basics."""
    width, height = image.size
    area = rng.uniform(0.5, 1.0) * width * height
    ratio = rng.uniform(3 / 4, 4 / 3)
    w = int(min(width, round((area * ratio) ** 0.5)))
    h = int(min(height, round((area / ratio) ** 0.5)))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    image = image.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(0.8, 1.2))
    return image


# -- calibration ---------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
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


# -- the probe -----------------------------------------------------------------------------
def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def fit_probe_head(
    features: np.ndarray, targets: np.ndarray, n_outputs: int, options: TrainOptions, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression on standardised unit embeddings, blended with class prototypes.

    Returns (W, b) acting directly on unit-length embeddings: the standardisation and the
    prototype (cosine nearest-class-mean) logits are folded in, so the ONNX head is one MatMul.
    Classes with few images benefit most from the prototypes, which need no fitting.
    """
    from sklearn.linear_model import LogisticRegression

    unit = _unit(features)
    mean, std = unit.mean(axis=0), unit.std(axis=0) + 1e-6
    classifier = LogisticRegression(C=options.regularization, max_iter=3000, random_state=seed)
    classifier.fit((unit - mean) / std, targets)
    weights = np.zeros((n_outputs, unit.shape[1]))
    bias = np.full(n_outputs, NO_ABSTAIN_BIAS)
    for row, cls in enumerate(classifier.classes_):
        weights[cls] = classifier.coef_[row] / std
        bias[cls] = classifier.intercept_[row] - classifier.coef_[row] @ (mean / std)
    if options.prototype_weight > 0:
        scale = 10.0  # cosine similarities live in [-1, 1]; scaled to a logit range like the head's
        prototypes = np.zeros_like(weights)
        for cls in np.unique(targets):
            prototypes[cls] = _unit(unit[targets == cls].mean(axis=0, keepdims=True))[0] * scale
        present = np.isin(np.arange(n_outputs), np.unique(targets))
        alpha = options.prototype_weight
        weights[present] = (1 - alpha) * weights[present] + alpha * prototypes[present]
        bias[present] = (1 - alpha) * bias[present]
    return weights, bias


def _logits(features: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return _unit(features) @ weights.T + bias


@dataclass
class _Views:
    """Embeddings of the same records: plain, mirrored, and augmented copies (small classes)."""

    plain: np.ndarray
    mirror: np.ndarray
    extra_features: np.ndarray
    extra_targets: np.ndarray
    extra_owner: np.ndarray  # index of the record each augmented copy came from


def _embed_views(
    dataset: Dataset,
    records: list[Record],
    targets: np.ndarray,
    train_idx: list[int],
    options: TrainOptions,
    config: Config,
) -> _Views:
    from ethnic_group_recognizer.backbone import Embedder

    embedder = Embedder(config.backbone, config)
    paths = [dataset.abspath(r) for r in records]
    hashes = [r.sha256 for r in records]
    plain = embedder.embed_files(paths, hashes)
    mirror = embedder.embed_files(paths, hashes, mirror=True)
    counts = Counter(targets[train_idx].tolist())
    rng = random.Random(config.seed)
    owners, images = [], []
    for i in train_idx:
        if counts[targets[i]] < SMALL_CLASS_IMAGES:
            image = load_image(paths[i], config)
            for _ in range(options.augment_copies):
                owners.append(i)
                images.append(augment(image, rng))
    extra = embedder.embed_images(images) if images else np.zeros((0, plain.shape[1]), np.float32)
    owner = np.array(owners, dtype=int)
    return _Views(plain, mirror, extra, targets[owner] if len(owner) else np.zeros(0, int), owner)


def _training_matrix(
    views: _Views, indices: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Plain + mirrored embeddings of ``indices``, plus the augmented copies of those records."""
    keep = np.isin(views.extra_owner, indices)
    features = np.concatenate([views.plain[indices], views.mirror[indices], views.extra_features[keep]])
    labels = np.concatenate([targets[indices], targets[indices], views.extra_targets[keep]])
    return features, labels


def _predict_logits(views: _Views, indices: np.ndarray, weights: np.ndarray, bias: np.ndarray, tta: bool):
    logits = _logits(views.plain[indices], weights, bias)
    if tta:
        logits = (logits + _logits(views.mirror[indices], weights, bias)) / 2
    return logits


def _out_of_fold_logits(
    views: _Views,
    train_idx: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray,
    n_outputs: int,
    options: TrainOptions,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out logits for the training images from 5 group-aware folds (for calibration)."""
    logits = np.zeros((len(train_idx), n_outputs))
    covered = np.zeros(len(train_idx), bool)
    for fit_part, held_part in group_folds(targets[train_idx], groups[train_idx], 5, seed):
        weights, bias = fit_probe_head(
            *_training_matrix(views, train_idx[fit_part], targets), n_outputs, options, seed
        )
        logits[held_part] = _predict_logits(views, train_idx[held_part], weights, bias, options.tta)
        covered[held_part] = True
    return logits[covered], targets[train_idx][covered]


def _labels_of(records: list[Record]) -> list[str]:
    return sorted({r.label for r in records if r.label != ABSTAIN_LABEL})


def _data_hash(records: list[Record]) -> str:
    return hashlib.sha256("\n".join(sorted(r.sha256 for r in records)).encode()).hexdigest()


def train(
    dataset_dir: str | Path,
    out_dir: str | Path,
    options: TrainOptions | None = None,
    config: Config | None = None,
) -> TrainResult:
    """Train a model from a dataset folder and write a model directory to ``out_dir``."""
    options = options or TrainOptions()
    config = config or Config()
    if options.mode not in ("probe", "finetune"):
        raise ValueError(f"unknown mode {options.mode!r}: use 'probe' or 'finetune'")
    started = time.perf_counter()
    dataset = Dataset.open(dataset_dir, config)
    records = dataset.usable()
    labels = _labels_of(records)
    if len(labels) < 2:
        raise ValueError(
            f"{dataset_dir}: need images of at least 2 labels to train, found {labels or 'none'}"
        )
    index = {label: i for i, label in enumerate(labels)}
    abstain_index = len(labels)
    n_outputs = len(labels) + 1
    targets = np.array([index.get(r.label, abstain_index) for r in records])
    train_idx, val_idx = (
        np.array(part, dtype=int) for part in split(records, config.val_fraction, config.seed)
    )
    groups = np.array(duplicate_groups(records))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    if options.mode == "probe":
        views = _embed_views(dataset, records, targets, train_idx.tolist(), options, config)
        oof_logits, oof_targets = _out_of_fold_logits(
            views, train_idx, targets, groups, n_outputs, options, config.seed
        )
        weights, bias = fit_probe_head(
            *_training_matrix(views, train_idx, targets), n_outputs, options, config.seed
        )
        from ethnic_group_recognizer.backbone import backbone_onnx

        backbone_path = backbone_onnx(config.backbone, config)
        calibration_note = "5-fold group-aware out-of-fold predictions on the training split"
    else:
        from ethnic_group_recognizer.finetune import finetune

        paths = [dataset.abspath(r) for r in records]
        backbone_path, weights, bias, oof_logits, oof_targets = finetune(
            paths, targets, train_idx, val_idx, n_outputs, options, config, out
        )
        calibration_note = "the validation split (fine-tuning has no out-of-fold predictions)"

    temperature = fit_temperature(oof_logits, oof_targets)
    threshold = choose_threshold(
        softmax(oof_logits / temperature), oof_targets, len(labels), options.abstain_target
    )
    attach_head(backbone_path, weights, bias, temperature, out / MODEL_FILE)
    if options.mode == "finetune":
        backbone_path.unlink()  # folded into model.onnx; the fine-tuned backbone is of no use alone

    train_records = [records[i] for i in train_idx]
    counts = Counter(r.label for r in train_records)
    from ethnic_group_recognizer.backbone import spec_for

    spec = spec_for(config.backbone, config)
    metadata = {
        "format_version": FORMAT_VERSION,
        "name": options.name,
        "version": time.strftime("%Y.%m.%d"),
        "backbone": spec.name,
        "pooling": spec.pooling,
        "preprocessing": {
            "image_size": spec.image_size if options.mode == "probe" else spec.native_size,
            "resize": "squish",
            "scale": "(pixel - 127) / 128",
            "channels": "RGB",
        },
        "tta": options.tta,
        "temperature": temperature,
        "threshold": threshold,
        "calibrated_on": calibration_note,
        "abstain_label": ABSTAIN_LABEL,
        "training_counts": {label: counts.get(label, 0) for label in labels},
        "abstain_training_count": counts.get(ABSTAIN_LABEL, 0),
        "split": {
            "seed": config.seed,
            "val_fraction": config.val_fraction,
            "train_images": len(train_idx),
            "val_images": len(val_idx),
            "train_hash": _data_hash(train_records),
            "val_hash": _data_hash([records[i] for i in val_idx]),
        },
        "options": asdict(options),
        "training_seconds": round(time.perf_counter() - started, 1),
        "metrics": {},
    }
    (out / LABELS_FILE).write_text(json.dumps(labels, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / METADATA_FILE).write_text(
        json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    split_ids = {
        "train": sorted(r.sha256 for r in train_records),
        "val": sorted(records[i].sha256 for i in val_idx),
    }
    (out / SPLIT_FILE).write_text(json.dumps(split_ids) + "\n", encoding="utf-8")
    return TrainResult(out, metadata)
