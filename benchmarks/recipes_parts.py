"""The building blocks ``benchmarks/recipes.py`` measures recipes with, kept apart so the script
stays a short runner: the photo views (crop boxes), the dataset and its split, the cached view
features and how they are computed, the recipe and head descriptions, the head fitting (L-BFGS
probe and torch heads) and a recipe's out-of-fold and held-out logits. Numbers only, never a test.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import shared_dataset

from ethnic_group_recognizer.backbone import (
    Embedder,
    EmbeddingCache,
    augment,
    backbone_onnx,
    onnx_session,
    preprocess,
    spec_for,
)
from ethnic_group_recognizer.calibrate import fit_temperature, softmax
from ethnic_group_recognizer.config import ABSTAIN_LABEL, Config
from ethnic_group_recognizer.dataset import Dataset, duplicate_groups, group_folds, split
from ethnic_group_recognizer.images import load_image
from ethnic_group_recognizer.probe import fit_probe_head, head_logits, unit

CACHE = Path(os.environ.get("RECIPES_CACHE", "/tmp/recipes_cache"))
SMALL_CLASS_IMAGES = 20  # as train.SMALL_CLASS_IMAGES
AUGMENT_COPIES = 8
Box = tuple[float, float, float, float]  # left, top, right, bottom as fractions of the photo


def _grid(side: float, steps: int) -> dict[str, Box]:
    """``steps`` x ``steps`` overlapping crops of ``side`` of each dimension, corners included."""
    offsets = [0.0] if steps == 1 else [i * (1 - side) / (steps - 1) for i in range(steps)]
    return {
        f"g{round(side * 100)}_{r}{c}": (x, y, x + side, y + side)
        for r, y in enumerate(offsets)
        for c, x in enumerate(offsets)
    }


BOXES: dict[str, Box] = {
    "full": (0.0, 0.0, 1.0, 1.0),
    **{
        f"c80_{name}": box
        for name, box in {
            "tl": (0.0, 0.0, 0.8, 0.8),
            "tr": (0.2, 0.0, 1.0, 0.8),
            "bl": (0.0, 0.2, 0.8, 1.0),
            "br": (0.2, 0.2, 1.0, 1.0),
            "cc": (0.1, 0.1, 0.9, 0.9),
        }.items()
    },
    **_grid(0.6, 3),
}
CORNERS80 = ["c80_tl", "c80_tr", "c80_bl", "c80_br"]
GRID60 = [name for name in BOXES if name.startswith("g60_")]
#: Feature computation in stages, most useful first, so a busy machine still yields the key rows.
STAGES: dict[str, tuple[str, list[str]]] = {
    "A": ("lite0", [*CORNERS80, "c80_cc"]),
    "B": ("lite2", ["full"]),
    "C": ("lite0", [f"{v}_m" for v in [*CORNERS80, "c80_cc"]]),
    "D": ("lite2", ["full_m"]),
    "E": ("lite0", GRID60),
}


def crop_view(image, view: str):
    """The named view of a decoded photo: its box cropped, then mirrored for a ``_m`` name."""
    from PIL import ImageOps

    mirror = view.endswith("_m")
    left, top, right, bottom = BOXES[view.removesuffix("_m")]
    width, height = image.size
    crop = image.crop(
        (round(left * width), round(top * height), round(right * width), round(bottom * height))
    )
    return ImageOps.mirror(crop) if mirror else crop


def _cache(backbone: str, view: str) -> EmbeddingCache:
    return EmbeddingCache(CACHE / f"{spec_for(backbone).tag}-{view}.npz")


# -- data ---------------------------------------------------------------------------------
@dataclass
class Data:
    """The records of the reference dataset, their targets, split and duplicate groups."""

    dataset: Dataset
    paths: list[Path]
    hashes: list[str]
    labels: list[str]
    targets: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    groups: np.ndarray

    @property
    def n_labels(self) -> int:
        return len(self.labels)


def load_data(config: Config) -> Data:
    dataset = Dataset.open(shared_dataset(), config)
    records = dataset.usable()
    labels = sorted({r.label for r in records if r.label != ABSTAIN_LABEL})
    index = {label: i for i, label in enumerate(labels)}
    targets = np.array([index.get(r.label, len(labels)) for r in records])
    train_idx, val_idx = (np.array(p, dtype=int) for p in split(records, config.val_fraction, config.seed))
    return Data(
        dataset,
        [dataset.abspath(r) for r in records],
        [r.sha256 for r in records],
        labels,
        targets,
        train_idx,
        val_idx,
        np.array(duplicate_groups(records)),
    )


# -- feature computation ----------------------------------------------------------------------
def compute_stage(data: Data, backbone: str, views: Sequence[str], config: Config) -> None:
    """Features of ``views`` for every unique photo not cached yet, one decode per photo."""
    spec = spec_for(backbone, config)
    session = onnx_session(backbone_onnx(backbone, config), config)
    caches = {view: _cache(backbone, view) for view in views}
    todo: dict[str, Path] = {}
    for path, digest in zip(data.paths, data.hashes, strict=True):
        if any(caches[v].get(digest) is None for v in views):
            todo.setdefault(digest, path)
    print(f"{backbone} {list(views)}: {len(todo)} photos to embed", file=sys.stderr, flush=True)
    started, done = time.perf_counter(), 0
    per_batch = max(1, 16 // len(views))
    items = list(todo.items())
    for start in range(0, len(items), per_batch):
        chunk = items[start : start + per_batch]
        pixels, keys = [], []
        for digest, path in chunk:
            image = load_image(path, config, target_side=spec.image_size)
            for view in views:
                pixels.append(preprocess(crop_view(image, view), spec.image_size))
                keys.append((view, digest))
        vectors = session.run(None, {"pixels": np.stack(pixels)})[0]
        for (view, digest), vector in zip(keys, vectors, strict=True):
            caches[view].put(digest, vector)
        done += len(chunk)
        if done % (per_batch * 10) < per_batch or done == len(items):
            for cache in caches.values():
                cache.save()
            rate = (time.perf_counter() - started) / done
            print(f"  {done}/{len(items)} photos, {rate * 1000:.0f} ms/photo", file=sys.stderr, flush=True)
    for cache in caches.values():
        cache.save()


def compute_augmented(data: Data, config: Config) -> None:
    """The train split's augmented copies of small classes, with train.py's seed and order."""
    path = CACHE / "lite0-augmented.npz"
    if path.exists():
        return
    counts = Counter(data.targets[data.train_idx].tolist())
    rng = random.Random(config.seed)
    owners, images = [], []
    for i in data.train_idx:
        if counts[data.targets[i]] < SMALL_CLASS_IMAGES:
            image = load_image(data.paths[i], config)
            for _ in range(AUGMENT_COPIES):
                owners.append(int(i))
                images.append(augment(image, rng))
    vectors = Embedder("lite0", config).embed_images(images)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, owners=np.array(owners), vectors=vectors)


def lite0_full_views(data: Data, config: Config) -> None:
    """Copy the package's cached full / mirrored Lite0 features (computing any missing)."""
    embedder = Embedder("lite0", config)
    for view, mirror in (("full", False), ("full_m", True)):
        cache = _cache("lite0", view)
        vectors = embedder.embed_files(data.paths, data.hashes, mirror=mirror, show_progress=False)
        for digest, vector in zip(data.hashes, vectors, strict=True):
            cache.put(digest, vector)
        cache.save()


