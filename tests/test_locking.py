"""The dataset write lock and atomic writes, with real processes and threads (issue 11, item 9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ethnic_group_recognizer.locking import DatasetBusyError, atomic_write_text, dataset_lock

HOLD = (
    "import sys\n"
    "from ethnic_group_recognizer.locking import dataset_lock\n"
    "with dataset_lock(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.readline()\n"
)


def holder(root: Path) -> subprocess.Popen:
    """Another process holding the lock until it reads a line (or is killed)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_process_waits_then_refuses_with_a_clear_message(tmp_path: Path) -> None:
    other = holder(tmp_path)
    try:
        started = time.monotonic()
        busy = pytest.raises(DatasetBusyError, match="another egr command is changing the dataset")
        with busy, dataset_lock(tmp_path, wait_s=0.5):
            pass
        assert time.monotonic() - started >= 0.5
    finally:
        other.communicate("\n", timeout=30)
    with dataset_lock(tmp_path, wait_s=5):  # released: free again
        pass


def test_the_waiting_writer_gets_the_lock_once_it_is_released(tmp_path: Path) -> None:
    other = holder(tmp_path)

    def release() -> None:
        other.stdin.write("\n")
        other.stdin.flush()

    threading.Timer(0.5, release).start()
    try:
        with dataset_lock(tmp_path, wait_s=60):
            assert other.wait(timeout=30) == 0
    finally:
        other.communicate(timeout=30)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    other = holder(tmp_path)
    os.kill(other.pid, signal.SIGKILL)
    other.wait(timeout=30)
    with dataset_lock(tmp_path, wait_s=5):
        pass
    assert sorted(os.listdir(tmp_path)) == [], "the lock adds no file to the dataset"


def test_nested_in_one_thread_and_exclusive_between_threads(tmp_path: Path) -> None:
    order: list[str] = []
    with dataset_lock(tmp_path):
        with dataset_lock(tmp_path):  # a writer calling another writer does not deadlock
            pass

        def other_thread() -> None:
            with dataset_lock(tmp_path, wait_s=30):
                order.append("other")

        thread = threading.Thread(target=other_thread)
        thread.start()
        time.sleep(0.3)
        order.append("first")
    thread.join(timeout=30)
    assert order == ["first", "other"]
    with dataset_lock(tmp_path):
        refused = threading.Thread(target=lambda: order.append(_try_lock(tmp_path)))
        refused.start()
        refused.join(timeout=30)
    assert order[-1] == "busy"


def _try_lock(root: Path) -> str:
    try:
        with dataset_lock(root, wait_s=0.2):
            return "got"
    except DatasetBusyError:
        return "busy"


def test_concurrent_atomic_writes_use_unique_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "manifest.jsonl"
    errors: list[BaseException] = []

    def writer(text: str) -> None:
        try:
            for _ in range(200):
                atomic_write_text(target, text)
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(f"{n}\n" * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert target.read_text() in {f"{n}\n" * 1000 for n in range(4)}
    assert os.listdir(tmp_path) == ["manifest.jsonl"], "a temp file was left behind"
