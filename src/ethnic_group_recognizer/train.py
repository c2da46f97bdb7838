"""Training: a linear probe on frozen embeddings (default) or full fine-tuning, then calibration.

Both modes end the same way: temperature scaling and an abstain threshold chosen on held-out
predictions, and a self-contained ONNX model (backbone + head) written with its labels and
metadata. The probe reads embeddings from the cache, so re-training takes seconds.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

# Re-exported until every caller imports them from calibrate (none in src/ does now).
from ethnic_group_recognizer.calibrate import (  # noqa: F401
    AbstainRule,
    abstain_decisions,
    choose_threshold,
    fit_temperature,
    softmax,
)
from ethnic_group_recognizer.config import ABSTAIN_LABEL, Config, check_choice, check_integer, check_number
from ethnic_group_recognizer.conformal import ConformalCalibration, calibrate_sets, smallest_finite_count
from ethnic_group_recognizer.dataset import Dataset, Record, duplicate_groups, group_folds, is_inside, split
from ethnic_group_recognizer.images import load_image
from ethnic_group_recognizer.model import attach_head
from ethnic_group_recognizer.model_dir import (
    MODEL_FILE,
    BackboneInfo,
    Calibration,
    ModelMetadata,
    Provenance,
    write_model_dir,
    write_split,
)
from ethnic_group_recognizer.probe import fit_probe_head, head_logits, unit
from ethnic_group_recognizer.views import View, ViewSet, decode_side, view_set

#: Target coverages also calibrated, for the evaluation's coverage-versus-set-size curve.
CURVE_COVERAGES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
#: Classes with fewer training images than this get augmented copies (probe mode).
SMALL_CLASS_IMAGES = 20


TrainMode = Literal["probe", "finetune"]
ConformalMethod = Literal["aps", "raps"]


@dataclass
class TrainOptions:
    """What to train; defaults are the recipe of the shipped model.

    Checked when made (``ValueError`` with the option's name), so the CLI and the Python API
    refuse the same impossible settings with the same message.
    """

    mode: TrainMode = "probe"
    regularization: float = 0.05  # inverse L2 strength (C) of the logistic head, on standardised features
    augment_copies: int = 8  # augmented copies per image of a small class (probe)
    prototype_weight: float = 0.3  # blend of nearest-class-mean (cosine) logits into the head
    #: The views of a photo averaged before the head, at training and prediction time (views.py):
    #: ``crops`` (photo, mirror, 4 corners and centre at 60 %; 7 views), ``mirror`` (2), ``full`` (1).
    #: None: ``crops`` for the probe, ``mirror`` for fine-tuning (which trains on whole photos).
    views: ViewSet | None = None
    # share of held-out ``other`` photos the threshold must abstain on; None: balance it with accuracy.
    # 0.9: a wrong label misleads a cataloguer more than no label (README, Results)
    abstain_target: float | None = 0.9
    epochs: int = 8  # finetune
    head_epochs: int = 1  # finetune: head warm-up with the backbone frozen, after the probe initialisation
    learning_rate: float = 1e-3  # finetune, head; the backbone gets a tenth
    patience: int = 2  # finetune: early stopping on validation loss
    #: finetune: input side; None: the ImageNet size (224 for Lite0). 320 is the probe's.
    image_size: int | None = None
    name: str = "model"
    #: Target coverage of the conformal prediction sets (docs/PREDICTION_SETS.md), in (0, 1).
    coverage: float = 0.9
    #: How "none of these" is decided (calibrate.py): ``in-scope-share`` compares the best label
    #: with the abstain class, so ambiguity between known groups gives a set, not an abstention.
    abstain_rule: AbstainRule = "in-scope-share"
    conformal_method: ConformalMethod = "aps"
    #: Per-class (Mondrian) set calibration for classes with enough calibration photos.
    mondrian: bool = True
    #: The model card (card.py): its title and one-line description, overriding the card file's;
    #: the card file, when not the dataset's own ``card.toml``. Stored in the card, not in options.
    title: str | None = None
    description: str | None = None
    card_file: str | Path | None = None

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, TrainMode)
        check_number("regularization", self.regularization, 0.0, 1e6, low_open=True)
        check_integer("augment_copies", self.augment_copies, 0, 1000)
        check_number("prototype_weight", self.prototype_weight, 0.0, 1.0)
        if self.views is None:
            self.views = "crops" if self.mode == "probe" else "mirror"
        check_choice("views", self.views, ViewSet)
        if self.mode == "finetune" and self.views == "crops":
            raise ValueError("views 'crops' is for the probe; fine-tuning takes 'mirror' or 'full'")
        if self.abstain_target is not None:
            check_number("abstain_target", self.abstain_target, 0.0, 1.0, high_open=True)
        check_integer("epochs", self.epochs, 1, 10_000)
        check_integer("head_epochs", self.head_epochs, 0, 10_000)
        check_number("learning_rate", self.learning_rate, 0.0, 10.0, low_open=True)
        check_integer("patience", self.patience, 0, 10_000)
        if self.image_size is not None:
            check_integer("image_size", self.image_size, 32, 1024)
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        check_number("coverage", self.coverage, 0.0, 1.0, low_open=True, high_open=True)
        check_choice("abstain_rule", self.abstain_rule, AbstainRule)
        check_choice("conformal_method", self.conformal_method, ConformalMethod)
        if not isinstance(self.mondrian, bool):
            raise ValueError(f"mondrian must be true or false, got {self.mondrian!r}")
        from ethnic_group_recognizer.card import check_overrides  # a leaf module

        check_overrides(self.title, self.description)
        if self.card_file is not None and not isinstance(self.card_file, str | Path):
            raise ValueError(f"card_file must be a path, got {self.card_file!r}")


@dataclass(frozen=True)
class TrainResult:
    """Where the model was written and the typed metadata written with it."""

    out_dir: Path
    model_metadata: ModelMetadata

    @property
    def metadata(self) -> dict:
        """``metadata.json`` as written, as a dict."""
        return self.model_metadata.to_json()


@dataclass
class _Features:
    """Training and prediction rows of the same records (unit features, as the head reads them)."""

    #: (N, d): the unit mean of each photo's unit view features: exactly what the graph computes.
    photo: np.ndarray
    #: (N, d) or None: the same for the mirrored views, a training-only row, for view sets that
    #: hold no mirror (the head then also learns the photo's mirror image).
    mirror: np.ndarray | None
    extra_features: np.ndarray  # augmented copies of small-class photos (full view)
    extra_targets: np.ndarray
    extra_owner: np.ndarray  # index of the record each augmented copy came from


def _view_mean(vectors: np.ndarray) -> np.ndarray:
    """(N, V, d) view embeddings -> (N, d): unit per view, mean, unit again (as attach_head does)."""
    return unit(unit(vectors).mean(axis=1))


def _embed_views(
    dataset: Dataset,
    records: list[Record],
    targets: np.ndarray,
    train_idx: list[int],
    options: TrainOptions,
    config: Config,
) -> _Features:
    from ethnic_group_recognizer.backbone import Embedder, augment

    embedder = Embedder(config.backbone, config)
    paths = [dataset.abspath(r) for r in records]
    views = view_set(options.views or "crops")
    side = decode_side(views, embedder.spec.image_size)

    def embedded(chosen: tuple[View, ...]) -> np.ndarray:
        """(N, d) rows; only the training split is embedded (validation photos are never read here)."""
        vectors = embedder.embed_file_views(
            [paths[i] for i in train_idx], [records[i].sha256 for i in train_idx], chosen, side=side
        )
        rows = np.zeros((len(records), vectors.shape[-1]), np.float32)
        rows[train_idx] = _view_mean(vectors)
        return rows

    photo = embedded(views)
    mirror = None if any(v.mirror for v in views) else embedded(tuple(View(v.box, True) for v in views))
    counts = Counter(targets[train_idx].tolist())
    rng = random.Random(config.seed)
    owners, images = [], []
    for i in train_idx:
        if counts[targets[i]] < SMALL_CLASS_IMAGES:
            image = load_image(paths[i], config, target_side=side)
            for _ in range(options.augment_copies):
                owners.append(i)
                images.append(augment(image, rng))
    extra = unit(embedder.embed_images(images)) if images else np.zeros((0, photo.shape[1]), np.float32)
    owner = np.array(owners, dtype=int)
    return _Features(photo, mirror, extra, targets[owner] if len(owner) else np.zeros(0, int), owner)


def _training_matrix(
    features: _Features, indices: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The photo rows of ``indices`` (and their mirror rows), plus those records' augmented copies."""
    keep = np.isin(features.extra_owner, indices)
    rows = [features.photo[indices]] + ([] if features.mirror is None else [features.mirror[indices]])
    labels = [targets[indices]] * len(rows)
    return (
        np.concatenate([*rows, features.extra_features[keep]]),
        np.concatenate([*labels, features.extra_targets[keep]]),
    )


def _fit_head(
    features: _Features,
    indices: np.ndarray,
    targets: np.ndarray,
    n_outputs: int,
    options: TrainOptions,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The probe head fitted on the training matrix of ``indices`` with the options' recipe."""
    rows, labels = _training_matrix(features, indices, targets)
    return fit_probe_head(
        rows,
        labels,
        n_outputs,
        regularization=options.regularization,
        prototype_weight=options.prototype_weight,
        seed=seed,
    )


def served_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities as the model serves them: softmax of the photo's logits over the temperature.

    The abstain threshold and the sets are calibrated on these, so what is served is what was
    calibrated.
    """
    return softmax(logits / temperature)


def _out_of_fold_logits(
    features: _Features,
    train_idx: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray,
    n_outputs: int,
    options: TrainOptions,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out (N, outputs) logits for the training images from 5 group-aware folds."""
    logits = np.zeros((len(train_idx), n_outputs))
    covered = np.zeros(len(train_idx), bool)
    for fit_part, held_part in group_folds(targets[train_idx], groups[train_idx], 5, seed):
        weights, bias = _fit_head(features, train_idx[fit_part], targets, n_outputs, options, seed)
        logits[held_part] = head_logits(features.photo[train_idx[held_part]], weights, bias)
        covered[held_part] = True
    return logits[covered], targets[train_idx][covered]


def calibrate_prediction_sets(
    probabilities: np.ndarray,
    targets: np.ndarray,
    n_labels: int,
    threshold: float,
    coverage: float,
    options: TrainOptions,
    config: Config,
) -> ConformalCalibration:
    """Conformal sets on the same held-out predictions as the threshold, for the photos it answers.

    Low-data classes get the marginal quantile, not a pooled one (see ``calibrate_sets``). A class
    needs the calibration photos the model's own coverage asks for (9 at 0.9) at every level, so
    the lower levels of the evaluation's curve do not give a class of one photo its own quantile.
    """
    return calibrate_sets(
        probabilities,
        targets,
        coverage,
        options.conformal_method,
        options.mondrian,
        n_labels=n_labels,
        threshold=threshold,
        abstain_rule=options.abstain_rule,
        pool_low_data=False,
        min_class_count=max(smallest_finite_count(coverage), smallest_finite_count(options.coverage)),
        seed=config.seed,
    )


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
    started = time.perf_counter()
    dataset = Dataset.open(dataset_dir, config)
    if is_inside(dataset.root, out_dir):
        raise ValueError(
            f"{out_dir}: the model directory must be outside the dataset {dataset_dir} "
            "(its files would be read as photos, or mixed with a class)"
        )
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
        features = _embed_views(dataset, records, targets, train_idx.tolist(), options, config)
        oof_logits, oof_targets = _out_of_fold_logits(
            features, train_idx, targets, groups, n_outputs, options, config.seed
        )
        weights, bias = _fit_head(features, train_idx, targets, n_outputs, options, config.seed)
        from ethnic_group_recognizer.backbone import backbone_onnx

        backbone_path = backbone_onnx(config.backbone, config)
        calibration_note = "5-fold group-aware out-of-fold predictions on the training split"
    else:
        from ethnic_group_recognizer.finetune import FinetuneOptions, finetune

        recipe = FinetuneOptions(
            epochs=options.epochs,
            head_epochs=options.head_epochs,
            learning_rate=options.learning_rate,
            patience=options.patience,
            tta=options.views == "mirror",
            regularization=options.regularization,
            image_size=options.image_size,
        )
        paths = [dataset.abspath(r) for r in records]
        # Early stopping and calibration need photos the network did not learn from; they come
        # from the training split, so the held-out split stays untouched, as for the probe.
        fit_part, tune_part = group_folds(targets[train_idx], groups[train_idx], 5, config.seed)[0]
        tuned = finetune(
            paths, targets, train_idx[fit_part], train_idx[tune_part], n_outputs, recipe, config, out
        )
        backbone_path, weights, bias = tuned.backbone_path, tuned.weights, tuned.bias
        oof_logits, oof_targets = tuned.val_logits, tuned.val_targets
        calibration_note = (
            "a group-aware fifth of the training split, held out from fine-tuning "
            "(early stopping and calibration)"
        )

    temperature = fit_temperature(oof_logits, oof_targets)
    oof_probabilities = served_probabilities(oof_logits, temperature)
    threshold = choose_threshold(
        oof_probabilities, oof_targets, len(labels), options.abstain_target, options.abstain_rule
    )
    conformal = calibrate_prediction_sets(
        oof_probabilities, oof_targets, len(labels), threshold, options.coverage, options, config
    )
    conformal_curve = tuple(
        calibrate_prediction_sets(
            oof_probabilities, oof_targets, len(labels), threshold, level, options, config
        )
        for level in CURVE_COVERAGES
    )
    attach_head(backbone_path, weights, bias, temperature, out / MODEL_FILE)
    if options.mode == "finetune":
        backbone_path.unlink()  # folded into model.onnx; the fine-tuned backbone is of no use alone

    train_records = [records[i] for i in train_idx]
    counts = Counter(r.label for r in train_records)
    from ethnic_group_recognizer.backbone import spec_for

    spec = spec_for(config.backbone, config)
    metadata = ModelMetadata(
        labels=tuple(labels),
        name=options.name,
        version=time.strftime("%Y.%m.%d"),
        backbone=BackboneInfo(
            name=spec.name,
            image_size=spec.image_size if options.mode == "probe" else options.image_size or spec.native_size,
            pooling=spec.pooling,
        ),
        tta=any(v.mirror for v in view_set(options.views or "crops")),
        views=view_set(options.views or "crops"),
        calibration=Calibration(
            temperature=temperature,
            threshold=threshold,
            calibrated_on=calibration_note,
            abstain_target=options.abstain_target,
            abstain_rule=options.abstain_rule,
        ),
        conformal=conformal,
        conformal_curve=conformal_curve,
        training_counts={label: counts.get(label, 0) for label in labels},
        abstain_training_count=counts.get(ABSTAIN_LABEL, 0),
        provenance=Provenance(
            seed=config.seed,
            val_fraction=config.val_fraction,
            train_images=len(train_idx),
            val_images=len(val_idx),
            train_hash=_data_hash(train_records),
            val_hash=_data_hash([records[i] for i in val_idx]),
            training_seconds=round(time.perf_counter() - started, 1),
        ),
        options=asdict(options),
    )
    from dataclasses import replace

    from ethnic_group_recognizer.card import OPTION_FIELDS, card_from_dataset  # a leaf module

    card = card_from_dataset(
        dataset.root, labels, options.title, options.description, options.card_file, options.name
    )
    kept = {key: value for key, value in metadata.options.items() if key not in OPTION_FIELDS}
    metadata = replace(metadata, card=card, options=kept)
    write_model_dir(out, metadata)
    write_split(out, [r.sha256 for r in train_records], [records[i].sha256 for i in val_idx])
    return TrainResult(out, metadata)