# -- features of a variant ----------------------------------------------------------------------
class Features:
    """Unit-length view features per record (row order = ``data``), loaded once from the caches."""

    def __init__(self, data: Data):
        self.data = data
        self._views: dict[tuple[str, str], np.ndarray | None] = {}
        augmented = CACHE / "lite0-augmented.npz"
        with np.load(augmented) as stored:
            self.aug_owner, self.aug_vectors = stored["owners"], unit(stored["vectors"])

    def view(self, backbone: str, view: str) -> np.ndarray | None:
        """(N, d) unit features of one view, or None while any photo still lacks it."""
        key = (backbone, view)
        if key not in self._views:
            cache = _cache(backbone, view)
            vectors = [cache.get(digest) for digest in self.data.hashes]
            self._views[key] = None if any(v is None for v in vectors) else unit(np.stack(vectors))
        return self._views[key]

    def mean(self, backbone: str, views: Sequence[str]) -> np.ndarray | None:
        """Features averaged over views before the head (unit mean of unit features)."""
        parts = [self.view(backbone, v) for v in views]
        if any(p is None for p in parts):
            return None
        return unit(np.mean(parts, axis=0))

    def concat(self, *parts: np.ndarray | None) -> np.ndarray | None:
        """Backbones side by side (each unit, then the whole unit again)."""
        if any(p is None for p in parts):
            return None
        return unit(np.concatenate(parts, axis=1))


