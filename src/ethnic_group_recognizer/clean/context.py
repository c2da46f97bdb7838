"""What every check reads and writes: the options, the flags, and one shared view of the dataset.

Why one context: several checks need the same expensive things (the groups of copies, the
backbone's embeddings, out-of-fold class probabilities). The context computes each once, on
first use, so a check asks for what it needs and a check that does not run costs nothing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ethnic_group_recognizer.clean.checks.registry import safe_check_names
from ethnic_group_recognizer.config import ABSTAIN_LABEL
from ethnic_group_recognizer.dataset import (
    NEAR_DUPLICATE_BITS,
    STATUS_OK,
    Dataset,
    Record,
    group_folds,
    near_duplicate_pairs,
)
from ethnic_group_recognizer.graph import union_find
from ethnic_group_recognizer.images import is_image_path, sha256_file
from ethnic_group_recognizer.probe import unit


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
    """One flagged image: why, how suspicious, and what a reviewer would probably do.

    ``reasons`` and ``checks`` run in parallel: the i-th reason is the sentence of the i-th check.
    """

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
        return bool(set(self.checks) & safe_check_names())

    def reason_for(self, check: str) -> str | None:
        """The sentence ``check`` gave (None: it did not flag this image)."""
        for name, reason in zip(self.checks, self.reasons, strict=False):
            if name == check:
                return reason
        return None

    def public(self) -> dict:
        """The ``--jsonl`` row: what to do with it (``auto``: a safe fix, ``review``: a person
        looks), and each check's own reason and score, so no consumer has to parse sentences."""
        safe = safe_check_names()
        return {
            "path": self.path,
            "label": self.label,
            "score": round(self.score, 4),
            "action": "auto" if self.safe else "review",
            "checks": [
                {"check": name, "reason": reason, "score": round(score, 4), "safe": name in safe}
                for (name, score), reason in zip(self.checks.items(), self.reasons, strict=False)
            ],
            "suggestion": self.suggestion,
        }


@dataclass
class CleanReport:
    flags: list[Flag]
    images: int
    counts: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)  # check -> why it did not (fully) run
    reviewed: int = 0  # flags dropped because a reviewer already kept the image

    def to_review(self) -> list[Flag]:
        return [f for f in self.flags if not f.safe]


class FlagSet:
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


def is_kept(record: Record) -> bool:
    """A reviewer kept this image, and it has not changed since."""
    review = record.extra.get("review") or {}
    return review.get("decision") == "keep" and review.get("sha256") == record.sha256


def other_files(other_dirs: Sequence[Path]) -> list[Path]:
    """The image files of the ``--other`` folders (recursive)."""
    files: list[Path] = []
    for folder in other_dirs:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--other folder not found: {folder}")
        files.extend(p for p in sorted(Path(folder).rglob("*")) if p.is_file() and is_image_path(p))
    return files


@dataclass
class Embedded:
    """Backbone embeddings of one representative per (label, content), then of the extra 'other' files."""

    embedder: Any
    representatives: list[Record]
    paths: list[Path]
    hashes: list[str]
    vectors: np.ndarray  # raw backbone features, one row per path


