"""One exclusive writer per dataset folder, and temp files that never collide.

Every command that changes a dataset (import, refresh of the manifest, clean, review actions, undo,
crash recovery) holds :func:`dataset_lock` while it writes, so two processes can never interleave
their writes to ``manifest.jsonl`` or the cleaning journal. The lock is ``fcntl.flock`` on the
dataset folder itself: the kernel releases it when a process dies, so a crash never leaves a stale
lock behind, and no lock file is added to the dataset (a read-only dataset can still be locked).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

#: How long a second writer waits for the first before giving up with a clear message.
DEFAULT_WAIT_S = 30.0

# flock is per open file description, so two threads of one process opening the file twice would
# block each other; a re-entrant lock per folder lets one process nest writers safely.
_local_locks: dict[Path, threading.RLock] = {}
_local_depth: dict[Path, int] = {}
_local_files: dict[Path, int] = {}
_guard = threading.Lock()


class DatasetBusyError(RuntimeError):
    """Another process is writing to the same dataset folder."""


@contextlib.contextmanager
def dataset_lock(root: str | Path, wait_s: float = DEFAULT_WAIT_S) -> Iterator[None]:
    """Hold the dataset's exclusive write lock; wait up to ``wait_s`` seconds, then refuse."""
    root = Path(root).resolve()
    deadline = time.monotonic() + wait_s  # one wait in all, for the thread lock and the file lock
    with _guard:
        local = _local_locks.setdefault(root, threading.RLock())
    if not local.acquire(timeout=max(wait_s, 0.0)):
        raise DatasetBusyError(_busy_message(root))
    try:
        depth = _local_depth.get(root, 0)
        if depth == 0:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        raise DatasetBusyError(_busy_message(root)) from None
                    time.sleep(0.05)
            _local_files[root] = fd
        _local_depth[root] = depth + 1
        try:
            yield
        finally:
            _local_depth[root] -= 1
            if _local_depth[root] == 0:
                fd = _local_files.pop(root)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
    finally:
        local.release()


def _busy_message(root: Path) -> str:
    return f"another egr command is changing the dataset {root}; wait for it to finish and try again"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``path`` through a uniquely named temp file beside it, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
