"""The write-ahead log of cleaning actions: apply, recover from a crash, undo.

Every action is appended to ``DATASET/.clean/actions.jsonl`` *before* any file moves: a ``begin``
line with each move (``from``, ``to``, ``sha256``) and the manifest records before and after,
then the moves, the manifest, and a ``commit`` line. :func:`recover` rolls back an action
without its commit; :func:`undo` reverts committed ones, checking each file's sha256.

The log is input like any other: a dataset copied from someone else may carry a crafted one.
Every path in it is checked to name a file inside the dataset folder (relative, no ``..``, no
symlinked folder leading out, never the cleaner's own bookkeeping) before anything moves; a
log that fails is refused as a whole and left as it is. Every writer holds the dataset's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from ethnic_group_recognizer import locking
from ethnic_group_recognizer.clean.errors import CleanError
from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.dataset import (
    MANIFEST_NAME,
    Dataset,
    DatasetError,
    Record,
    check_relative_path,
    is_inside,
    unread_digest,
)
from ethnic_group_recognizer.images import sha256_file

CLEAN_DIR = ".clean"
ACTIONS_FILE = "actions.jsonl"
#: Seconds a second writer waits for the dataset's lock before it gives up with a message.
LOCK_WAIT_S = locking.DEFAULT_WAIT_S


# -- the lock, and datasets that may be damaged ---------------------------------------------------
@contextlib.contextmanager
def writing(root: str | Path) -> Iterator[None]:
    """Hold the dataset's exclusive write lock (waiting up to :data:`LOCK_WAIT_S`), or CleanError."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    try:
        with locking.dataset_lock(root, wait_s=LOCK_WAIT_S):
            yield
    except locking.DatasetBusyError as error:
        raise CleanError(str(error)) from None


def load_dataset(root: str | Path, config: Config | None = None) -> Dataset:
    """The dataset as its manifest says, or CleanError naming the manifest line that is broken."""
    try:
        return Dataset(root, config)
    except ValueError as error:  # DatasetError: the message names the line and what to do
        raise CleanError(str(error)) from None


# -- paths from the log are untrusted -----------------------------------------------------------
def inside(root: Path, relative: object, what: str = "path", min_parts: int = 2) -> Path:
    """``root / relative`` when that names a place inside the dataset, else CleanError.

    Refused: anything but a relative POSIX path, ``..``, NUL, a folder on the way that resolves
    outside the dataset (a symlink out), and the cleaner's own files (``.clean/``; the manifest
    sits at the top, so a file path needs ``min_parts`` components). The last component
    may itself be a symlink: moving it moves the link, never what it points to.
    """
    try:
        check_relative_path(relative)
    except DatasetError:
        raise CleanError(f"{what} {relative!r} is not a path inside the dataset {root}") from None
    pure = PurePosixPath(relative)
    if len(pure.parts) < min_parts or pure.parts[0] == CLEAN_DIR:
        raise CleanError(f"{what} {relative!r} is not a path inside the dataset {root}")
    base = root.resolve()
    target = base.joinpath(*pure.parts)
    parent = target.parent.resolve()
    if parent != base and base not in parent.parents:
        raise CleanError(f"{what} {relative!r} leads outside the dataset {root} (through a symlink)")
    return target


def _check_record(root: Path, key: object, data: object, what: str) -> Record:
    inside(root, key, f"{what} record")
    if not isinstance(data, dict):
        raise CleanError(f"{what} record {key!r} is not an object")
    try:
        record = Record(**data)
    except TypeError as error:
        raise CleanError(f"{what} record {key!r}: {error}") from None
    if record.path != key or not isinstance(record.extra, dict):
        raise CleanError(f"{what} record {key!r} does not describe that path")
    quarantine = record.extra.get("quarantine")
    if quarantine is not None:
        inside(
            root, quarantine.get("path") if isinstance(quarantine, dict) else quarantine, "quarantine path"
        )
    return record


def check_action(root: Path, entry: dict) -> None:
    """Refuse an action from the log unless every move, record and folder it names is inside ``root``."""
    where = f"action {entry['id']} in {root / CLEAN_DIR / ACTIONS_FILE}"
    try:
        for move in entry["moves"]:
            inside(root, move["from"], "move source")
            inside(root, move["to"], "move destination")
        for side in ("before", "after"):
            for key, data in entry[side].items():
                _check_record(root, key, data, side)
        for folder in entry.get("created_dirs", []):
            inside(root, folder, "created folder", min_parts=1)
    except CleanError as error:
        raise CleanError(f"refusing {where}: {error}; nothing was changed") from None


# -- the log ------------------------------------------------------------------------------------
def log_path(root: Path) -> Path:
    return Path(root) / CLEAN_DIR / ACTIONS_FILE


