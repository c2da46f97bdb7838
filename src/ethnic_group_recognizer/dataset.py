"""A dataset is a folder of class folders plus ``manifest.jsonl``, one JSON object per image.

``<root>/<label>/*.jpg`` as in the original fastai project; the label is the folder name and a
folder called ``other`` holds photos that show none of the classes (the abstain class).
The manifest records for each image its sha256, pixel size, format, source, perceptual hashes
and status, so every later stage (clean, train, evaluate) can be re-run alone.

A dataset folder may come from someone else, so its folder names, symlinks and manifest are
untrusted: labels follow :func:`validate_label`, a symlink out of the folder is recorded but never
read (unless ``import --link`` made it), a damaged manifest is a :class:`DatasetError`, and every
writer holds the dataset's lock (:mod:`ethnic_group_recognizer.locking`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import ImageOps

from ethnic_group_recognizer.config import ABSTAIN_LABEL, Config
from ethnic_group_recognizer.graph import union_find
from ethnic_group_recognizer.images import ImageError, image_info, is_image_path, load_image, sha256_file
from ethnic_group_recognizer.locking import atomic_write_text, dataset_lock
from ethnic_group_recognizer.progress import progress

MANIFEST_NAME = "manifest.jsonl"
QUARANTINE_DIR = ".quarantine"
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_QUARANTINED = "quarantined"
#: Perceptual hashes this many bits apart (of 64) or fewer are treated as the same photo.
NEAR_DUPLICATE_BITS = 6
logger = logging.getLogger(__name__)
#: Longest label accepted: a label is a folder name, shown in pages and model cards.
MAX_LABEL_LENGTH = 100


class DatasetError(ValueError):
    """A dataset folder or its manifest cannot be used as it is; the message says why."""


class LabelError(ValueError):
    """A label that cannot be a class folder name; the message says what is wrong with it."""


def printable(text: str) -> str:
    """``text`` with control and invisible characters escaped, safe to print to a terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def validate_label(label: str) -> str:
    """The label as it will be stored (stripped, NFC), or :class:`LabelError` saying why not.

    One rule for import (folder names), relabelling and the APIs: a label becomes a folder
    inside the dataset, so it must be a single, visible, portable path component.
    """
    if not isinstance(label, str):
        raise LabelError(f"a label must be text, not {type(label).__name__}")
    cleaned = unicodedata.normalize("NFC", label.strip())
    shown = repr(label if len(label) <= 40 else label[:40] + "…")
    if not cleaned:
        raise LabelError("a label must not be empty")
    if len(cleaned) > MAX_LABEL_LENGTH:
        raise LabelError(f"label {shown} is {len(cleaned)} characters long; the limit is {MAX_LABEL_LENGTH}")
    if len(cleaned.encode("utf-8")) > 255:
        raise LabelError(f"label {shown} is longer than a folder name may be (255 bytes in UTF-8)")
    if any(unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for char in cleaned):
        raise LabelError(f"label {shown} contains a control or invisible character")
    if "/" in cleaned or "\\" in cleaned:
        raise LabelError(f"label {shown} contains a path separator ('/' or '\\')")
    if cleaned.startswith("."):
        raise LabelError(f"label {shown} starts with '.' (hidden folders are not classes)")
    return cleaned


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


