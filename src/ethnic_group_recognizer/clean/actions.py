"""What a reviewer (or ``--auto``) does to a flagged image: remove, relabel, keep.

Each is one logged, undoable action through :func:`journal.apply`, taken under the dataset's
lock; nothing is ever deleted (a removal moves the file to ``DATASET/.quarantine/``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ethnic_group_recognizer.clean.checks import safe_check_names
from ethnic_group_recognizer.clean.context import CleanOptions, CleanReport, Flag, is_kept
from ethnic_group_recognizer.clean.errors import CleanError, InvalidLabelError
from ethnic_group_recognizer.clean.find import find_issues
from ethnic_group_recognizer.clean.journal import apply, inside, reopen, root_of, writing
from ethnic_group_recognizer.dataset import (
    QUARANTINE_DIR,
    STATUS_QUARANTINED,
    Dataset,
    LabelError,
    Record,
    validate_label,
)


def _unique(path: Path, sha256: str) -> Path:
    if not os.path.lexists(path):
        return path
    candidate = path.with_name(f"{path.stem}-{sha256[:8]}{path.suffix}")
    number = 1
    while os.path.lexists(candidate):
        candidate = path.with_name(f"{path.stem}-{sha256[:8]}-{number}{path.suffix}")
        number += 1
    return candidate


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
    with writing(root_of(dataset)):
        dataset = reopen(dataset)
        if not paths:
            raise CleanError("nothing to remove")
        moves, before, after, taken = [], {}, {}, set()
        for path in dict.fromkeys(paths):
            move, record = _removal(dataset, path, reasons, taken)
            moves.append(move)
            before[path] = dataset.records[path]
            after[path] = record
        return apply(dataset, kind, moves, before, after, {"reasons": list(reasons)})


def relabel(dataset: Dataset | str | Path, path: str, label: str) -> dict:
    """Move an image to another class folder (one logged action); the label is checked like import's."""
    try:
        label = validate_label(label)
    except LabelError as error:
        raise InvalidLabelError(f"not a usable label: {error}") from None
    with writing(root_of(dataset)):
        dataset = reopen(dataset)
        record = _record(dataset, path)
        if label == record.label:
            raise CleanError(f"{path} is already labelled {label}")
        target = _unique(dataset.root / label / Path(record.path).name, record.sha256)
        relative = target.relative_to(dataset.root).as_posix()
        extra = dict(
            record.extra, relabel={"from": record.label, "from_path": record.path, "time": time.time()}
        )
        extra.pop("review", None)
        new = _copy(record, path=relative, label=label, extra=extra)
        move = {"from": record.path, "to": relative, "sha256": record.sha256}
        return apply(dataset, "relabel", [move], {record.path: record}, {relative: new})


def _kept_record(record: Record) -> Record:
    review = {"decision": "keep", "sha256": record.sha256, "time": time.time()}
    return _copy(record, extra=dict(record.extra, review=review))


def keep(dataset: Dataset | str | Path, paths: Sequence[str], remove_paths: Sequence[str] = ()) -> dict:
    """Record a reviewer's 'keep' so that the image leaves the queue (undoable like the rest).

    ``remove_paths`` quarantines others in the same action: 'keep this one of a duplicate group,
    remove the rest' is then one click and one undo.
    """
    with writing(root_of(dataset)):
        dataset = reopen(dataset)
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
        return apply(dataset, "keep", moves, before, after)


def _movable(root: Path, path: str) -> bool:
    """A file that can be quarantined without touching anything outside the dataset (a file under
    a symlinked folder cannot: it stays queued, with the reason refresh gave)."""
    try:
        inside(root, path)
    except CleanError:
        return False
    return True


def auto_fix(dataset: Dataset | str | Path, report: CleanReport | None = None) -> dict | None:
    """Quarantine only what needs no reviewer: the flags of the checks registered as safe."""
    with writing(root_of(dataset)):
        dataset = reopen(dataset)
        if report is None:
            report = find_issues(
                dataset, CleanOptions(embeddings=False, not_photo=False), show_progress=False
            )
        safe_checks = safe_check_names()
        safe = [
            f
            for f in report.flags
            if f.safe and f.path in dataset.records and dataset.records[f.path].status != STATUS_QUARANTINED
        ]
        safe = [f for f in safe if _movable(dataset.root, f.path)]
        if not safe:
            return None
        moves, before, after, taken = [], {}, {}, set()
        for flag in safe:
            reasons = [r for r, c in zip(flag.reasons, flag.checks, strict=True) if c in safe_checks]
            move, record = _removal(dataset, flag.path, reasons, taken)
            moves.append(move)
            before[flag.path] = dataset.records[flag.path]
            after[flag.path] = record
        return apply(dataset, "auto", moves, before, after)


def review_status(dataset: Dataset, flag: Flag) -> tuple[str, str]:
    """Where a queued image stands now: (pending|kept|removed|relabeled|gone, current path)."""
    record = dataset.records.get(flag.path)
    if record is not None and record.sha256 == flag.sha256:
        if record.status == STATUS_QUARANTINED:
            return "removed", flag.path
        if is_kept(record):
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
    """The file behind a manifest path, wherever it is now (its class folder or the quarantine).

    The manifest is untrusted: a path that would lead outside the dataset is refused.
    """
    record = dataset.records.get(path)
    if record is None:
        raise CleanError(f"{path}: not in the dataset manifest")
    if record.status == STATUS_QUARANTINED:
        quarantine = record.extra.get("quarantine")
        where = quarantine.get("path") if isinstance(quarantine, dict) else None
        inside(dataset.root, where, "quarantine path")
        return dataset.root / where
    inside(dataset.root, record.path, "manifest path")
    return dataset.abspath(record)
