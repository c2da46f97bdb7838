"""``egr clean``: each finder catches its plant and nothing else; actions never lose a byte.

The dataset is generated (conftest patterns: one obvious pattern per class) with planted
problems: an exact copy, a near copy, a mirrored copy, the same photo under two labels, a
mislabelled image, an 'other'-like image, a tiny one, a truncated file and HTML named .jpg.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps
from typer.testing import CliRunner

from ethnic_group_recognizer import clean
from ethnic_group_recognizer.cli import app
from ethnic_group_recognizer.dataset import STATUS_QUARANTINED, Dataset, read_manifest

CLASSES = {"Bai people": "stripes", "Hani people": "checker", "Kazakhs": "circles", "other": "noise"}
PLANTS = {
    "Bai people/copy.jpg": "exact_duplicate",
    "Hani people/near.jpg": "near_duplicate",
    "Kazakhs/mirror.jpg": "near_duplicate",
    "Bai people/cross.jpg": "cross_label",
    "Kazakhs/circles_3.jpg": "cross_label",  # the original of the cross-label copy
    "Bai people/mislabel.jpg": "mislabel",
    "Hani people/noise.jpg": "other_like",
    "Kazakhs/tiny.jpg": "tiny",
    "Kazakhs/odd.jpg": "outlier",
    "Bai people/corrupt.jpg": "unreadable",
    "Hani people/html.jpg": "unreadable",
}


def planted_image(kind: str, seed: int, size: int = 160) -> Image.Image:
    """A fixed class pattern (texture and colour: what the backbone sees) over a random layout
    (a gradient and a large disc: what the perceptual hash sees), so that a class is uniform to
    the model while no two images look like copies."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    base = 150 + 80 * (ramp - ramp.mean())
    if kind == "noise":  # the 'none of these' kind of picture
        base = base[..., None] + rng.normal(0, 35, (size, size, 3))
        return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    image = Image.fromarray(np.clip(np.repeat(base[..., None], 3, axis=2), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    cx, cy = rng.integers(size // 5, size - size // 5, 2).tolist()
    shade, radius = int(rng.choice([95, 205])), size // 5
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(shade, shade, shade))
    offset = int(rng.integers(0, 16))
    if kind == "stripes":
        for left in range(offset - 16, size, 16):
            draw.rectangle([left, 0, left + 7, size], fill=(200, 30, 30))
    elif kind == "checker":
        for left in range(offset - 20, size, 20):
            for top in range(offset - 20, size, 20):
                if ((left - offset) // 20 + (top - offset) // 20) % 2:
                    draw.rectangle([left, top, left + 9, top + 9], fill=(30, 60, 200))
    else:  # circles
        for cx in range(offset, size, 40):
            for cy in range(offset, size, 40):
                draw.ellipse([cx - 11, cy - 11, cx + 11, cy + 11], fill=(30, 170, 60))
    return image


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_planted(root: Path, per_class: int = 20) -> Path:
    for index, (label, kind) in enumerate(CLASSES.items()):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            (root / label / f"{kind}_{i}.jpg").write_bytes(_jpeg(planted_image(kind, seed=index * 1000 + i)))
    (root / "Bai people/copy.jpg").write_bytes((root / "Bai people/stripes_0.jpg").read_bytes())
    near = Image.open(root / "Hani people/checker_1.jpg").resize((150, 150))
    (root / "Hani people/near.jpg").write_bytes(_jpeg(near, quality=70))
    mirrored = ImageOps.mirror(Image.open(root / "Kazakhs/circles_2.jpg"))
    (root / "Kazakhs/mirror.jpg").write_bytes(_jpeg(mirrored, quality=80))
    (root / "Bai people/cross.jpg").write_bytes((root / "Kazakhs/circles_3.jpg").read_bytes())
    (root / "Bai people/mislabel.jpg").write_bytes(_jpeg(planted_image("checker", seed=2000)))
    (root / "Hani people/noise.jpg").write_bytes(_jpeg(planted_image("noise", seed=3999)))
    y, x = np.mgrid[-80:80, -80:80]
    rings = (np.sin(np.hypot(x, y) / 2.5) > 0)[..., None] * np.array([255, 0, 255])  # like nothing else
    (root / "Kazakhs/odd.jpg").write_bytes(_jpeg(Image.fromarray(rings.astype(np.uint8))))
    (root / "Kazakhs/tiny.jpg").write_bytes(_jpeg(planted_image("circles", seed=2999, size=60)))
    whole = _jpeg(planted_image("stripes", seed=77))
    (root / "Bai people/corrupt.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "Hani people/html.jpg").write_bytes(b"<!doctype html><html><body>Not found</body></html>")
    return root


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return make_planted(tmp_path / "dataset")


@pytest.fixture(scope="module")
def planted_report(tmp_path_factory) -> clean.CleanReport:
    root = make_planted(tmp_path_factory.mktemp("report") / "dataset")
    return clean.find_issues(root, show_progress=False)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the dataset except the cleaner's own bookkeeping."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).as_posix().startswith(".clean/")
    }


def test_each_finder_catches_its_plant_and_nothing_else(planted_report: clean.CleanReport) -> None:
    flags = {f.path: f for f in planted_report.flags}
    for path, check in PLANTS.items():
        assert path in flags, f"{path} ({check}) was not flagged"
        assert check in flags[path].checks, f"{path}: expected {check}, got {flags[path].reasons}"
    assert set(flags) == set(PLANTS), f"unexpected flags: {sorted(set(flags) - set(PLANTS))}"
    assert planted_report.skipped == {}


def test_flags_carry_reasons_scores_and_suggestions(planted_report: clean.CleanReport) -> None:
    flags = {f.path: f for f in planted_report.flags}
    scores = [f.score for f in planted_report.flags]
    assert scores == sorted(scores, reverse=True), "queue must be most suspicious first"
    assert all(0 < f.score <= 1 and f.reasons for f in planted_report.flags)
    assert flags["Bai people/mislabel.jpg"].suggestion == "relabel:Hani people"
    assert "stripes_0.jpg" in flags["Bai people/copy.jpg"].reasons[0]
    assert "mirrored" in flags["Kazakhs/mirror.jpg"].reasons[0]
    assert flags["Kazakhs/mirror.jpg"].group == ["Kazakhs/circles_2.jpg"]
    assert "truncated" in flags["Bai people/corrupt.jpg"].reasons[0]
    assert "Kazakhs" in flags["Bai people/cross.jpg"].reasons[0]
    assert {f.path for f in planted_report.flags if f.safe} == {
        "Bai people/copy.jpg",
        "Bai people/corrupt.jpg",
        "Hani people/html.jpg",
    }


def test_other_folder_option_feeds_the_other_like_check(tmp_path: Path) -> None:
    root = make_planted(tmp_path / "dataset")
    other = tmp_path / "elsewhere"
    (root / "other").rename(other)
    report = clean.find_issues(root, show_progress=False)
    assert "other_like" in report.skipped and "Hani people/noise.jpg" not in {
        f.path for f in report.flags if "other_like" in f.checks
    }
    report = clean.find_issues(root, other_dirs=[other], show_progress=False)
    assert "other_like" in {c for f in report.flags if f.path == "Hani people/noise.jpg" for c in f.checks}
    with pytest.raises(FileNotFoundError, match="--other folder not found"):
        clean.find_issues(root, other_dirs=[tmp_path / "missing"], show_progress=False)


def test_remove_relabel_keep_and_undo_all_restore_every_byte(planted: Path) -> None:
    before_files = snapshot(planted)
    clean.find_issues(planted, clean.CleanOptions(embeddings=False), show_progress=False)
    before_manifest = (planted / "manifest.jsonl").read_bytes()
    before_files = snapshot(planted)

    auto = clean.auto_fix(planted)
    assert auto is not None and {m["from"] for m in auto["moves"]} == {
        "Bai people/copy.jpg",
        "Bai people/corrupt.jpg",
        "Hani people/html.jpg",
    }
    for move in auto["moves"]:
        assert not (planted / move["from"]).exists()
        assert move["to"].startswith(".quarantine/") and (planted / move["to"]).is_file()
    clean.relabel(planted, "Bai people/mislabel.jpg", "Hani people")
    clean.remove(planted, ["Hani people/noise.jpg"], reasons=["looks like other"])
    clean.keep(planted, ["Kazakhs/circles_2.jpg"], remove_paths=["Kazakhs/mirror.jpg"])

    dataset = Dataset.open(planted)
    records = dataset.records
    assert records["Bai people/copy.jpg"].status == STATUS_QUARANTINED  # kept in the manifest
    assert records["Hani people/mislabel.jpg"].label == "Hani people"
    assert "Bai people/mislabel.jpg" not in records
    assert (planted / "Hani people/mislabel.jpg").is_file()
    assert records["Kazakhs/circles_2.jpg"].extra["review"]["decision"] == "keep"
    assert records["Kazakhs/mirror.jpg"].status == STATUS_QUARANTINED
    usable = {r.path for r in dataset.usable()}
    assert "Bai people/copy.jpg" not in usable and "Hani people/noise.jpg" not in usable

    log_before_undo = (planted / ".clean/actions.jsonl").read_bytes()
    undone = clean.undo(planted, all_actions=True)
    assert len(undone) == 4
    assert (planted / ".clean/actions.jsonl").read_bytes().startswith(log_before_undo), "log is append-only"
    assert snapshot(planted) == before_files
    assert (planted / "manifest.jsonl").read_bytes() == before_manifest
    assert clean.undo(planted) == []


def test_undo_reverts_only_the_last_action(planted: Path) -> None:
    clean.remove(planted, ["Hani people/noise.jpg"])
    clean.remove(planted, ["Kazakhs/tiny.jpg"])
    (entry,) = clean.undo(planted)
    assert entry["moves"][0]["to"] == "Kazakhs/tiny.jpg"
    assert (planted / "Kazakhs/tiny.jpg").is_file()
    assert not (planted / "Hani people/noise.jpg").exists()
    history = clean.history(planted)
    assert [e["kind"] for e in history] == ["remove", "remove", "undo"]
    assert [e["undone"] for e in history] == [False, True, False]


def test_actions_refuse_bad_requests(planted: Path) -> None:
    with pytest.raises(clean.CleanError, match="not in the dataset manifest"):
        clean.remove(planted, ["Bai people/nope.jpg"])
    with pytest.raises(clean.CleanError, match="already labelled"):
        clean.relabel(planted, "Bai people/stripes_1.jpg", "Bai people")
    with pytest.raises(clean.CleanError, match="not a usable label"):
        clean.relabel(planted, "Bai people/stripes_1.jpg", "../escape")
    (planted / "Bai people/stripes_1.jpg").write_bytes(_jpeg(planted_image("stripes", seed=5)))
    with pytest.raises(clean.CleanError, match="changed since it was indexed"):
        clean.remove(Dataset(planted), ["Bai people/stripes_1.jpg"])
    clean.remove(planted, ["Bai people/stripes_2.jpg"])
    with pytest.raises(clean.CleanError, match="already removed"):
        clean.remove(planted, ["Bai people/stripes_2.jpg"])


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from ethnic_group_recognizer import clean
    real_replace = os.replace
    calls = 0
    crash_at, when = int(sys.argv[2]), sys.argv[3]

    def dying_replace(src, dst):
        global calls
        calls += 1
        if calls == crash_at and when == "before":
            os._exit(3)
        real_replace(src, dst)
        if calls == crash_at and when == "after":
            os._exit(3)

    os.replace = dying_replace
    clean.remove(sys.argv[1], ["Bai people/stripes_1.jpg", "Hani people/checker_2.jpg"])
    os._exit(0)
    """
)


@pytest.mark.parametrize(("crash_at", "when"), [(1, "after"), (2, "after"), (3, "before"), (3, "after")])
def test_a_crash_mid_action_leaves_the_dataset_consistent(planted: Path, crash_at: int, when: str) -> None:
    """Kill the process at a file move or at the manifest write; recovery puts everything back."""
    Dataset.open(planted)
    before_files = snapshot(planted)
    before_records = {r.path: r for r in read_manifest(planted / "manifest.jsonl")}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(planted), str(crash_at), when],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr  # it really died mid-action
    assert clean.recover(planted) == 1
    assert snapshot(planted) == before_files
    assert {r.path: r for r in read_manifest(planted / "manifest.jsonl")} == before_records
    assert clean.recover(planted) == 0
    # The dataset works normally afterwards, and the interrupted action is not undoable.
    assert clean.undo(planted) == []
    clean.remove(planted, ["Bai people/stripes_1.jpg"])
    clean.undo(planted)
    assert snapshot(planted) == before_files


runner = CliRunner()


def test_cli_jsonl_queue_auto_and_undo(planted: Path) -> None:
    result = runner.invoke(app, ["clean", str(planted), "--jsonl", "--no-embeddings"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    # Structured rows (architecture issue): each check's own reason and score, and what to do.
    assert rows and all(
        set(row) == {"path", "label", "score", "action", "checks", "suggestion"} for row in rows
    )
    assert all(row["checks"] and {"check", "reason", "score"} <= set(row["checks"][0]) for row in rows)
    by_path = {row["path"]: row for row in rows}
    assert by_path["Bai people/copy.jpg"]["action"] == "auto"
    assert by_path["Kazakhs/tiny.jpg"]["action"] == "review"
    assert [c["check"] for c in by_path["Bai people/corrupt.jpg"]["checks"]] == ["unreadable"]
    assert "truncated" in by_path["Bai people/corrupt.jpg"]["checks"][0]["reason"]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert {r["path"] for r in rows} >= {"Bai people/copy.jpg", "Bai people/corrupt.jpg", "Kazakhs/tiny.jpg"}
    assert (planted / ".clean/queue.jsonl").is_file()

    before = snapshot(planted)
    result = runner.invoke(app, ["clean", str(planted), "--auto", "--no-embeddings"])
    assert result.exit_code == 0, result.output
    assert "moved 3 files" in result.stderr
    assert "Bai people/copy.jpg" not in result.stdout  # the table shows what is left
    assert not (planted / "Bai people/copy.jpg").exists()
    result = runner.invoke(app, ["clean", str(planted), "--undo"])
    assert result.exit_code == 0, result.output
    assert snapshot(planted) == {
        **before,
        **{k: v for k, v in snapshot(planted).items() if k.startswith(".")},
    }
    assert (planted / "Bai people/copy.jpg").read_bytes() == before["Bai people/copy.jpg"]


def test_cli_reports_a_missing_dataset(tmp_path: Path) -> None:
    result = runner.invoke(app, ["clean", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "dataset folder not found" in result.stderr