def read_log(root: str | Path) -> list[dict]:
    """Every entry of the append-only action log, oldest first.

    A torn last line (a crash mid-append: it was never acted on) is ignored; any other line that
    is not a JSON object is a damaged log, refused with its line number.
    """
    path = log_path(Path(root))
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, absurdly deep or long numbers
            if number == len(lines):  # no newline after it: torn
                continue
            entry = None
        if not isinstance(entry, dict):
            raise CleanError(
                f"{path}: line {number} is not a log entry; the log is damaged "
                "(restore it, or move it away to give up the undo history)"
            )
        entries.append(entry)
    return entries


def _append(root: Path, entry: dict) -> None:
    """Append one line (fsynced), first cutting a torn last line, which was never acted on, or
    ending a whole one that lost only its newline."""
    path = log_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":  # rare: only after a crash mid-append, so reading it all is fine
                handle.seek(0)
                data = handle.read()
                start = data.rfind(b"\n") + 1
                try:
                    json.loads(data[start:])
                except (ValueError, RecursionError):
                    handle.truncate(start)
                else:
                    handle.write(b"\n")
                handle.flush()
                os.fsync(handle.fileno())
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _entry_problem(entry: dict) -> str | None:
    """What makes a log entry unusable (None: its shape is right; paths are checked on use)."""
    if not _is_text(entry.get("id")):
        return "no action id"
    if entry.get("event") != "begin":
        return None
    if not _is_text(entry.get("kind")):
        return "no action kind"
    moves = entry.get("moves")
    if not isinstance(moves, list) or not all(
        isinstance(m, dict) and all(isinstance(m.get(k), str) for k in ("from", "to", "sha256"))
        for m in moves
    ):
        return "its moves are not a list of {from, to, sha256}"
    if not all(isinstance(entry.get(side), dict) for side in ("before", "after")):
        return "its records before and after are missing"
    if entry["kind"] == "undo" and not _is_text(entry.get("undoes")):
        return "an undo that names no action"
    if not isinstance(entry.get("created_dirs", []), list):
        return "its created folders are not a list"
    return None