def is_inside(root: str | Path, path: str | Path) -> bool:
    """Whether ``path``, every symlink resolved, lies inside ``root`` (also resolved)."""
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def check_relative_path(relative: object) -> str:
    """A path from a manifest or a request, if it can only name something under the dataset root.

    Manifests and journals are untrusted input (a dataset may come from someone else), so an
    absolute path, a ``..`` component or a backslash is refused before any file is touched.
    """
    if not isinstance(relative, str) or not relative:
        raise DatasetError(f"not a path inside the dataset: {relative!r}")
    parts = relative.split("/")
    if (
        relative.startswith("/")
        or "\\" in relative
        or "\0" in relative
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise DatasetError(f"not a path inside the dataset: {relative!r}")
    return relative


def resolve_inside(root: str | Path, relative: object) -> Path:
    """``root/relative`` if that names a place inside the dataset once symlinks are resolved."""
    path = Path(root) / check_relative_path(relative)
    if not is_inside(root, path):
        raise DatasetError(f"{relative}: resolves to a place outside the dataset")
    return path


def unread_digest(relative: str, path: Path) -> str:
    """The stand-in identity of a file the manifest records without reading it (not a content hash).

    Refresh never opens a symlink that leads out of the dataset, nor a file in a class folder
    whose name is not a label; such records get this digest of their path and link text instead.
    """
    link = os.readlink(path) if path.is_symlink() else ""
    return hashlib.sha256(f"unread\0{relative}\0{link}".encode("utf-8", "surrogateescape")).hexdigest()


def _unread_reason(root: Path, label: str, path: Path, old: Record | None) -> str | None:
    """Why refresh must not read this file (a symlink out of the dataset, a bad label), or None."""
    try:
        validate_label(label)
    except LabelError as error:
        return f"class folder name is not a usable label: {error}"
    if is_inside(root, path):
        return None
    real = os.path.realpath(path)
    if old is not None and old.extra.get("link") == real:
        return None  # a symlink 'egr data import --link' made, still pointing where it did
    what = "symlink" if path.is_symlink() else "file (through a symlinked folder)"
    return f"{what} to {real}, outside the dataset: not followed; copy the file into the dataset instead"


def content_digest(root: str | Path, record: Record) -> str:
    """The digest refresh would record for this record's file now (what clean compares before moving)."""
    root = Path(root)
    path = root / check_relative_path(record.path)
    if _unread_reason(root, record.label, path, record):
        return unread_digest(record.path, path)
    return sha256_file(path)


def _canonical(record: Record) -> str:
    return json.dumps(asdict(record), ensure_ascii=False, sort_keys=True)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "label": (str,),
    "sha256": (str,),
    "width": (int, type(None)),
    "height": (int, type(None)),
    "format": (str, type(None)),
    "source": (str, type(None)),
    "status": (str,),
    "error": (str, type(None)),
    "phash": (str, type(None)),
    "phash_mirror": (str, type(None)),
    "size": (int,),
    "mtime": (int, float),
    "extra": (dict,),
}