@dataclass
class Head:
    """How the head is fitted on training rows (standardised unit features, as the probe does)."""

    kind: str = "lr"  # lr (the shipped probe) | linear | mlp | cosine (torch, soft targets)
    regularization: float = 0.05  # C of the logistic regression; torch heads use the equivalent L2
    prototype_weight: float = 0.3
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(a, a) mixup of training rows (torch heads)
    small_mix: int = 0  # synthetic rows per small-class photo: convex mixes of two same-class photos
    hidden: int = 512
    dropout: float = 0.5
    epochs: int = 300


@dataclass
class Variant:
    """A recipe: training rows and prediction views (logits averaged over the prediction matrices)."""

    name: str
    train: Callable[[Features], list[np.ndarray | None]]
    predict: Callable[[Features], list[np.ndarray | None]]
    views: dict[str, int]  # views per photo at prediction time, per backbone (the cost)
    head: Head = field(default_factory=Head)
    augment: bool = True  # the small classes' augmented copies (Lite0 single views) as extra rows
    members: list[Variant] = field(default_factory=list)  # probability ensemble of these instead


def _small_mix_rows(x: np.ndarray, y: np.ndarray, per_photo: int, rng: np.random.Generator):
    counts = Counter(y.tolist())
    rows, labels = [], []
    for cls, n in counts.items():
        if n >= SMALL_CLASS_IMAGES * 2 or n < 2:
            continue
        members = x[y == cls]
        for _ in range(per_photo * n):
            a, b = rng.choice(len(members), 2, replace=False)
            lam = rng.uniform(0.2, 0.8)
            rows.append(lam * members[a] + (1 - lam) * members[b])
            labels.append(cls)
    if not rows:
        return x, y
    return np.concatenate([x, unit(np.array(rows))]), np.concatenate([y, labels])


#: Warm start for the L-BFGS probe: the last solution per (feature width, classes). The objective
#: is convex, so the start changes only how many iterations the solver needs, not where it ends.
_WARM: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def fit_probe_head_lbfgs(
    features: np.ndarray, targets: np.ndarray, n_outputs: int, regularization: float, prototype_weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """``probe.fit_probe_head`` with the same objective solved by torch's L-BFGS.

    scikit-learn's solver took about a minute a fit on the busy 2-core machine; this one reaches
    the same optimum (C * sum of cross-entropy + |W|^2 / 2, intercept free) in seconds, and folds
    the standardisation and prototypes in the same way.
    """
    import torch

    from ethnic_group_recognizer.probe import NO_ABSTAIN_BIAS, class_prototypes

    unit_features = unit(features)
    mean, std = unit_features.mean(axis=0), unit_features.std(axis=0) + 1e-6
    classes = np.unique(targets)
    inputs = torch.tensor((unit_features - mean) / std, dtype=torch.float32)
    labels = torch.tensor(np.searchsorted(classes, targets))
    warm_key = (inputs.shape[1], tuple(classes.tolist()), regularization)
    start = _WARM.get(warm_key)
    coef = torch.tensor(start[0]) if start else torch.zeros(len(classes), inputs.shape[1])
    intercept = torch.tensor(start[1]) if start else torch.zeros(len(classes))
    coef.requires_grad_(True)
    intercept.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [coef, intercept],
        lr=1,
        max_iter=500,
        # scikit-learn's tol 1e-4 is on the gradient of the per-photo mean; ours is the sum
        tolerance_grad=1e-4 * len(inputs),
        tolerance_change=1e-9,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        logits = inputs @ coef.T + intercept
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum") + (coef**2).sum() / (
            2 * regularization
        )
        loss.backward()
        return loss

    optimizer.step(closure)
    coef_np, intercept_np = coef.detach().numpy(), intercept.detach().numpy()
    _WARM[warm_key] = (coef_np.copy(), intercept_np.copy())
    weights = np.zeros((n_outputs, unit_features.shape[1]))
    bias = np.full(n_outputs, NO_ABSTAIN_BIAS)
    for row, cls in enumerate(classes):
        weights[cls] = coef_np[row] / std
        bias[cls] = intercept_np[row] - coef_np[row] @ (mean / std)
    if prototype_weight > 0:
        prototypes = class_prototypes(unit_features, targets, n_outputs)
        present = np.isin(np.arange(n_outputs), classes)
        weights[present] = (1 - prototype_weight) * weights[present] + prototype_weight * prototypes[present]
        bias[present] = (1 - prototype_weight) * bias[present]
    return weights, bias