def actions(root: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Begin entries by id, and each id's final state (commit / rollback); absent: open."""
    begins: dict[str, dict] = {}
    state: dict[str, str] = {}
    for entry in read_log(root):
        if entry.get("event") not in ("begin", "commit", "rollback"):
            continue
        problem = _entry_problem(entry)
        if problem:
            raise CleanError(f"{log_path(root)}: a {entry.get('event')} entry is damaged: {problem}")
        if entry["event"] == "begin":
            begins[entry["id"]] = entry
        else:
            state[entry["id"]] = entry["event"]
    return begins, state


def history(root: str | Path) -> list[dict]:
    """Committed actions, oldest first, each with ``undone`` set when a later undo reverted it."""
    begins, state = actions(Path(root))
    committed = [e for i, e in begins.items() if state.get(i) == "commit"]
    undone = {e["undoes"] for e in committed if e["kind"] == "undo"}
    return [dict(e, undone=e["id"] in undone) for e in committed]


# -- applying and rolling back --------------------------------------------------------------------
def _created_dirs(root: Path, moves: list[dict]) -> list[str]:
    """Folders the moves will create (outermost first), so that undo can take them away again."""
    created: dict[str, None] = {}
    for move in moves:
        parts = PurePosixPath(move["to"]).parts
        for depth in range(1, len(parts)):
            folder = PurePosixPath(*parts[:depth]).as_posix()
            if folder not in created and not os.path.lexists(root / folder):
                created[folder] = None
    return list(created)


def _remove_empty_dirs(root: Path, folders: Iterable[str]) -> None:
    """Remove the folders an action created, innermost first, where they are empty again."""
    for folder in sorted(folders, key=lambda f: -len(PurePosixPath(f).parts)):
        path = root / folder
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()  # refuses a folder that is not empty


def _move_back(root: Path, moves: list[dict]) -> None:
    for move in reversed(moves):
        src, dst = root / move["from"], root / move["to"]
        if os.path.lexists(dst) and not os.path.lexists(src):
            src.parent.mkdir(parents=True, exist_ok=True)
            os.replace(dst, src)


def _set_records(root: Path, remove: Iterable[str], put: dict[str, dict]) -> None:
    dataset = load_dataset(root)
    for key in remove:
        dataset.records.pop(key, None)
    for key, data in put.items():
        dataset.records[key] = Record(**data)
    dataset.save()


def _remove_orphaned_temp_files(root: Path) -> None:
    """Temp files a killed writer left beside the manifest or the queue (atomic writes name them
    ``.NAME.*.tmp``); under the lock no writer is mid-write, so each one found is an orphan."""
    for folder, name in ((root, MANIFEST_NAME), (root / CLEAN_DIR, "queue.jsonl")):
        for orphan in folder.glob(f".{name}.*.tmp"):
            if orphan.is_file() and not orphan.is_symlink():
                with contextlib.suppress(OSError):
                    orphan.unlink()


def recover(root: str | Path) -> int:
    """Roll back any action a crash interrupted; returns how many. Safe to call at any time.

    An action is in effect only once its ``commit`` line is in the log. One without it is
    undone here: files go back to where they were, and the manifest records named in its
    ``begin`` line are restored, so the dataset is exactly as before the action started. Every
    open action is checked first; if one names a path outside the dataset, nothing is done.
    """
    root = Path(root)
    if not log_path(root).exists():
        return 0
    with writing(root):
        begins, state = actions(root)
        unfinished = [entry for action_id, entry in begins.items() if action_id not in state]
        for entry in unfinished:
            check_action(root, entry)
        _remove_orphaned_temp_files(root)
        for entry in unfinished:
            _move_back(root, entry["moves"])
            _set_records(root, entry["after"], entry["before"])
            _remove_empty_dirs(root, entry.get("created_dirs", []))
            _append(root, {"event": "rollback", "id": entry["id"], "time": time.time()})
        return len(unfinished)


def _unchanged(root: Path, move: dict, record: Record | None) -> bool:
    """Whether the file a move takes is still the one indexed with the move's digest.

    A file the manifest records without reading it (a symlink out of the dataset) is identified by
    the path it was indexed under and its link text, never read; a symlink ``egr data import
    --link`` made is read where it points, as refresh reads it; nothing else outside is read.
    """
    src, digest = root / move["from"], move["sha256"]
    names = {move["from"], move["to"]} | ({record.path} if record is not None else set())
    if any(digest == unread_digest(name, src) for name in names):
        return True
    link = record.extra.get("link") if record is not None else None
    if not is_inside(root, src) and not (src.is_symlink() and link == os.path.realpath(src)):
        return False
    return sha256_file(src) == digest


def _check_destination(root: Path, relative: str) -> None:
    """Refuse a move whose destination is taken or lies under a file (before anything is logged)."""
    if os.path.lexists(root / relative):
        raise CleanError(f"{relative}: a file is already there")
    for parent in PurePosixPath(relative).parents:
        path = root / parent
        if parent.parts and os.path.lexists(path) and not path.is_dir():
            raise CleanError(f"{relative}: {parent.as_posix()} is a file, not a folder")


def apply(
    dataset: Dataset,
    kind: str,
    moves: list[dict],
    before: dict[str, Record],
    after: dict[str, Record],
    note: dict | None = None,
) -> dict:
    """Log, move, update the manifest, commit: the one write path every action goes through.

    The caller holds :func:`writing` for the dataset.
    """
    root = dataset.root
    for move in moves:
        inside(root, move["from"], "move source")
        inside(root, move["to"], "move destination")
        src = root / move["from"]
        if not os.path.lexists(src):
            raise CleanError(f"{move['from']}: file is missing; run 'egr data info' to refresh the manifest")
        record = before.get(move["from"]) or before.get(move["to"])
        if not _unchanged(root, move, record):
            raise CleanError(f"{move['from']}: file changed since it was indexed; re-run 'egr clean'")
        _check_destination(root, move["to"])
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
    created = _created_dirs(root, moves)
    if created:
        entry["created_dirs"] = created
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
    with writing(root):
        recover(root)
        dataset = load_dataset(root, config)
        dataset.refresh(show_progress=show_progress)
    return dataset


def reopen(dataset: Dataset | str | Path) -> Dataset:
    """The dataset as it is on disk now (after recovery); the caller holds :func:`writing`."""
    if isinstance(dataset, Dataset):
        recover(dataset.root)
        return load_dataset(dataset.root, dataset.config)
    return open_dataset(dataset)


def root_of(dataset: Dataset | str | Path) -> Path:
    return dataset.root if isinstance(dataset, Dataset) else Path(dataset)


def undo(dataset: Dataset | str | Path, all_actions: bool = False) -> list[dict]:
    """Revert the last action not yet undone (or all of them, newest first); returns the undo entries.

    Each file's sha256 is checked before it moves back, so a restoration is byte-exact or refused;
    the folders the action created (a new class folder, say) go away again when empty.
    """
    with writing(root_of(dataset)):
        dataset = reopen(dataset)
        done = []
        while True:
            pending = [e for e in history(dataset.root) if e["kind"] != "undo" and not e["undone"]]
            if not pending:
                break
            action = pending[-1]
            check_action(dataset.root, action)
            moves = [
                {"from": m["to"], "to": m["from"], "sha256": m["sha256"]} for m in reversed(action["moves"])
            ]
            before = {k: dataset.records.get(k) or Record(**v) for k, v in action["after"].items()}
            after = {k: Record(**v) for k, v in action["before"].items()}
            for key, record in before.items():
                current = dataset.records.get(key)
                if current is None or current.sha256 != record.sha256:
                    raise CleanError(f"cannot undo {action['kind']} of {key}: it changed after that action")
            done.append(apply(dataset, "undo", moves, before, after, {"undoes": action["id"]}))
            _remove_empty_dirs(dataset.root, action.get("created_dirs", []))
            if not all_actions:
                break
        return done