def _record_from(data: object) -> Record:
    """A record from one parsed manifest line, or ValueError saying which field is wrong."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    unknown = set(data) - set(_FIELD_TYPES) - {"path"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    for name in ("path", "label", "sha256"):
        if name not in data:
            raise ValueError(f"missing field {name!r}")
    check_relative_path(data["path"])
    for name, types in _FIELD_TYPES.items():
        if name in data and (not isinstance(data[name], types) or isinstance(data[name], bool)):
            raise ValueError(f"field {name!r} has the wrong type")
    return Record(**data)


def _read_lines(path: Path) -> dict[str, tuple[str, Record]]:
    """Manifest lines by record path; a damaged manifest is a :class:`DatasetError` naming the line."""
    lines: dict[str, tuple[str, Record]] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = _record_from(json.loads(line))
                except json.JSONDecodeError as error:
                    why = f"not valid JSON: {error.msg} at column {error.colno}"
                    raise DatasetError(_damaged(path, number, why)) from None
                except RecursionError:
                    raise DatasetError(_damaged(path, number, "nested too deeply")) from None
                except ValueError as error:  # over-long integers, a bad field
                    raise DatasetError(_damaged(path, number, str(error)[:200])) from None
                lines[record.path] = (line, record)
    except UnicodeDecodeError:
        raise DatasetError(_damaged(path, None, "not UTF-8 text")) from None
    return lines


def _damaged(path: Path, number: int | None, why: str) -> str:
    where = f"{path}, line {number}" if number else str(path)
    return (
        f"{where}: the manifest is damaged ({why}). Restore it from a backup, or delete it and run "
        f"'egr data info {path.parent}' to rebuild it from the files (the quarantine and review "
        "decisions stored in it are then lost)"
    )


class Dataset:
    """A dataset folder and its manifest; ``refresh`` brings the manifest in line with the files.

    Writers hold the dataset's lock (:func:`~ethnic_group_recognizer.locking.dataset_lock`), and
    :meth:`save` merges: records this object did not change are taken from the manifest as it is
    on disk now, so a concurrent writer's changes to other records are never lost.
    """

    def __init__(self, root: str | Path, config: Config | None = None):
        self.root = Path(root)
        self.config = config or Config()
        self.records: dict[str, Record] = {}
        self._base: dict[str, str] = {}  # record path -> manifest line as last read or written
        self._load()

    def _load(self) -> None:
        lines = _read_lines(self.manifest_path) if self.manifest_path.exists() else {}
        self.records.clear()
        self.records.update({key: record for key, (_, record) in lines.items()})
        self._base = {key: line for key, (line, _) in lines.items()}

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

    def _scan(self) -> tuple[dict[str, Record], list[tuple[str, str, Path, Record | None]], bool]:
        """What a refresh would change, from directory listings and ``stat`` alone.

        Returns the records of files that must not be read (built without opening them), the
        files to hash, and whether the manifest changes at all.
        """
        on_disk = {
            path.relative_to(self.root).as_posix(): (label, path) for label, path in self.class_files()
        }
        changed = any(
            key not in on_disk and record.status != STATUS_QUARANTINED for key, record in self.records.items()
        )
        unread: dict[str, Record] = {}
        todo = []
        for key, (label, path) in on_disk.items():
            old = self.records.get(key)
            reason = _unread_reason(self.root, label, path, old)
            if reason:
                record = self._unread_record(key, label, path, reason, old)
                if record != old:
                    unread[key] = record
                continue
            stat = path.stat()
            if (
                old
                and old.size == stat.st_size
                and old.mtime == stat.st_mtime
                and old.label == label
                and not (old.status == STATUS_ERROR and old.sha256 == unread_digest(key, path))
            ):
                continue
            todo.append((key, label, path, old))
        return unread, todo, changed or bool(unread) or bool(todo)

    def _unread_record(self, key: str, label: str, path: Path, reason: str, old: Record | None) -> Record:
        stat = path.lstat()
        extra = {k: v for k, v in (old.extra if old else {}).items() if k != "link"}
        return Record(
            path=key,
            label=label,
            sha256=unread_digest(key, path),
            source=old.source if old else None,
            status=STATUS_ERROR,
            error=reason,
            size=stat.st_size,
            mtime=stat.st_mtime,
            extra=extra,
        )

    def refresh(self, show_progress: bool = True) -> None:
        """Add new files, drop vanished ones and re-hash changed ones, then save the manifest.

        Nothing is locked or written when nothing changed, so a read-only dataset opens fine.
        """
        if not self._scan()[2] and self.manifest_path.exists():
            return
        with dataset_lock(self.root):
            self._load()  # another writer may have saved since this object read the manifest
            unread, todo, changed = self._scan()
            on_disk = {path.relative_to(self.root).as_posix() for _, path in self.class_files()}
            for key in list(self.records):
                if key not in on_disk and self.records[key].status != STATUS_QUARANTINED:
                    del self.records[key]
            self.records.update(unread)
            for key, label, path, old in progress(todo, "Indexing images", disable=not show_progress):
                record = describe_file(
                    path, self.root, label, self.config, source=old.source if old else None
                )
                if old:
                    record.extra = old.extra
                self.records[key] = record
            if changed or not self.manifest_path.exists():
                self.save()

    def save(self) -> None:
        """Write the manifest under the lock, merged with changes other writers saved meanwhile."""
        with dataset_lock(self.root):
            mine = {key: _canonical(record) for key, record in self.records.items()}
            disk = _read_lines(self.manifest_path) if self.manifest_path.exists() else {}
            merged: dict[str, tuple[str, Record]] = {}
            for key in disk.keys() | mine.keys():
                if mine.get(key) != self._base.get(key):
                    if key in mine:  # added or changed here (a key deleted here stays deleted)
                        merged[key] = (mine[key], self.records[key])
                elif key in disk:  # untouched here: the manifest's current version wins
                    merged[key] = disk[key]
            ordered = sorted(merged)
            atomic_write_text(self.manifest_path, "".join(merged[key][0] + "\n" for key in ordered))
            self.records.clear()
            self.records.update({key: merged[key][1] for key in ordered})
            self._base = {key: merged[key][0] for key in ordered}

    def usable(self, include_abstain: bool = True) -> list[Record]:
        """Records that decode and are not quarantined, in a stable order."""
        return [
            r
            for r in sorted(self.records.values(), key=lambda r: r.path)
            if r.usable and (include_abstain or r.label != ABSTAIN_LABEL)
        ]

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.label for r in self.usable()).items()))

    def labels(self) -> list[str]:
        """The dataset's own labels (class folders with a record, and ``other``), ``other`` last."""
        names = {r.label for r in self.records.values() if r.status != STATUS_ERROR} | {ABSTAIN_LABEL}
        return sorted(names, key=lambda label: (label == ABSTAIN_LABEL, label))

    def abspath(self, record: Record) -> Path:
        return self.root / record.path


def read_manifest(path: Path) -> list[Record]:
    """Every record of a manifest; :class:`DatasetError` (with the line) if it is damaged."""
    return [record for _, record in _read_lines(Path(path)).values()]