def fit_head(head: Head, x: np.ndarray, y: np.ndarray, n_outputs: int, seed: int) -> Callable:
    """A fitted head: a function from (M, d) features to (M, n_outputs) logits."""
    rng = np.random.default_rng(seed)
    if head.small_mix:
        x, y = _small_mix_rows(x, y, head.small_mix, rng)
    if head.kind == "sklearn":
        weights, bias = fit_probe_head(
            x,
            y,
            n_outputs,
            regularization=head.regularization,
            prototype_weight=head.prototype_weight,
            seed=seed,
        )
        return lambda f: head_logits(f, weights, bias)
    if head.kind == "lr":
        weights, bias = fit_probe_head_lbfgs(x, y, n_outputs, head.regularization, head.prototype_weight)
        return lambda f: head_logits(f, weights, bias)
    import torch

    torch.manual_seed(seed)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    inputs = torch.tensor((x - mean) / std, dtype=torch.float32)
    targets = torch.nn.functional.one_hot(torch.tensor(y), n_outputs).float()
    if head.label_smoothing:
        present = torch.zeros(n_outputs)
        present[np.unique(y)] = 1
        targets = (1 - head.label_smoothing) * targets + head.label_smoothing * present / present.sum()
    d = x.shape[1]
    if head.kind == "mlp":
        net = torch.nn.Sequential(
            torch.nn.Dropout(0.2),
            torch.nn.Linear(d, head.hidden),
            torch.nn.GELU(),
            torch.nn.Dropout(head.dropout),
            torch.nn.Linear(head.hidden, n_outputs),
        )
    elif head.kind == "cosine":

        class Cosine(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.randn(n_outputs, d) * 0.01)
                self.scale = torch.nn.Parameter(torch.tensor(10.0))

            def forward(self, z):
                return (
                    self.scale
                    * torch.nn.functional.normalize(z, dim=1)
                    @ torch.nn.functional.normalize(self.weight, dim=1).T
                )

        net = Cosine()
    else:
        net = torch.nn.Linear(d, n_outputs)
    # sklearn's objective C * sum(CE) + |w|^2 / 2 is mean(CE) + |w|^2 / (2 C n)
    l2 = 1.0 / (head.regularization * len(x))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(head.epochs):
        batch_in, batch_target = inputs, targets
        if head.mixup:
            lam = float(rng.beta(head.mixup, head.mixup))
            perm = torch.tensor(rng.permutation(len(x)))
            batch_in = lam * inputs + (1 - lam) * inputs[perm]
            batch_target = lam * targets + (1 - lam) * targets[perm]
        net.train()
        optimizer.zero_grad()
        loss = -(batch_target * torch.log_softmax(net(batch_in), dim=1)).sum(dim=1).mean()
        weights = [p for name, p in net.named_parameters() if "weight" in name]
        loss = loss + l2 / 2 * sum((w**2).sum() for w in weights)
        loss.backward()
        optimizer.step()
    net.eval()
    prototypes = np.zeros((n_outputs, d))
    for cls in np.unique(y):
        prototypes[cls] = unit(x[y == cls].mean(axis=0, keepdims=True))[0] * 10.0
    alpha = head.prototype_weight

    def predict(f: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = net(torch.tensor((f - mean) / std, dtype=torch.float32)).numpy().astype(float)
        return (1 - alpha) * logits + alpha * (unit(f) @ prototypes.T) if alpha else logits

    return predict


# -- scoring ----------------------------------------------------------------------------------
@dataclass
class Scores:
    """Out-of-fold logits of the training split (with their fold) and held-out logits."""

    oof: np.ndarray
    oof_targets: np.ndarray
    fold: np.ndarray
    val: np.ndarray
    val_targets: np.ndarray
    seconds: float


def _scores_file(variant: Variant) -> Path:
    slug = "".join(c if c.isalnum() else "_" for c in variant.name)
    return CACHE / "scores" / f"{slug}.npz"


def score_variant(variant: Variant, features: Features, seed: int = 0, fit: bool = True) -> Scores | None:
    """Out-of-fold and held-out logits of a variant, cached in ``$RECIPES_CACHE/scores``.

    None when a view is not computed yet, or (``fit`` off) when the variant was never fitted.
    """
    path = _scores_file(variant)
    if path.exists():
        with np.load(path) as stored:
            return Scores(
                **{k: stored[k] for k in stored.files if k != "seconds"}, seconds=float(stored["seconds"])
            )
    if not fit:
        return None
    scores = _fit_variant(variant, features, seed)
    if scores is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            **{k: getattr(scores, k) for k in ("oof", "oof_targets", "fold", "val", "val_targets")},
            seconds=scores.seconds,
        )
    return scores


