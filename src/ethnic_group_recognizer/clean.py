"""Find what is wrong with a dataset, and fix it without ever losing an image.

Why: web-scraped training data holds duplicates, drawings, stamps, shop photos and wrong labels.
:func:`find_issues` runs automatic checks, each giving a reason and a score, and returns one
review queue, most suspicious first. Fixes are file moves: a removal moves the file to
``DATASET/.quarantine/``, a relabel moves it to another class folder. Every action is written
to an append-only log (``DATASET/.clean/actions.jsonl``) *before* any file moves, with the
sha256 of each file and the manifest records before and after, so that :func:`recover` can
roll back an action a crash interrupted and :func:`undo` can restore every byte.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ethnic_group_recognizer.config import ABSTAIN_LABEL, Config
from ethnic_group_recognizer.dataset import (
    NEAR_DUPLICATE_BITS,
    QUARANTINE_DIR,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_QUARANTINED,
    Dataset,
    Record,
    append_jsonl,
    group_folds,
    near_duplicate_pairs,
    read_jsonl,
    write_manifest,
)
from ethnic_group_recognizer.images import is_image_path, sha256_file

CLEAN_DIR = ".clean"
ACTIONS_FILE = "actions.jsonl"
QUEUE_FILE = "queue.jsonl"

#: Every check, in the order the report lists them.
CHECKS: tuple[str, ...] = (
    "unreadable",
    "tiny",
    "exact_duplicate",
    "near_duplicate",
    "cross_label",
    "mislabel",
    "other_like",
    "outlier",
    "not_photo",
)
#: Checks whose fix needs no reviewer: a file that cannot be decoded, a byte-identical copy.
SAFE_CHECKS = frozenset({"unreadable", "exact_duplicate"})
ACTION_KINDS = ("remove", "relabel", "keep", "auto", "undo")


class CleanError(ValueError):
    """An action that cannot be applied, with a message a person can act on."""


# -- finding -----------------------------------------------------------------------------------
@dataclass
class CleanOptions:
    """Thresholds of the checks; the defaults were tuned on the shared scraped data."""

    tiny_side: int = 100  # short side below this many pixels is flagged (not an error yet)
    near_bits: int = NEAR_DUPLICATE_BITS  # perceptual-hash bits (of 64) that may differ
    embeddings: bool = True  # False: only the file and hash checks (no backbone, seconds)
    folds: int = 5  # out-of-fold predictions for the confident-learning check
    pca_components: int = 128
    regularization: float = 0.02  # C of the logistic regression (whitened PCA features), at 1,000 images
    mislabel_confidence: float = 0.5  # the class the model prefers must be at least this likely
    other_threshold: float = 0.6  # P(other) above this flags "looks like the other class"
    outlier_fraction: float = (
        0.8  # flag if farther from its class centre than this share of other groups' images
    )
    min_class_images: int = 5  # smaller classes get no model-based checks
    # "Not a photograph": pixel tests (stamp perforation, flat-colour graphics) on every image, and
    # with embeddings on, the backbone's own ImageNet classifier ('comic book', i.e. drawn pictures).
    not_photo: bool = True
    drawing_probability: float = 0.1  # P('comic book') that flags a picture with a busy border ...
    plain_border_decades: float = 1.0  # ... and a plain border lowers that bar up to 10x (to 1 %)
    graphic_flat: float = 0.6  # a flat-colour graphic: this share of its subject in flat areas ...
    graphic_colours: float = 0.7  # ... and this share in its 16 commonest colours
    seed: int = 0


@dataclass
class Flag:
    """One flagged image: why, how suspicious, and what a reviewer would probably do."""

    path: str
    label: str
    sha256: str
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, float] = field(default_factory=dict)
    score: float = 0.0
    suggestion: str | None = None  # "remove" or "relabel:<label>"
    group: list[str] = field(default_factory=list)  # other members of its duplicate group

    @property
    def safe(self) -> bool:
        """True when ``--auto`` quarantines it: unreadable, or an extra byte-identical copy (the
        copy that stays is still checked and queued on its own)."""
        return bool(set(self.checks) & SAFE_CHECKS)

    def public(self) -> dict:
        """The ``--jsonl`` shape: path, label, reasons, score."""
        return {
            "path": self.path,
            "label": self.label,
            "reasons": self.reasons,
            "score": round(self.score, 4),
        }


@dataclass
class CleanReport:
    flags: list[Flag]
    images: int
    counts: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)  # check -> why it did not run
    reviewed: int = 0  # flags dropped because a reviewer already kept the image

    def to_review(self) -> list[Flag]:
        return [f for f in self.flags if not f.safe]


class _Flags:
    """Collects (path, check, score, reason) and merges them into one :class:`Flag` per image."""

    def __init__(self, records: dict[str, Record]):
        self.records = records
        self.by_path: dict[str, Flag] = {}

    def add(self, path: str, check: str, score: float, reason: str, suggestion: str | None = None) -> Flag:
        record = self.records[path]
        flag = self.by_path.setdefault(path, Flag(path, record.label, record.sha256))
        score = float(min(max(score, 0.0), 1.0))
        if check in flag.checks:
            flag.checks[check] = max(flag.checks[check], score)
            return flag
        flag.checks[check] = score
        flag.reasons.append(reason)
        if suggestion and (flag.suggestion is None or suggestion == "remove"):
            flag.suggestion = suggestion
        return flag

    def result(self) -> list[Flag]:
        for flag in self.by_path.values():
            # Independent pieces of evidence combine: 1 - prod(1 - s).
            flag.score = 1.0 - float(np.prod([1.0 - s for s in flag.checks.values()]))
        return sorted(self.by_path.values(), key=lambda f: (-f.score, f.path))


def _union_find(n: int, edges: Iterable[tuple[int, int]]) -> list[int]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        parent[find(a)] = find(b)
    return [find(i) for i in range(n)]


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _pixels(record: Record) -> int:
    return (record.width or 0) * (record.height or 0)


def _file_checks(records: list[Record], flags: _Flags, options: CleanOptions) -> None:
    """Unreadable, tiny, exact and near duplicates, and the same photo under two labels."""
    for record in records:
        if record.status == STATUS_ERROR:
            flags.add(record.path, "unreadable", 1.0, f"unreadable: {record.error}", "remove")
        elif min(record.width or 0, record.height or 0) < options.tiny_side:
            side = min(record.width or 0, record.height or 0)
            flags.add(
                record.path,
                "tiny",
                0.3 + 0.4 * (1 - side / options.tiny_side),
                f"tiny: {record.width}x{record.height} px",
                "remove",
            )
    usable = [r for r in records if r.status == STATUS_OK]
    # Exact copies first: the oldest file of each (label, sha256) is the one kept.
    by_content: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in sorted(usable, key=lambda r: (r.mtime, r.path)):
        by_content[(record.label, record.sha256)].append(record)
    for copies in by_content.values():
        for extra in copies[1:]:
            flag = flags.add(
                extra.path, "exact_duplicate", 1.0, f"exact duplicate of {copies[0].path}", "remove"
            )
            flag.group = [r.path for r in copies if r.path != extra.path]
    # Groups of exact or near copies, across labels (union-find over sha256 and phash pairs).
    edges = list((a, b) for a, b, _ in near_duplicate_pairs(usable, options.near_bits))
    first_by_sha: dict[str, int] = {}
    for i, record in enumerate(usable):
        if record.sha256 in first_by_sha:
            edges.append((i, first_by_sha[record.sha256]))
        first_by_sha.setdefault(record.sha256, i)
    members: dict[int, list[int]] = defaultdict(list)
    for i, root in enumerate(_union_find(len(usable), edges)):
        members[root].append(i)
    for indices in members.values():
        if len(indices) < 2:
            continue
        group = [usable[i] for i in indices]
        labels = sorted({r.label for r in group})
        if len(labels) > 1:
            for record in group:
                others = [r for r in group if r.label != record.label]
                where = ", ".join(sorted({r.label for r in others}))
                flags.add(
                    record.path,
                    "cross_label",
                    0.9,
                    f"same photo also under {where} ({others[0].path})",
                )
        for label in labels:
            same = [r for r in group if r.label == label]
            if len({r.sha256 for r in same}) < 2:
                continue
            keeper = min(same, key=lambda r: (-_pixels(r), r.path))  # the largest copy stays
            paths = [r.path for r in same]
            for record in same:
                if record.sha256 == keeper.sha256:
                    continue
                plain = _hamming(record.phash or "0", keeper.phash or "0")
                mirrored = _hamming(record.phash or "0", keeper.phash_mirror or "0")
                bits = min(plain, mirrored)
                how = "mirrored, " if mirrored < plain else ""
                flag = flags.add(
                    record.path,
                    "near_duplicate",
                    0.45 + 0.1 * (1 - bits / (options.near_bits + 1)),
                    f"near duplicate of {keeper.path} ({how}{bits} of 64 hash bits differ)",
                    "remove",
                )
                flag.group = [p for p in paths if p != record.path]


def _out_of_fold_probabilities(
    features: np.ndarray, targets: np.ndarray, groups: np.ndarray, options: CleanOptions
) -> np.ndarray:
    """Held-out class probabilities for every image (group-aware folds, so copies never leak)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    n_classes = int(targets.max()) + 1
    probabilities = np.zeros((len(targets), n_classes))
    for fit, held in group_folds(targets, groups, options.folds, options.seed):
        # Few images cannot support many whitened directions (noise would be blown up), and the
        # penalty is set per 1,000 images so that it means the same on a small dataset.
        components = max(2, min(options.pca_components, len(fit) // 8, features.shape[1]))
        pca = PCA(components, whiten=True, random_state=options.seed).fit(features[fit])
        model = LogisticRegression(C=options.regularization * 1000 / len(fit), max_iter=2000)
        model.fit(pca.transform(features[fit]), targets[fit])
        probabilities[np.ix_(held, model.classes_)] = model.predict_proba(pca.transform(features[held]))
    return probabilities


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _other_files(other_dirs: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for folder in other_dirs:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--other folder not found: {folder}")
        files.extend(p for p in sorted(Path(folder).rglob("*")) if p.is_file() and is_image_path(p))
    return files


def _embedding_checks(
    dataset: Dataset,
    records: list[Record],
    flags: _Flags,
    options: CleanOptions,
    other_dirs: Sequence[Path],
    embedder,
    report: dict,
    show_progress: bool,
) -> dict[str, float]:
    """Likely mislabels (confident learning), 'looks like other', and class outliers.

    Returns the backbone's drawing probability of every usable image by sha256, for the
    'not a photograph' check (empty when that check is off or the classifier is unavailable).
    """
    from ethnic_group_recognizer.images import ImageError, load_image

    usable = [r for r in records if r.status == STATUS_OK]
    # One representative per (label, content): copies would vote twice.
    reps: dict[tuple[str, str], Record] = {}
    for record in sorted(usable, key=lambda r: r.path):
        reps.setdefault((record.label, record.sha256), record)
    reps_list = list(reps.values())
    extra_other: list[tuple[Path, str]] = []
    for path in _other_files(other_dirs):
        try:
            load_image(path, dataset.config)
        except ImageError:
            continue
        extra_other.append((path, sha256_file(path)))
    sizes = Counter(r.label for r in reps_list)
    sizes[ABSTAIN_LABEL] += len(extra_other)
    classes = sorted(label for label, n in sizes.items() if n >= max(options.min_class_images, options.folds))
    enough = len([c for c in classes if c != ABSTAIN_LABEL]) >= 2
    if not enough:
        for check in ("mislabel", "other_like", "outlier"):
            report[check] = f"needs at least 2 classes with {options.min_class_images}+ distinct images"
        if not options.not_photo or not reps_list:
            return {}
        extra_other = []  # only the drawing score runs: it reads the dataset's own images
    if embedder is None:
        from ethnic_group_recognizer.backbone import Embedder

        try:
            embedder = Embedder(dataset.config.backbone, dataset.config)
        except RuntimeError as error:
            if enough:
                raise
            report["not_photo"] = f"{error}; only the pixel tests ran, not the drawing score"
            return {}
    # Every representative is embedded (the drawing score wants them all); the model-based
    # checks use the classes with enough images, plus the extra 'other' files.
    paths = [dataset.abspath(r) for r in reps_list] + [p for p, _ in extra_other]
    hashes = [r.sha256 for r in reps_list] + [h for _, h in extra_other]
    raw = embedder.embed_files(paths, hashes, show_progress=show_progress)
    drawing: dict[str, float] = {}
    if options.not_photo:
        n = len(reps_list)
        probabilities = _drawing_probabilities(
            embedder, paths[:n], hashes[:n], raw[:n], dataset.config, report, show_progress
        )
        if probabilities is not None:
            drawing = {r.sha256: float(p) for r, p in zip(reps_list, probabilities, strict=True)}
    if not enough:
        return drawing
    chosen = np.array([i for i, r in enumerate(reps_list) if r.label in classes], dtype=int)
    modelled = [reps_list[i] for i in chosen]
    vectors = _unit(np.concatenate([raw[chosen], raw[len(reps_list) :]]))
    labels = [r.label for r in modelled] + [ABSTAIN_LABEL] * len(extra_other)
    index = {label: i for i, label in enumerate(classes)}
    targets = np.array([index[label] for label in labels])
    # Copies and near copies share a fold group; extra 'other' files are their own groups.
    groups = np.array(_union_find(len(modelled), ((a, b) for a, b, _ in near_duplicate_pairs(modelled))))
    groups = np.concatenate([groups, len(modelled) + np.arange(len(extra_other))])
    has_other = ABSTAIN_LABEL in index
    if not has_other:
        report["other_like"] = "no 'other' images: give --other DIR or an 'other' class folder"

    copies: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in usable:
        copies[(record.label, record.sha256)].append(record.path)

    def flag_all(record: Record, check: str, score: float, reason: str, suggestion: str | None) -> None:
        for path in copies[(record.label, record.sha256)]:
            flags.add(path, check, score, reason, suggestion)

    probabilities = _out_of_fold_probabilities(vectors, targets, groups, options)
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        report["mislabel"] = "needs cleanlab: pip install 'ethnic-group-recognizer[collect]'"
        issues = np.zeros(len(targets), bool)
    else:
        issues = find_label_issues(targets, probabilities, filter_by="prune_by_noise_rate", n_jobs=1)
    other = index.get(ABSTAIN_LABEL)
    for i, record in enumerate(modelled):
        if record.label == ABSTAIN_LABEL:
            continue
        row = probabilities[i]
        given = row[targets[i]]
        if has_other and row[other] >= options.other_threshold:
            flag_all(
                record,
                "other_like",
                float(row[other]),
                f"looks like the 'other' class ({row[other]:.0%}): not this group's dress?",
                "remove",
            )
        candidates = row.copy()
        if other is not None:
            candidates[other] = -1.0  # 'looks like other' is its own check
        best = int(np.argmax(candidates))
        if issues[i] and best != targets[i] and row[best] >= options.mislabel_confidence:
            flag_all(
                record,
                "mislabel",
                float(row[best] - given),
                f"likely mislabelled: looks like {classes[best]} ({row[best]:.0%}), {record.label} {given:.0%}",
                f"relabel:{classes[best]}",
            )
    # Outliers: farther from the centre of its own class than most images of the other groups
    # are. A scale-free test: no spread estimate, which is unreliable for a small class.
    for label in classes:
        if label == ABSTAIN_LABEL:
            continue
        members = np.array([i for i, r in enumerate(modelled) if r.label == label])
        # Compared with the other groups only: 'other' photos may be anything, however far.
        outside = np.array(
            [i for i, other_label in enumerate(labels) if other_label not in (label, ABSTAIN_LABEL)]
        )
        centre = _unit(np.median(vectors[members], axis=0, keepdims=True))[0]  # robust to the outliers
        distance = 1.0 - vectors @ centre
        foreign = np.sort(distance[outside])
        for i in members:
            closer = float(np.searchsorted(foreign, distance[i])) / max(len(foreign), 1)
            if closer >= options.outlier_fraction:
                # 0.2..0.8: being far from one's class is weaker evidence than a copy under two labels.
                strength = (closer - options.outlier_fraction) / max(1e-9, 1 - options.outlier_fraction)
                flag_all(
                    modelled[i],
                    "outlier",
                    0.2 + 0.6 * strength,
                    f"outlier: farther from the other {label} images than {closer:.0%} of other groups' images",
                    "remove",
                )
    return drawing


# -- "not a photograph": drawings, prints, stamps ------------------------------------------------
#: ImageNet-1k's "comic book": the class the backbone's own classifier gives drawn pictures.
DRAWING_CLASS = 917
#: Pictures are measured at this size (long side): resolution-independent, and fast to decode.
PICTURE_SIDE = 384
_BORDER_TOLERANCE = 24  # a border pixel this close (0-255, every channel) to its median is "plain"
_FLAT_RANGE = 3  # a pixel whose 3x3 neighbourhood spans at most this much brightness is flat
_PERFORATION_PEAK = 0.5  # share of a border row's variation in one period, per side


@dataclass
class PictureStats:
    """Pixel facts that tell a drawing, print or stamp from a photograph (see :func:`picture_stats`)."""

    plain_border: float  # share of the outermost pixels that have one colour (backdrop, paper)
    subject: float  # share of pixels not in the backdrop (the flat areas that reach the border)
    flat: float  # share of the subject in flat areas: fills, not texture or camera noise
    colours: float  # share of the subject covered by its 16 commonest colours (5 bits a channel)
    perforation: tuple[int, float] | None = None  # (sides, tooth spacing in px) of a stamp's edge


def _perforation(background: np.ndarray) -> tuple[int, float] | None:
    """(sides, tooth spacing in px) when the edge of ``background`` (True: the colour round the
    picture) is toothed evenly, like a stamp's; None otherwise.

    A stamp's perforation, seen against a backdrop, makes the rows just inside the edge
    alternate between backdrop and paper at one spacing; the Fourier spectrum of such a row has
    one strong peak. At least three sides must show it, with the same spacing (within 15 %).
    """
    spacings = []
    for mask in (background, background[::-1], background.T, background.T[::-1]):
        depth, length = mask.shape
        rows = mask[: max(4, depth // 8), int(length * 0.1) : int(length * 0.9)]  # corners round off
        frequencies = np.fft.rfftfreq(rows.shape[1])
        band = (frequencies >= 1 / 40) & (frequencies <= 1 / 5)  # a tooth every 5 to 40 px
        best_peak, best_spacing = 0.0, 0.0
        for row in rows:
            share = float(row.mean())
            if not band.any() or not 0.2 <= share <= 0.8:
                continue
            power = np.abs(np.fft.rfft(row - share)) ** 2
            k = int(np.argmax(np.where(band, power, 0.0)))
            peak = float(power[max(k - 1, 1) : k + 2].sum() / max(power[1:].sum(), 1e-12))
            if peak > best_peak:
                best_peak, best_spacing = peak, float(1 / frequencies[k])
        if best_peak >= _PERFORATION_PEAK:
            spacings.append(best_spacing)
    if len(spacings) < 3:
        return None
    middle = float(np.median(spacings))
    agree = [s for s in spacings if abs(s - middle) <= 0.15 * middle]
    return (len(agree), middle) if len(agree) >= 3 else None


def _spread3(pixels: np.ndarray) -> np.ndarray:
    """Per pixel, the largest max - min over its 3x3 neighbourhood in any channel (separable)."""
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    high = np.maximum(np.maximum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    high = np.maximum(np.maximum(high[:-2], high[1:-1]), high[2:])
    low = np.minimum(np.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    low = np.minimum(np.minimum(low[:-2], low[1:-1]), low[2:])
    return (high - low).max(axis=2)


def picture_stats(image: Image.Image) -> PictureStats:
    """Measure a picture (any size; it is scaled to :data:`PICTURE_SIDE` first).

    The backdrop (flat areas connected to the border: a studio wall, the sky, the paper) is
    left out, so that flatness and colours describe the subject: a drawing's fills are flat and
    few-coloured, a photographed subject has texture, shading and noise.
    """
    from scipy import ndimage

    image = image.convert("RGB")
    if max(image.size) > PICTURE_SIDE:
        image = image.copy()
        image.thumbnail((PICTURE_SIDE, PICTURE_SIDE), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.int16)
    frame = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    colour = np.median(frame, axis=0)
    off_border = np.abs(frame - colour).max(axis=1)
    plain = float((off_border <= _BORDER_TOLERANCE).mean())
    # Brightness only: JPEG blurs colour (chroma subsampling), which would make fills look textured.
    flat_mask = _spread3(np.asarray(image.convert("L"), np.int16)[..., None]) <= _FLAT_RANGE
    regions, _ = ndimage.label(flat_mask)
    touching = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    subject = ~np.isin(regions, touching[touching > 0])
    flat, colours = 0.0, 0.0
    if subject.sum() >= 0.05 * subject.size:  # an almost empty page says nothing
        flat = float(flat_mask[subject].mean())
        quantised = (pixels[..., 0] >> 3) * 1024 + (pixels[..., 1] >> 3) * 32 + (pixels[..., 2] >> 3)
        counts = np.bincount(quantised[subject], minlength=32768)
        colours = float(np.sort(counts)[-16:].sum() / subject.sum())
    perforation = None
    if (off_border <= 40).mean() >= 0.9:  # a backdrop all round: look for a toothed edge
        perforation = _perforation(np.abs(pixels - colour).max(axis=2) <= 60)
    return PictureStats(plain, float(subject.mean()), flat, colours, perforation)


def not_photo_evidence(
    stats: PictureStats, drawing: float | None = None, options: CleanOptions | None = None
) -> list[tuple[float, str]]:
    """Each reason to think a picture is no photograph, as (score 0-1, text a person can read).

    ``drawing`` is the backbone's ImageNet probability of 'comic book' (None: not known). It
    counts more when the picture sits on a plain border (paper, a blank backdrop): the bar is
    ``drawing_probability`` for a busy border, ``plain_border_decades`` powers of ten lower for
    a perfectly plain one.
    """
    options = options or CleanOptions()
    found: list[tuple[float, str]] = []
    if stats.perforation is not None:
        sides, spacing = stats.perforation
        found.append(
            (0.8, f"perforated edge like a postage stamp ({sides} sides, a tooth every {spacing:.0f} px)")
        )
    if stats.flat >= options.graphic_flat and stats.colours >= options.graphic_colours:
        found.append(
            (
                0.6,
                f"flat-colour graphic ({stats.flat:.0%} of the subject in flat areas, "
                f"16 colours cover {stats.colours:.0%})",
            )
        )
    if drawing is not None and drawing > 0:
        margin = (
            np.log10(drawing / options.drawing_probability)
            + options.plain_border_decades * stats.plain_border
        )
        if margin >= 0:
            plain = f", plain border {stats.plain_border:.0%}" if stats.plain_border >= 0.5 else ""
            found.append(
                (
                    0.5 + 0.3 * min(float(margin), 1.0),
                    f"the backbone sees a drawing ('comic book' {drawing:.1%}{plain})",
                )
            )
    return found


def _imagenet_head(backbone: str, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's own ImageNet-1k classifier (weight, bias), cached beside its ONNX export.

    It reads the mean-pooled features at the ImageNet input size (see :func:`_classifier_embedder`),
    so class probabilities come from cached embeddings without running the network again. torch
    reads the weights once.
    """
    from ethnic_group_recognizer import backbone as backbones

    spec = backbones.spec_for(backbone)
    version = backbones.weights_version(spec)
    path = config.cache_dir / "backbones" / f"{spec.name}-{version}-imagenet-head.npz"
    if not path.exists():
        import torch

        weights = getattr(importlib.import_module(spec.weights_package), spec.weights_class)
        state = torch.load(weights.get_model_file_path(), map_location="cpu", weights_only=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            weight=state["_fc.weight"].numpy().astype(np.float32),
            bias=state["_fc.bias"].numpy().astype(np.float32),
        )
        os.replace(tmp, path)
    with np.load(path) as data:
        return data["weight"], data["bias"]


def _classifier_embedder(embedder):
    """An embedder of the features the backbone's ImageNet classifier reads: mean-pooled, at the
    ImageNet input size. ``embedder`` itself when its features are those (or when it does not
    say: a custom embedder is taken at its word), else a sibling with that size and pooling."""
    spec = getattr(embedder, "spec", None)
    if spec is None:
        return embedder
    native = getattr(spec, "native_size", spec.image_size)
    if getattr(spec, "pooling", "mean") == "mean" and spec.image_size == native:
        return embedder
    from dataclasses import replace

    from ethnic_group_recognizer.backbone import Embedder

    config = replace(embedder.config, feature_size=native, feature_pooling="mean")
    return Embedder(embedder.backbone, config)


def _drawing_probabilities(
    embedder,
    paths: Sequence[Path],
    hashes: Sequence[str],
    vectors: np.ndarray,
    config: Config,
    report: dict,
    show_progress: bool,
) -> np.ndarray | None:
    """P('comic book') of each image under the backbone's ImageNet classifier (None: unavailable).

    ``vectors`` are ``embedder``'s embeddings of ``paths``; they are used as they are when they
    are the classifier's input, else the images are embedded once more (and cached) that way.
    """
    try:
        weight, bias = _imagenet_head(getattr(embedder, "backbone", config.backbone), config)
        reader = _classifier_embedder(embedder)
        if reader is not embedder:
            vectors = reader.embed_files(paths, hashes, show_progress=show_progress)
    except (
        ImportError,
        importlib.metadata.PackageNotFoundError,
        KeyError,
        OSError,
        ValueError,
        TypeError,
        RuntimeError,
    ) as error:
        report["not_photo"] = (
            f"the drawing score needs the backbone's ImageNet classifier ('train' extra): {error}; "
            "only the pixel tests ran"
        )
        return None
    if vectors.shape[1] != weight.shape[1]:
        report["not_photo"] = "the embeddings do not fit the backbone's classifier; only the pixel tests ran"
        return None
    from ethnic_group_recognizer.train import softmax

    return softmax(vectors.astype(np.float64) @ weight.T + bias)[:, DRAWING_CLASS]


def _picture(path: Path, config: Config) -> Image.Image:
    """The picture, decoded at about :data:`PICTURE_SIDE` (JPEG draft mode: a fraction of the work)."""
    from ethnic_group_recognizer.images import load_image

    with Image.open(path) as image:
        image.draft("RGB", (2 * PICTURE_SIDE, 2 * PICTURE_SIDE))
        return load_image(image, config)


def _not_photo_checks(
    dataset: Dataset,
    records: list[Record],
    flags: _Flags,
    options: CleanOptions,
    drawing: dict[str, float],
    show_progress: bool,
) -> None:
    """Drawings, prints and stamps: pixel tests on every usable image, plus the drawing score."""
    from ethnic_group_recognizer.images import ImageError
    from ethnic_group_recognizer.progress import progress

    by_content: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        if record.status == STATUS_OK:
            by_content[record.sha256].append(record)
    for sha256, copies in progress(
        list(by_content.items()), "Looking for drawings", disable=not show_progress or not by_content
    ):
        try:
            stats = picture_stats(_picture(dataset.abspath(copies[0]), dataset.config))
        except (ImageError, OSError):
            continue  # the file checks report what cannot be read
        found = not_photo_evidence(stats, drawing.get(sha256), options)
        if not found:
            continue
        score = 1.0 - float(np.prod([1.0 - s for s, _ in found]))
        reason = "not a photograph? " + "; ".join(text for _, text in found)
        for record in copies:
            flags.add(record.path, "not_photo", score, reason, "remove")


def _kept(record: Record) -> bool:
    review = record.extra.get("review") or {}
    return review.get("decision") == "keep" and review.get("sha256") == record.sha256


def find_issues(
    dataset: Dataset | str | Path,
    options: CleanOptions | None = None,
    other_dirs: Sequence[str | Path] = (),
    embedder=None,
    show_progress: bool = True,
) -> CleanReport:
    """Run every check on a dataset and return the review queue, most suspicious first.

    Images a reviewer already kept (and that have not changed since) are left out. ``embedder``
    is any object with ``embed_files(paths, hashes, show_progress=...)``; by default the
    dataset's backbone.
    """
    options = options or CleanOptions()
    if not isinstance(dataset, Dataset):
        dataset = open_dataset(dataset, show_progress=show_progress)
    records = [
        r for r in sorted(dataset.records.values(), key=lambda r: r.path) if r.status != STATUS_QUARANTINED
    ]
    flags = _Flags({r.path: r for r in records})
    skipped: dict[str, str] = {}
    _file_checks(records, flags, options)
    drawing: dict[str, float] = {}
    if not options.embeddings:
        skipped.update({c: "embeddings turned off" for c in ("mislabel", "other_like", "outlier")})
        if options.not_photo:
            skipped["not_photo"] = "embeddings turned off: only the pixel tests ran, not the drawing score"
    else:
        drawing = _embedding_checks(
            dataset, records, flags, options, [Path(p) for p in other_dirs], embedder, skipped, show_progress
        )
    if options.not_photo:
        _not_photo_checks(dataset, records, flags, options, drawing, show_progress)
    else:
        skipped["not_photo"] = "turned off"
    result = flags.result()
    by_path = {r.path: r for r in records}
    kept = [f for f in result if _kept(by_path[f.path])]
    result = [f for f in result if not _kept(by_path[f.path])]
    counts = {check: sum(check in f.checks for f in result) for check in CHECKS}
    return CleanReport(result, len(records), counts, skipped, len(kept))


def save_queue(root: str | Path, report: CleanReport) -> Path:
    """Write the queue for ``egr review`` (atomically; it is derived data, rewritten each run)."""
    path = Path(root) / CLEAN_DIR / QUEUE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for flag in report.flags:
            handle.write(json.dumps(asdict(flag), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def load_queue(root: str | Path) -> list[Flag] | None:
    path = Path(root) / CLEAN_DIR / QUEUE_FILE
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as handle:
        return [Flag(**json.loads(line)) for line in handle if line.strip()]


# -- acting: the log, the moves, recovery and undo ------------------------------------------------
def _log_path(root: Path) -> Path:
    return root / CLEAN_DIR / ACTIONS_FILE


def read_log(root: str | Path) -> list[dict]:
    """Every entry of the append-only action log, oldest first (a torn last line is ignored)."""
    return read_jsonl(_log_path(Path(root)))


def _append(root: Path, entry: dict) -> None:
    append_jsonl(_log_path(root), entry)


def _actions(root: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Begin entries by id, and each id's final state (committed / rolled_back); absent: open."""
    begins: dict[str, dict] = {}
    state: dict[str, str] = {}
    for entry in read_log(root):
        if entry.get("event") == "begin":
            begins[entry["id"]] = entry
        elif entry.get("event") in ("commit", "rollback"):
            state[entry["id"]] = entry["event"]
    return begins, state


def _move_back(root: Path, moves: list[dict]) -> None:
    for move in reversed(moves):
        src, dst = root / move["from"], root / move["to"]
        if os.path.lexists(dst) and not os.path.lexists(src):
            src.parent.mkdir(parents=True, exist_ok=True)
            os.replace(dst, src)


def _set_records(root: Path, remove: Iterable[str], put: dict[str, dict]) -> None:
    dataset = Dataset(root)
    for key in remove:
        dataset.records.pop(key, None)
    for key, data in put.items():
        dataset.records[key] = Record(**data)
    write_manifest(dataset.manifest_path, dataset.records.values())


def recover(root: str | Path) -> int:
    """Roll back any action a crash interrupted; returns how many. Safe to call at any time.

    An action is in effect only once its ``commit`` line is in the log. One without it is
    undone here: files go back to where they were, and the manifest records named in its
    ``begin`` line are restored, so the dataset is exactly as before the action started.
    """
    root = Path(root)
    begins, state = _actions(root)
    rolled = 0
    for action_id, entry in begins.items():
        if action_id in state:
            continue
        _move_back(root, entry["moves"])
        _set_records(root, entry["after"], entry["before"])
        _append(root, {"event": "rollback", "id": action_id, "time": time.time()})
        rolled += 1
    return rolled


def _unique(path: Path, sha256: str) -> Path:
    if not os.path.lexists(path):
        return path
    candidate = path.with_name(f"{path.stem}-{sha256[:8]}{path.suffix}")
    number = 1
    while os.path.lexists(candidate):
        candidate = path.with_name(f"{path.stem}-{sha256[:8]}-{number}{path.suffix}")
        number += 1
    return candidate


def _apply(
    dataset: Dataset,
    kind: str,
    moves: list[dict],
    before: dict[str, Record],
    after: dict[str, Record],
    note: dict | None = None,
) -> dict:
    """Log, move, update the manifest, commit: the one write path every action goes through."""
    root = dataset.root
    for move in moves:
        src = root / move["from"]
        if not os.path.lexists(src):
            raise CleanError(f"{move['from']}: file is missing; run 'egr data info' to refresh the manifest")
        if sha256_file(src) != move["sha256"]:
            raise CleanError(f"{move['from']}: file changed since it was indexed; re-run 'egr clean'")
        if os.path.lexists(root / move["to"]):
            raise CleanError(f"{move['to']}: a file is already there")
    entry = {
        "event": "begin",
        "id": uuid.uuid4().hex[:12],
        "kind": kind,
        "time": time.time(),
        "moves": moves,
        "before": {k: asdict(v) for k, v in before.items()},
        "after": {k: asdict(v) for k, v in after.items()},
        **(note or {}),
    }
    _append(root, entry)
    for move in moves:
        destination = root / move["to"]
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(root / move["from"], destination)
    for key in before:
        dataset.records.pop(key, None)
    dataset.records.update(after)
    dataset.save()
    _append(root, {"event": "commit", "id": entry["id"], "time": time.time()})
    return entry


def open_dataset(root: str | Path, config: Config | None = None, show_progress: bool = False) -> Dataset:
    """Recover from any interrupted action, then open the dataset with a refreshed manifest.

    Recovery must come first: a refresh would drop the record of a file a crash left in the
    quarantine, while the log still knows where it belongs.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    recover(root)
    dataset = Dataset(root, config)
    dataset.refresh(show_progress=show_progress)
    return dataset


def _open(dataset: Dataset | str | Path) -> Dataset:
    if isinstance(dataset, Dataset):
        recover(dataset.root)
        return Dataset(dataset.root, dataset.config)
    return open_dataset(dataset)


def _record(dataset: Dataset, path: str) -> Record:
    record = dataset.records.get(path)
    if record is None:
        raise CleanError(f"{path}: not in the dataset manifest")
    if record.status == STATUS_QUARANTINED:
        raise CleanError(f"{path}: already removed (in {QUARANTINE_DIR}/)")
    return record


def _copy(record: Record, **changes) -> Record:
    data = asdict(record)
    data.update(changes)
    return Record(**data)


def _removal(dataset: Dataset, path: str, reasons: Sequence[str], taken: set[Path]) -> tuple[dict, Record]:
    record = _record(dataset, path)
    target = _unique(dataset.root / QUARANTINE_DIR / record.path, record.sha256)
    while target in taken:
        target = _unique(target.with_name(target.stem + "~" + target.suffix), record.sha256)
    taken.add(target)
    relative = target.relative_to(dataset.root).as_posix()
    extra = dict(record.extra, quarantine={"path": relative, "time": time.time(), "reasons": list(reasons)})
    extra.pop("review", None)
    return (
        {"from": record.path, "to": relative, "sha256": record.sha256},
        _copy(record, status=STATUS_QUARANTINED, extra=extra),
    )


def remove(
    dataset: Dataset | str | Path, paths: Sequence[str], reasons: Sequence[str] = (), kind: str = "remove"
) -> dict:
    """Move images to ``.quarantine/`` (one logged action); the manifest keeps them as quarantined."""
    dataset = _open(dataset)
    if not paths:
        raise CleanError("nothing to remove")
    moves, before, after, taken = [], {}, {}, set()
    for path in dict.fromkeys(paths):
        move, record = _removal(dataset, path, reasons, taken)
        moves.append(move)
        before[path] = dataset.records[path]
        after[path] = record
    return _apply(dataset, kind, moves, before, after, {"reasons": list(reasons)})


def relabel(dataset: Dataset | str | Path, path: str, label: str) -> dict:
    """Move an image to another class folder (one logged action)."""
    dataset = _open(dataset)
    record = _record(dataset, path)
    label = label.strip()
    if not label or "/" in label or label.startswith("."):
        raise CleanError(f"not a usable label: {label!r}")
    if label == record.label:
        raise CleanError(f"{path} is already labelled {label}")
    target = _unique(dataset.root / label / Path(record.path).name, record.sha256)
    relative = target.relative_to(dataset.root).as_posix()
    extra = dict(record.extra, relabel={"from": record.label, "from_path": record.path, "time": time.time()})
    extra.pop("review", None)
    new = _copy(record, path=relative, label=label, extra=extra)
    move = {"from": record.path, "to": relative, "sha256": record.sha256}
    return _apply(dataset, "relabel", [move], {record.path: record}, {relative: new})


def _kept_record(record: Record) -> Record:
    review = {"decision": "keep", "sha256": record.sha256, "time": time.time()}
    return _copy(record, extra=dict(record.extra, review=review))


def keep(dataset: Dataset | str | Path, paths: Sequence[str], remove_paths: Sequence[str] = ()) -> dict:
    """Record a reviewer's 'keep' so that the image leaves the queue (undoable like the rest).

    ``remove_paths`` quarantines others in the same action: 'keep this one of a duplicate group,
    remove the rest' is then one click and one undo.
    """
    dataset = _open(dataset)
    before, after, moves, taken = {}, {}, [], set()
    for path in dict.fromkeys(paths):
        before[path] = _record(dataset, path)
        after[path] = _kept_record(before[path])
    if not before:
        raise CleanError("nothing to keep")
    for path in dict.fromkeys(remove_paths):
        if path in before:
            raise CleanError(f"{path}: cannot both keep and remove it")
        move, record = _removal(dataset, path, ["duplicate group: reviewer kept another copy"], taken)
        moves.append(move)
        before[path] = dataset.records[path]
        after[path] = record
    return _apply(dataset, "keep", moves, before, after)


def auto_fix(dataset: Dataset | str | Path, report: CleanReport | None = None) -> dict | None:
    """Quarantine only what needs no reviewer: unreadable files and byte-identical copies."""
    dataset = _open(dataset)
    if report is None:
        report = find_issues(dataset, CleanOptions(embeddings=False, not_photo=False), show_progress=False)
    safe = [f for f in report.flags if f.safe]
    safe = [
        f for f in safe if f.path in dataset.records and dataset.records[f.path].status != STATUS_QUARANTINED
    ]
    if not safe:
        return None
    moves, before, after, taken = [], {}, {}, set()
    for flag in safe:
        reasons = [r for r, c in zip(flag.reasons, flag.checks, strict=True) if c in SAFE_CHECKS]
        move, record = _removal(dataset, flag.path, reasons, taken)
        moves.append(move)
        before[flag.path] = dataset.records[flag.path]
        after[flag.path] = record
    return _apply(dataset, "auto", moves, before, after)


def history(root: str | Path) -> list[dict]:
    """Committed actions, oldest first, each with ``undone`` set when a later undo reverted it."""
    begins, state = _actions(Path(root))
    committed = [e for i, e in begins.items() if state.get(i) == "commit"]
    undone = {e["undoes"] for e in committed if e["kind"] == "undo"}
    return [dict(e, undone=e["id"] in undone) for e in committed]


def undo(dataset: Dataset | str | Path, all_actions: bool = False) -> list[dict]:
    """Revert the last action not yet undone (or all of them, newest first); returns the undo entries.

    Each file's sha256 is checked before it moves back, so a restoration is byte-exact or refused.
    """
    dataset = _open(dataset)
    done = []
    while True:
        pending = [e for e in history(dataset.root) if e["kind"] != "undo" and not e["undone"]]
        if not pending:
            break
        action = pending[-1]
        moves = [{"from": m["to"], "to": m["from"], "sha256": m["sha256"]} for m in reversed(action["moves"])]
        before = {k: dataset.records.get(k) or Record(**v) for k, v in action["after"].items()}
        after = {k: Record(**v) for k, v in action["before"].items()}
        for key, record in before.items():
            current = dataset.records.get(key)
            if current is None or current.sha256 != record.sha256:
                raise CleanError(f"cannot undo {action['kind']} of {key}: it changed after that action")
        done.append(_apply(dataset, "undo", moves, before, after, {"undoes": action["id"]}))
        if not all_actions:
            break
    return done


def review_status(dataset: Dataset, flag: Flag) -> tuple[str, str]:
    """Where a queued image stands now: (pending|kept|removed|relabeled|gone, current path)."""
    record = dataset.records.get(flag.path)
    if record is not None and record.sha256 == flag.sha256:
        if record.status == STATUS_QUARANTINED:
            return "removed", flag.path
        if _kept(record):
            return "kept", flag.path
        return "pending", flag.path
    for other in dataset.records.values():
        moved = other.extra.get("relabel") or {}
        if moved.get("from_path") == flag.path and other.sha256 == flag.sha256:
            if other.status == STATUS_QUARANTINED:
                return "removed", other.path
            return "relabeled", other.path
    return "gone", flag.path


def file_of(dataset: Dataset, path: str) -> Path:
    """The file behind a manifest path, wherever it is now (its class folder or the quarantine)."""
    record = dataset.records.get(path)
    if record is None:
        raise CleanError(f"{path}: not in the dataset manifest")
    if record.status == STATUS_QUARANTINED:
        return dataset.root / record.extra["quarantine"]["path"]
    return dataset.abspath(record)