@dataclass
class ModelData:
    """The classes with enough images, their unit embeddings and out-of-fold class probabilities."""

    classes: list[str]
    modelled: list[Record]  # representatives of those classes (the first rows of ``vectors``)
    vectors: np.ndarray  # unit embeddings: modelled, then the extra 'other' files
    labels: list[str]  # one per row of ``vectors``
    targets: np.ndarray  # class index per row
    groups: np.ndarray  # fold group per row: copies and near copies share one
    options: CleanOptions

    @property
    def index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.classes)}

    @property
    def other(self) -> int | None:
        """Column of the 'other' class (None: there are no 'other' images)."""
        return self.index.get(ABSTAIN_LABEL)

    @cached_property
    def probabilities(self) -> np.ndarray:
        """Held-out class probabilities for every row (group-aware folds, so copies never leak)."""
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression

        options, features, targets = self.options, self.vectors, self.targets
        n_classes = int(targets.max()) + 1
        probabilities = np.zeros((len(targets), n_classes))
        for fit, held in group_folds(targets, self.groups, options.folds, options.seed):
            # Few images cannot support many whitened directions (noise would be blown up), and the
            # penalty is set per 1,000 images so that it means the same on a small dataset.
            components = max(2, min(options.pca_components, len(fit) // 8, features.shape[1]))
            pca = PCA(components, whiten=True, random_state=options.seed).fit(features[fit])
            model = LogisticRegression(C=options.regularization * 1000 / len(fit), max_iter=2000)
            model.fit(pca.transform(features[fit]), targets[fit])
            probabilities[np.ix_(held, model.classes_)] = model.predict_proba(pca.transform(features[held]))
        return probabilities


_UNSET: Any = object()


@dataclass
class CleanContext:
    """One run of the checks over a dataset: its records, the options, and the flags found so far."""

    dataset: Dataset
    records: list[Record]  # every record not quarantined, by path
    options: CleanOptions
    other_dirs: Sequence[Path] = ()
    embedder: Any = None  # anything with embed_files(paths, hashes, show_progress=...)
    show_progress: bool = False
    skipped: dict[str, str] = field(default_factory=dict)  # check -> why it did not (fully) run
    model_unavailable: str = ""  # why model() is None

    def __post_init__(self) -> None:
        self.flags = FlagSet({r.path: r for r in self.records})
        self._embedded: Embedded | None = _UNSET
        self._model: ModelData | None = _UNSET

    # -- what checks call ---------------------------------------------------------------------
    def flag(self, path: str, check: str, score: float, reason: str, suggestion: str | None = None) -> Flag:
        return self.flags.add(path, check, score, reason, suggestion)

    def flag_copies(
        self, record: Record, check: str, score: float, reason: str, suggestion: str | None
    ) -> None:
        """Flag ``record`` and every byte-identical copy of it under the same label (one was modelled)."""
        for path in self.copies[(record.label, record.sha256)]:
            self.flag(path, check, score, reason, suggestion)

    def skip(self, check: str, reason: str) -> None:
        """Say why ``check`` did not run, or which part of it did not."""
        self.skipped[check] = reason

    # -- shared views, each computed once -----------------------------------------------------
    @cached_property
    def usable(self) -> list[Record]:
        return [r for r in self.records if r.status == STATUS_OK]

    @cached_property
    def copies(self) -> dict[tuple[str, str], list[str]]:
        """Paths of each content under each label."""
        copies: dict[tuple[str, str], list[str]] = defaultdict(list)
        for record in self.usable:
            copies[(record.label, record.sha256)].append(record.path)
        return copies

    @cached_property
    def duplicate_groups(self) -> list[list[Record]]:
        """Groups (2+) of exact or near copies across labels: union-find over sha256 and phash pairs."""
        usable = self.usable
        edges = [(a, b) for a, b, _ in near_duplicate_pairs(usable, self.options.near_bits)]
        first_by_sha: dict[str, int] = {}
        for i, record in enumerate(usable):
            if record.sha256 in first_by_sha:
                edges.append((i, first_by_sha[record.sha256]))
            first_by_sha.setdefault(record.sha256, i)
        members: dict[int, list[int]] = defaultdict(list)
        for i, root in enumerate(union_find(len(usable), edges)):
            members[root].append(i)
        return [[usable[i] for i in indices] for indices in members.values() if len(indices) >= 2]

    @cached_property
    def representatives(self) -> list[Record]:
        """One record per (label, content): copies would vote twice."""
        reps: dict[tuple[str, str], Record] = {}
        for record in sorted(self.usable, key=lambda r: r.path):
            reps.setdefault((record.label, record.sha256), record)
        return list(reps.values())

    @cached_property
    def extra_other(self) -> list[tuple[Path, str]]:
        """The decodable ``--other`` files, with their sha256."""
        from ethnic_group_recognizer.images import ImageError, load_image

        found = []
        for path in other_files(self.other_dirs):
            try:
                load_image(path, self.dataset.config)
            except ImageError:
                continue
            found.append((path, sha256_file(path)))
        return found

    @cached_property
    def classes(self) -> list[str]:
        """Classes with enough distinct images for the model-based checks ('other' included)."""
        options = self.options
        sizes = Counter(r.label for r in self.representatives)
        sizes[ABSTAIN_LABEL] += len(self.extra_other)
        return sorted(
            label for label, n in sizes.items() if n >= max(options.min_class_images, options.folds)
        )

    @property
    def enough_classes(self) -> bool:
        return len([c for c in self.classes if c != ABSTAIN_LABEL]) >= 2

    def embedded(self) -> Embedded | None:
        """Embeddings of every representative (and of the extra 'other' files when the model-based
        checks run); None when embeddings are off or the backbone is not available for a check
        that can do without it."""
        if self._embedded is not _UNSET:
            return self._embedded
        self._embedded = None
        if not self.options.embeddings or not self.representatives:
            return None
        enough = self.enough_classes
        extra = self.extra_other if enough else []  # without the model, only the dataset's own images
        embedder = self.embedder
        if embedder is None:
            from ethnic_group_recognizer.backbone import Embedder

            try:
                embedder = Embedder(self.dataset.config.backbone, self.dataset.config)
            except RuntimeError as error:
                if enough:
                    raise
                self.skip("not_photo", f"{error}; only the pixel tests ran, not the drawing score")
                return None
        reps = self.representatives
        paths = [self.dataset.abspath(r) for r in reps] + [p for p, _ in extra]
        hashes = [r.sha256 for r in reps] + [h for _, h in extra]
        vectors = embedder.embed_files(paths, hashes, show_progress=self.show_progress)
        self._embedded = Embedded(embedder, reps, paths, hashes, vectors)
        return self._embedded

    def model(self) -> ModelData | None:
        """The shared out-of-fold model of the classes with enough images (None: see ``model_unavailable``)."""
        if self._model is not _UNSET:
            return self._model
        self._model = None
        options = self.options
        if not options.embeddings:
            self.model_unavailable = "embeddings turned off"
            return None
        if not self.enough_classes:
            self.model_unavailable = (
                f"needs at least 2 classes with {options.min_class_images}+ distinct images"
            )
            return None
        embedded = self.embedded()
        if embedded is None:  # not reached: with enough classes a missing backbone raises
            self.model_unavailable = "no embeddings"
            return None
        reps, classes = embedded.representatives, self.classes
        chosen = np.array([i for i, r in enumerate(reps) if r.label in classes], dtype=int)
        modelled = [reps[i] for i in chosen]
        extra = len(embedded.paths) - len(reps)
        vectors = unit(np.concatenate([embedded.vectors[chosen], embedded.vectors[len(reps) :]]))
        labels = [r.label for r in modelled] + [ABSTAIN_LABEL] * extra
        index = {label: i for i, label in enumerate(classes)}
        targets = np.array([index[label] for label in labels])
        # Copies and near copies share a fold group; extra 'other' files are their own groups.
        groups = np.array(union_find(len(modelled), ((a, b) for a, b, _ in near_duplicate_pairs(modelled))))
        groups = np.concatenate([groups, len(modelled) + np.arange(extra)])
        self._model = ModelData(classes, modelled, vectors, labels, targets, groups, options)
        return self._model
