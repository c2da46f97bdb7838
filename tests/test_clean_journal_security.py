"""The cleaning journal is untrusted input; clean's writers take the dataset lock; labels are checked.

A dataset copied from someone else may carry a crafted ``.clean/actions.jsonl``: recovery (which
runs on every plain ``egr clean DS``) and undo must never move a file outside the dataset, nor
pull one in, and must leave the log as it is. Every test here uses real files in tmp_path and,
for the lock, a real second process.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ethnic_group_recognizer import clean
from ethnic_group_recognizer.clean import journal
from ethnic_group_recognizer.cli import app
from ethnic_group_recognizer.dataset import Dataset, LabelError
from ethnic_group_recognizer.images import sha256_file

runner = CliRunner()


def _photo(seed: int) -> bytes:
    """A noisy picture with a random gradient: no two look alike to the perceptual hash."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:160, 0:160] / 160
    angle = rng.uniform(0, 2 * np.pi)
    base = 128 + 90 * (np.cos(angle) * x + np.sin(angle) * y - 0.5)
    pixels = np.clip(base[..., None] + rng.normal(0, 30, (160, 160, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def tree(root: Path) -> dict[str, bytes]:
    """Every file (and symlink) below ``root``, with its bytes (a link: its target text)."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[key] = b"->" + os.readlink(path).encode()
        elif path.is_file():
            found[key] = path.read_bytes()
    return found


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path]:
    """A small dataset and, beside it, a folder outside it with a file of its own."""
    root = tmp_path / "dataset"
    for index, label in enumerate(("Bai people", "Kazakhs")):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"img_{i}.jpg").write_bytes(_photo(100 * index + i))
    Dataset.open(root, refresh=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(_photo(999))
    return root, outside


def _write_log(root: Path, entries: list[dict]) -> bytes:
    log = root / ".clean" / "actions.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    return log.read_bytes()


def _begin(moves: list[dict], before: dict | None = None, after: dict | None = None, **extra) -> dict:
    return {
        "event": "begin",
        "id": "c0ffee000001",
        "kind": "remove",
        "time": 0.0,
        "moves": moves,
        "before": before or {},
        "after": after or {},
        **extra,
    }


def _attacks(root: Path, outside: Path) -> dict[str, dict]:
    """Unfinished actions whose rollback would write a dataset file outside or pull one in."""
    inside_file = "Bai people/img_0.jpg"
    digest = sha256_file(root / inside_file)
    secret = outside / "secret.jpg"
    return {
        # rollback moves 'to' back to 'from': the dataset file would land in ../outside
        "relative source out": _begin(
            [{"from": "../outside/written.jpg", "to": inside_file, "sha256": digest}]
        ),
        "absolute source": _begin(
            [{"from": str(outside / "written.jpg"), "to": inside_file, "sha256": digest}]
        ),
        # ... or the outside file would be pulled into the dataset
        "absolute destination": _begin(
            [{"from": "Bai people/pulled.jpg", "to": str(secret), "sha256": sha256_file(secret)}]
        ),
        "relative destination out": _begin(
            [{"from": "Bai people/pulled.jpg", "to": "../outside/secret.jpg", "sha256": sha256_file(secret)}]
        ),
        # a folder inside the dataset that is a symlink out of it
        "symlinked folder": _begin(
            [{"from": "escape/written.jpg", "to": inside_file, "sha256": digest}], symlink=True
        ),
        # the records it would restore name a path outside
        "record outside": _begin(
            [],
            before={
                "../outside/x.jpg": {"path": "../outside/x.jpg", "label": "Bai people", "sha256": digest}
            },
        ),
    }


@pytest.mark.parametrize(
    "attack",
    [
        "relative source out",
        "absolute source",
        "absolute destination",
        "relative destination out",
        "symlinked folder",
        "record outside",
    ],
)
def test_recovery_refuses_a_crafted_log_and_touches_nothing(places: tuple[Path, Path], attack: str) -> None:
    root, outside = places
    entry = _attacks(root, outside)[attack]
    if entry.pop("symlink", False):
        (root / "escape").symlink_to(outside, target_is_directory=True)
    log_bytes = _write_log(root, [entry])
    dataset_before, outside_before = tree(root), tree(outside)

    with pytest.raises(clean.CleanError, match="refusing action c0ffee000001.*(outside|not a path inside)"):
        clean.recover(root)
    # every plain 'egr clean DS' recovers first: it refuses with a message and exit 2
    result = runner.invoke(app, ["clean", str(root), "--no-embeddings"])
    assert result.exit_code == 2, result.output
    assert "refusing action c0ffee000001" in result.stderr and "Traceback" not in result.output
    with pytest.raises(clean.CleanError):
        clean.remove(root, ["Kazakhs/img_1.jpg"])  # no writer goes past an unrecoverable log

    assert (root / ".clean/actions.jsonl").read_bytes() == log_bytes, "the log is left as it was"
    assert tree(root) == dataset_before
    assert tree(outside) == outside_before


def test_undo_refuses_a_crafted_committed_action(places: tuple[Path, Path]) -> None:
    """Undo reverses a committed action's moves: a crafted one would pull an outside file in."""
    root, outside = places
    secret = outside / "secret.jpg"
    digest = sha256_file(secret)
    record = {"path": "Bai people/new.jpg", "label": "Bai people", "sha256": digest}
    entries = [
        _begin(
            [{"from": "Bai people/new.jpg", "to": str(secret), "sha256": digest}],
            before={"Bai people/new.jpg": record},
            after={"Bai people/new.jpg": dict(record, status="quarantined")},
        ),
        {"event": "commit", "id": "c0ffee000001", "time": 0.0},
    ]
    log_bytes = _write_log(root, entries)
    dataset_before, outside_before = tree(root), tree(outside)

    with pytest.raises(clean.CleanError, match="not a path inside the dataset"):
        clean.undo(root)
    result = runner.invoke(app, ["clean", str(root), "--undo"])
    assert result.exit_code == 2 and "refusing action c0ffee000001" in result.stderr, result.output
    assert (root / ".clean/actions.jsonl").read_bytes() == log_bytes
    assert tree(root) == dataset_before and tree(outside) == outside_before


def test_a_damaged_log_line_is_a_clear_error_and_a_torn_last_line_is_not(places: tuple[Path, Path]) -> None:
    root, _ = places
    clean.remove(root, ["Bai people/img_0.jpg"])
    log = root / ".clean/actions.jsonl"
    good = log.read_bytes()

    log.write_bytes(good + b'{"event": "begin", "id": "half-writ')  # a crash mid-append: never acted on
    assert [e["event"] for e in clean.read_log(root)] == ["begin", "commit"]
    clean.remove(root, ["Bai people/img_1.jpg"])  # appends after cutting the torn line
    assert [e["event"] for e in clean.read_log(root)] == ["begin", "commit"] * 2
    assert len(clean.undo(root, all_actions=True)) == 2

    for damage in (b"not json at all", b"[" * 100_000, b"1" * 5_000, b'["a list"]'):
        log.write_bytes(damage + b"\n" + good)
        with pytest.raises(clean.CleanError, match="line 1 is not a log entry"):
            clean.history(root)
    result = runner.invoke(app, ["clean", str(root), "--undo"])
    assert result.exit_code == 2 and "the log is damaged" in result.stderr, result.output
    log.write_bytes(
        good + json.dumps({"event": "begin", "id": "x", "kind": "remove", "moves": 5}).encode() + b"\n"
    )
    result = runner.invoke(app, ["clean", str(root), "--no-embeddings"])
    assert result.exit_code == 2 and "damaged" in result.stderr and "Traceback" not in result.output


def test_a_damaged_manifest_is_a_clear_error(places: tuple[Path, Path]) -> None:
    root, _ = places
    manifest = root / "manifest.jsonl"
    manifest.write_bytes(manifest.read_bytes() + b"{broken\n")
    for args in (["clean", str(root), "--no-embeddings"], ["clean", str(root), "--auto"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "manifest" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("label", ["Bai\x00people", "Bai/people", "x" * 300, "../escape", "   ", ".hidden"])
def test_relabel_refuses_labels_that_cannot_be_a_class_folder(places: tuple[Path, Path], label: str) -> None:
    root, _ = places
    before = tree(root)
    with pytest.raises(clean.InvalidLabelError, match="not a usable label") as caught:
        clean.relabel(root, "Bai people/img_0.jpg", label)
    assert isinstance(caught.value, clean.CleanError) and isinstance(caught.value, LabelError)
    assert tree(root) == before


def test_undoing_a_relabel_removes_the_class_folder_it_created(places: tuple[Path, Path]) -> None:
    root, _ = places
    before = tree(root)
    entry = clean.relabel(root, "Bai people/img_0.jpg", "Hani people")
    assert (root / "Hani people/img_0.jpg").is_file()
    assert entry["created_dirs"] == ["Hani people"]
    clean.relabel(root, "Kazakhs/img_1.jpg", "Bai people")  # into a folder that was there
    clean.undo(root, all_actions=True)
    assert not (root / "Hani people").exists(), "the new class folder is gone again"
    assert (root / "Bai people").is_dir() and (root / "Kazakhs").is_dir()
    clean.remove(root, ["Kazakhs/img_2.jpg"])
    clean.undo(root)
    assert not (root / ".quarantine").exists()

    def visible(files: dict[str, bytes]) -> dict[str, bytes]:
        return {k: v for k, v in files.items() if not k.startswith(".")}

    assert visible(tree(root)) == visible(before), "every file and the manifest are as they were"


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from ethnic_group_recognizer.locking import dataset_lock
    with dataset_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _hold_lock(root: Path, seconds: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(root), str(seconds)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_waits_for_the_first(places: tuple[Path, Path], monkeypatch) -> None:
    root, _ = places
    monkeypatch.setattr(journal, "LOCK_WAIT_S", 120.0)
    holder = _hold_lock(root, 2.0)
    try:
        started = time.monotonic()
        clean.remove(root, ["Bai people/img_0.jpg"])  # waits until the other process lets go
        assert time.monotonic() - started >= 0.5
        assert holder.wait(timeout=120) == 0
    finally:
        holder.kill()
        holder.wait()
    assert (root / ".quarantine/Bai people/img_0.jpg").is_file()


def test_a_second_writer_gives_up_with_a_clear_message(places: tuple[Path, Path], monkeypatch) -> None:
    root, _ = places
    monkeypatch.setattr(journal, "LOCK_WAIT_S", 0.5)
    clean.remove(root, ["Kazakhs/img_0.jpg"])  # so that undo and recover have work
    before = tree(root)
    holder = _hold_lock(root, 600.0)
    try:
        writers = {
            "remove": lambda: clean.remove(root, ["Bai people/img_0.jpg"]),
            "relabel": lambda: clean.relabel(root, "Bai people/img_1.jpg", "Kazakhs"),
            "keep": lambda: clean.keep(root, ["Bai people/img_2.jpg"]),
            "auto_fix": lambda: clean.auto_fix(root),
            "undo": lambda: clean.undo(root),
        }
        for name, write in writers.items():
            with pytest.raises(clean.CleanError, match="another egr command is changing the dataset"):
                write()
            assert tree(root) == before, name
        (root / ".clean/actions.jsonl").write_bytes(
            (root / ".clean/actions.jsonl").read_bytes()
            + json.dumps(_begin([])).encode()
            + b"\n"  # an unfinished action: recovery has to write
        )
        with pytest.raises(clean.CleanError, match="another egr command"):
            clean.recover(root)
        result = runner.invoke(app, ["clean", str(root), "--auto"])
        assert result.exit_code == 2 and "another egr command is changing the dataset" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    assert clean.recover(root) == 1  # once the other writer is gone