def write_manifest(path: Path, records: Iterable[Record]) -> None:
    """Replace a manifest under the dataset lock, atomically (a crash never leaves half of one)."""
    path = Path(path)
    with dataset_lock(path.parent):
        text = "".join(_canonical(record) + "\n" for record in sorted(records, key=lambda r: r.path))
        atomic_write_text(path, text)


def label_for(path: Path, source_root: Path) -> str:
    """Label of an imported file: ``other`` if any folder on its way is called so, else its folder."""
    parts = path.relative_to(source_root).parts[:-1]
    if any(part.lower() == ABSTAIN_LABEL for part in (source_root.name, *parts)):
        return ABSTAIN_LABEL
    return parts[-1] if parts else source_root.name


def _place(path: Path, folder: Path, digest: str, link: bool) -> Path:
    """Copy (or symlink) ``path`` into ``folder`` under a name no file has: never overwrite.

    The name is tried as is, then with the content hash, then numbered; each try creates the
    file exclusively (``O_EXCL`` or ``symlink``), so even a file that appears meanwhile is safe.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = [path.name, f"{path.stem}-{digest[:8]}{path.suffix}"]
    names += (f"{path.stem}-{digest[:8]}-{n}{path.suffix}" for n in range(2, 10_000))
    for name in names:
        destination = folder / name
        try:
            if link:
                destination.symlink_to(path.resolve())
            else:
                with open(path, "rb") as source, open(destination, "xb") as target:
                    shutil.copyfileobj(source, target)
                shutil.copystat(path, destination)
        except FileExistsError:
            continue
        return destination
    raise OSError(f"no free file name for {path.name} in {folder}")


def import_images(
    sources: Iterable[str | Path],
    out: str | Path,
    link: bool = False,
    config: Config | None = None,
    label: str | None = None,
    show_progress: bool = True,
    problems: list[str] | None = None,
) -> dict[str, int]:
    """Copy (or symlink) images from folders into a dataset; re-running imports nothing twice.

    Each source is a folder of class folders, a single class folder, or an image file. A source
    file already imported with the same content is skipped; exact duplicates from different
    source files are kept, for ``egr clean`` to find and log (import never silently drops data),
    and a name already taken gets a new one. Files whose folder name is not a usable label
    (:func:`validate_label`) are refused, one line each folder in ``problems`` (or a logged
    warning), and the rest are imported. Holds the dataset lock throughout.
    """
    config = config or Config()
    forced = validate_label(label) if label is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[tuple[Path, Path]] = []
    for source in map(Path, sources):
        if not source.exists():
            raise FileNotFoundError(f"import source not found: {source}")
        if source.is_file():
            files.append((source, source.parent))
        else:
            files.extend((p, source) for p in sorted(source.rglob("*")) if p.is_file() and is_image_path(p))
    stats = Counter(imported=0, skipped=0, unreadable=0, refused=0)
    refused: dict[str, tuple[str, int]] = {}
    with dataset_lock(out):
        dataset = Dataset(out, config)
        dataset.refresh(show_progress=False)
        known = {(r.source, r.sha256) for r in dataset.records.values()}
        for path, source_root in progress(files, "Importing", disable=not show_progress):
            folder_label = forced or label_for(path, source_root)
            try:
                target_label = forced or validate_label(folder_label)
                digest = sha256_file(path)
            except (LabelError, OSError) as error:
                why, count = refused.get(str(path.parent), (str(error), 0))
                refused[str(path.parent)] = (why, count + 1)
                stats["refused"] += 1
                continue
            source_name = str(path.resolve())
            if (source_name, digest) in known:
                stats["skipped"] += 1
                continue
            destination = _place(path, out / target_label, digest, link)
            record = describe_file(destination, out, target_label, config, source=source_name)
            if link:
                record.extra["link"] = os.path.realpath(destination)
            dataset.records[record.path] = record
            known.add((source_name, digest))
            stats["imported"] += 1
            stats["unreadable"] += record.status == STATUS_ERROR
        dataset.save()
    for folder, (why, count) in refused.items():
        line = f"refused {count} file{'s' * (count != 1)} in {printable(folder)}: {why}"
        if problems is None:
            logger.warning(line)
        else:
            problems.append(line)
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
    first_with_sha: dict[str, int] = {}
    edges: list[tuple[int, int]] = []
    for i, record in enumerate(records):
        if record.sha256 in first_with_sha:
            edges.append((i, first_with_sha[record.sha256]))
        else:
            first_with_sha[record.sha256] = i
    edges.extend((a, b) for a, b, _ in near_duplicate_pairs(records))
    return union_find(len(records), edges)


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