def _fit_variant(variant: Variant, features: Features, seed: int) -> Scores | None:
    data = features.data
    started = time.perf_counter()
    if variant.members:
        parts = [score_variant(m, features, seed, fit=False) for m in variant.members]
        if any(p is None for p in parts):
            return None

        def mixed(name: str) -> np.ndarray:
            probabilities = []
            for part in parts:
                temperature = fit_temperature(part.oof, part.oof_targets)
                probabilities.append(softmax(getattr(part, name) / temperature))
            return np.log(np.mean(probabilities, axis=0) + 1e-12)

        first = parts[0]
        return Scores(
            mixed("oof"),
            first.oof_targets,
            first.fold,
            mixed("val"),
            first.val_targets,
            sum(p.seconds for p in parts),
        )
    train_mats, predict_mats = variant.train(features), variant.predict(features)
    if any(m is None for m in [*train_mats, *predict_mats]):
        return None
    n_outputs = data.n_labels + 1
    targets = data.targets

    def rows(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = [m[indices] for m in train_mats]
        y = [targets[indices]] * len(train_mats)
        if variant.augment:
            keep = np.isin(features.aug_owner, indices)
            x.append(features.aug_vectors[keep])
            y.append(targets[features.aug_owner[keep]])
        return np.concatenate(x), np.concatenate(y)

    def logits(predictor: Callable, indices: np.ndarray) -> np.ndarray:
        return np.mean([predictor(m[indices]) for m in predict_mats], axis=0)

    train_idx = data.train_idx
    final = fit_head(variant.head, *rows(train_idx), n_outputs, seed)  # first: it warm-starts the folds
    oof = np.zeros((len(train_idx), n_outputs))
    fold = np.zeros(len(train_idx), int)
    for k, (fit_part, held_part) in enumerate(
        group_folds(targets[train_idx], data.groups[train_idx], 5, seed)
    ):
        predictor = fit_head(variant.head, *rows(train_idx[fit_part]), n_outputs, seed)
        oof[held_part] = logits(predictor, train_idx[held_part])
        fold[held_part] = k
    predictor = final
    return Scores(
        oof,
        targets[train_idx],
        fold,
        logits(predictor, data.val_idx),
        targets[data.val_idx],
        time.perf_counter() - started,
    )
