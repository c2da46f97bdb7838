"""A dataset is a folder of class folders plus ``manifest.jsonl``, one JSON object per image.

``<root>/<label>/*.jpg`` as in the original fastai project; the label is the folder name and a
folder called ``other`` holds photos that show none of the 12 groups (the abstain class).
The manifest records for each image its sha256, pixel size, format, source, perceptual hashes
and status, so every later stage (clean, train, evaluate) can be re-run alone.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import ImageOps

from ethnic_group_recognizer.config import ABSTAIN_LABEL, Config
from ethnic_group_recognizer.images import ImageError, image_info, is_image_path, load_image, sha256_file
from ethnic_group_recognizer.progress import progress

MANIFEST_NAME = "manifest.jsonl"
QUARANTINE_DIR = ".quarantine"
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_QUARANTINED = "quarantined"
#: Perceptual hashes this many bits apart (of 64) or fewer are treated as the same photo.
NEAR_DUPLICATE_BITS = 6


@dataclass
class Record:
    """One image of a dataset, as stored in the manifest."""

    path: str  # relative to the dataset root, POSIX separators
    label: str
    sha256: str
    width: int | None = None
    height: int | None = None
    format: str | None = None
    source: str | None = None
    status: str = STATUS_OK
    error: str | None = None
    phash: str | None = None
    phash_mirror: str | None = None
    size: int = 0
    mtime: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.status == STATUS_OK


def _perceptual_hashes(path: Path, config: Config) -> tuple[str | None, str | None]:
    try:
        image = load_image(path, config)
    except ImageError:
        return None, None
    return str(imagehash.phash(image)), str(imagehash.phash(ImageOps.mirror(image)))


def describe_file(path: Path, root: Path, label: str, config: Config, source: str | None = None) -> Record:
    """Hash and inspect one file into a manifest record (never raises for a bad image)."""
    info = image_info(path, config)
    stat = path.stat()
    phash, phash_mirror = (None, None) if info["error"] else _perceptual_hashes(path, config)
    return Record(
        path=path.relative_to(root).as_posix(),
        label=label,
        sha256=sha256_file(path),
        width=info["width"],
        height=info["height"],
        format=info["format"],
        source=source or str(path.resolve()),
        status=STATUS_ERROR if info["error"] else STATUS_OK,
        error=info["error"],
        phash=phash,
        phash_mirror=phash_mirror,
        size=stat.st_size,
        mtime=stat.st_mtime,
    )


class Dataset:
    """A dataset folder and its manifest; ``refresh`` brings the manifest in line with the files."""

    def __init__(self, root: str | Path, config: Config | None = None):
        self.root = Path(root)
        self.config = config or Config()
        self.records: dict[str, Record] = {}
        if self.manifest_path.exists():
            self.records = {r.path: r for r in read_manifest(self.manifest_path)}

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @classmethod
    def open(cls, root: str | Path, config: Config | None = None, refresh: bool = True) -> Dataset:
        """Open a dataset folder, refreshing the manifest from disk; raises if it holds no class folder."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}")
        dataset = cls(root, config)
        if refresh:
            dataset.refresh()
        return dataset

    def class_files(self) -> Iterator[tuple[str, Path]]:
        """Every image file under a class folder, with its label (hidden folders are skipped)."""
        for class_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in sorted(class_dir.rglob("*")):
                relative = path.relative_to(self.root).parts
                if path.is_file() and is_image_path(path) and not any(p.startswith(".") for p in relative):
                    yield class_dir.name, path

    def refresh(self, show_progress: bool = True) -> None:
        """Add new files, drop vanished ones and re-hash changed ones, then save the manifest."""
        on_disk = {
            path.relative_to(self.root).as_posix(): (label, path) for label, path in self.class_files()
        }
        quarantined = {k: r for k, r in self.records.items() if r.status == STATUS_QUARANTINED}
        changed = False
        for key in list(self.records):
            if key not in on_disk and key not in quarantined:
                del self.records[key]
                changed = True
        todo = []
        for key, (label, path) in on_disk.items():
            old = self.records.get(key)
            stat = path.stat()
            if old and old.size == stat.st_size and old.mtime == stat.st_mtime and old.label == label:
                continue
            todo.append((key, label, path, old))
        for key, label, path, old in progress(todo, "Indexing images", disable=not show_progress):
            record = describe_file(path, self.root, label, self.config, source=old.source if old else None)
            if old:
                record.extra = old.extra
            self.records[key] = record
            changed = True
        if changed or not self.manifest_path.exists():
            self.save()

    def save(self) -> None:
        write_manifest(self.manifest_path, self.records.values())

    def usable(self, include_abstain: bool = True) -> list[Record]:
        """Records that decode and are not quarantined, in a stable order."""
        return [
            r
            for r in sorted(self.records.values(), key=lambda r: r.path)
            if r.usable and (include_abstain or r.label != ABSTAIN_LABEL)
        ]

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.label for r in self.usable()).items()))

    def abspath(self, record: Record) -> Path:
        return self.root / record.path


def read_manifest(path: Path) -> list[Record]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                records.append(Record(**data))
            except (json.JSONDecodeError, TypeError) as error:
                raise ValueError(f"{path}:{number}: bad manifest line: {error}") from None
    return records


def write_manifest(path: Path, records: Iterable[Record]) -> None:
    """Write atomically (temp file + rename), so a crash never leaves half a manifest."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in sorted(records, key=lambda r: r.path):
            handle.write(json.dumps(asdict(record), ensure_ascii=False, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def label_for(path: Path, source_root: Path) -> str:
    """Label of an imported file: ``other`` if any folder on its way is called so, else its folder."""
    parts = path.relative_to(source_root).parts[:-1]
    if any(part.lower() == ABSTAIN_LABEL for part in (source_root.name, *parts)):
        return ABSTAIN_LABEL
    return parts[-1] if parts else source_root.name


def import_images(
    sources: Iterable[str | Path],
    out: str | Path,
    link: bool = False,
    config: Config | None = None,
    label: str | None = None,
    show_progress: bool = True,
) -> dict[str, int]:
    """Copy (or symlink) images from folders into a dataset; re-running imports nothing twice.

    Each source is a folder of class folders, a single class folder, or an image file. A source
    file already imported with the same content is skipped; exact duplicates from different
    source files are kept, for ``egr clean`` to find and log (import never silently drops data).
    """
    config = config or Config()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = Dataset(out, config)
    dataset.refresh(show_progress=False)
    known = {(r.source, r.sha256) for r in dataset.records.values()}
    files: list[tuple[Path, Path]] = []
    for source in map(Path, sources):
        if not source.exists():
            raise FileNotFoundError(f"import source not found: {source}")
        if source.is_file():
            files.append((source, source.parent))
        else:
            files.extend((p, source) for p in sorted(source.rglob("*")) if p.is_file() and is_image_path(p))
    stats = Counter(imported=0, skipped=0, unreadable=0)
    for path, source_root in progress(files, "Importing", disable=not show_progress):
        target_label = label or label_for(path, source_root)
        digest = sha256_file(path)
        source_name = str(path.resolve())
        if (source_name, digest) in known:
            stats["skipped"] += 1
            continue
        destination = out / target_label / path.name
        if destination.exists():
            destination = destination.with_name(f"{path.stem}-{digest[:8]}{path.suffix}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if link:
            destination.symlink_to(path.resolve())
        else:
            shutil.copy2(path, destination)
        record = describe_file(destination, out, target_label, config, source=source_name)
        dataset.records[record.path] = record
        known.add((source_name, digest))
        stats["imported"] += 1
        stats["unreadable"] += record.status == STATUS_ERROR
    dataset.save()
    return dict(stats)


def _hash_bits(hex_hashes: list[str]) -> np.ndarray:
    return np.unpackbits(np.array([bytearray.fromhex(h) for h in hex_hashes], dtype=np.uint8), axis=1)


def near_duplicate_pairs(
    records: list[Record], max_bits: int = NEAR_DUPLICATE_BITS
) -> list[tuple[int, int, int]]:
    """Index pairs ``(i, j, distance)`` whose perceptual hashes (plain or mirrored) nearly match."""
    hashed = [i for i, r in enumerate(records) if r.phash and r.phash_mirror]
    if len(hashed) < 2:
        return []
    plain = _hash_bits([records[i].phash for i in hashed]).astype(np.int16)
    mirror = _hash_bits([records[i].phash_mirror for i in hashed]).astype(np.int16)

    # Hamming distance = bits differing; computed as matrix products of 0/1 vectors.
    def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a @ (1 - b).T + (1 - a) @ b.T

    distance = np.minimum(hamming(plain, plain), hamming(plain, mirror))
    pairs = []
    rows, cols = np.nonzero(np.triu(distance <= max_bits, k=1))
    for a, b in zip(rows.tolist(), cols.tolist(), strict=True):
        pairs.append((hashed[a], hashed[b], int(distance[a, b])))
    return pairs


def duplicate_groups(records: list[Record]) -> list[int]:
    """A group id per record: exact or near duplicates share one (union-find over hash matches)."""
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_sha: dict[str, int] = {}
    for i, record in enumerate(records):
        if record.sha256 in by_sha:
            parent[find(i)] = find(by_sha[record.sha256])
        else:
            by_sha[record.sha256] = i
    for a, b, _ in near_duplicate_pairs(records):
        parent[find(a)] = find(b)
    return [find(i) for i in range(len(records))]


def split(records: list[Record], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Stratified, seeded train/validation split that keeps duplicate groups on one side.

    A near-duplicate in both train and validation would inflate accuracy, so whole groups are
    assigned. A class with fewer than 3 images stays entirely in train.
    """
    groups = duplicate_groups(records)
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    totals = Counter(r.label for r in records)
    target = {label: (int(round(n * val_fraction)) if n >= 3 else 0) for label, n in totals.items()}
    in_val: Counter[str] = Counter()
    order = sorted(members)
    random.Random(seed).shuffle(order)
    train, val = [], []
    for group in order:
        indices = members[group]
        label = Counter(records[i].label for i in indices).most_common(1)[0][0]
        if in_val[label] + len(indices) <= max(target[label], 0) and target[label] > 0:
            val.extend(indices)
            in_val[label] += len(indices)
        else:
            train.extend(indices)
    return sorted(train), sorted(val)


def group_folds(
    targets: np.ndarray, groups: np.ndarray, n_splits: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded ``(fit, held)`` index pairs that keep duplicate groups in one fold.

    Used for out-of-fold predictions (calibration, confident learning). Classes with fewer
    images than folds are expected here (Akha has one photo), so scikit-learn's warning about
    them is silenced: such an image is simply held out in one fold and missing from the rest.
    """
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(folds.split(np.zeros(len(targets)), targets, groups))


def append_jsonl(path: Path, entry: dict) -> None:
    """Append one JSON line and fsync it: the action and download logs must survive a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Entries oldest first; a torn last line (a crash mid-append) was never acted on and is skipped."""
    if not path.exists():
        return []
    entries = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries
