"""The real ``egr`` entry point, run as a user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from conftest import make_dataset, pattern_image

EGR = str(Path(sys.executable).parent / "egr")


def egr(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([EGR, *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"egr {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def test_predict_jsonl_one_object_per_image_and_errors_as_objects(tmp_path):
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    pattern_image("stripes", 1).save(folder / "a.jpg")
    pattern_image("circles", 2).save(tmp_path / "photos" / "b.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    result = egr("predict", str(tmp_path / "photos"), "--jsonl")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3
    by_name = {Path(item["path"]).name: item for item in lines}
    assert "error" in by_name["broken.jpg"] and "label" not in by_name["broken.jpg"]
    good = by_name["a.jpg"]
    assert (
        set(good)
        == {
            "path",
            "label",
            "confidence",
            "scores",
            "prediction_set",
            "coverage",
            "low_data",
        }
        and len(good["scores"]) == 12
    )
    assert good["label"] is None or good["label"] in good["scores"]
    assert isinstance(good["low_data"], bool) and isinstance(good["prediction_set"], list)


def test_predict_exit_code_when_nothing_is_usable(tmp_path):
    (tmp_path / "x.jpg").write_text("nope")
    result = egr("predict", str(tmp_path / "x.jpg"), "--jsonl", check=False)
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = egr("predict", str(empty), check=False)
    assert result.returncode == 2 and "no images found" in result.stderr


def test_predict_csv(tmp_path):
    pattern_image("checker", 3).save(tmp_path / "c.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    egr("predict", str(tmp_path), "--csv", str(tmp_path / "out.csv"))
    with (tmp_path / "out.csv").open(newline="", encoding="utf-8") as handle:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(handle)}
    assert set(rows) == {"c.jpg", "broken.jpg"} and "Uzbeks" in rows["c.jpg"]
    good, broken = rows["c.jpg"], rows["broken.jpg"]
    for column in ("abstained", "low_data", "prediction_set"):
        assert column in good, column
    assert good["abstained"] == ("true" if good["label"] == "" else "false")
    assert good["low_data"] in ("true", "false") and broken["error"] and broken["abstained"] == ""


def test_import_train_evaluate_predict_round_trip(tmp_path):
    source = make_dataset(tmp_path / "source", per_class=6)
    egr("data", "import", str(source), "--out", str(tmp_path / "ds"))
    again = egr("data", "import", str(source), "--out", str(tmp_path / "ds"))
    assert "imported 0" in again.stderr
    trained = egr(
        "train",
        str(tmp_path / "ds"),
        "--out",
        str(tmp_path / "model"),
        "--name",
        "cli-test",
        "--coverage",
        "0.8",
    )
    assert "trained " in trained.stderr and " images in " in trained.stderr and "threshold " in trained.stderr
    metadata = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert metadata["options"]["coverage"] == 0.8
    egr("evaluate", str(tmp_path / "model"), str(tmp_path / "ds"), "--out", str(tmp_path / "report"))
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["split"] == "val"
    result = egr("predict", str(source / "Kazakhs"), "--model", str(tmp_path / "model"), "--jsonl")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 6
    # 6 photos a class, fewer than 20 training images behind every label: each answer is low-data
    assert all(row["low_data"] is (row["label"] is not None) for row in rows)
    table = egr("predict", str(source / "Kazakhs"), "--model", str(tmp_path / "model"), "--threshold", "0")
    assert table.stdout.count(" training images") == 6, table.stdout


def test_clear_errors_for_missing_inputs(tmp_path):
    result = egr("train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"), check=False)
    assert result.returncode == 2 and "not found" in result.stderr
    result = egr("data", "import", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d"), check=False)
    assert result.returncode == 2 and "not found" in result.stderr


def test_threshold_override(tmp_path):
    from conftest import pattern_image as image

    for i in range(3):
        image("noise", 40 + i).save(tmp_path / f"n{i}.jpg")
    result = egr("predict", str(tmp_path), "--jsonl", "--threshold", "0")
    assert all(json.loads(line)["label"] is not None for line in result.stdout.splitlines())
    result = egr("predict", str(tmp_path), "--jsonl", "--threshold", "1")
    assert all(json.loads(line)["label"] is None for line in result.stdout.splitlines())
    result = egr("predict", str(tmp_path), "--threshold", "2", check=False)
    assert result.returncode == 2 and "between 0 and 1" in result.stderr


def test_square_brackets_in_paths_survive_error_messages(tmp_path):
    """Rich markup must not eat "[draft]" nor crash on "[/x]": the path is printed as it is."""
    missing = f"{tmp_path}/photos/[draft]/[/x]"
    result = egr("data", "info", missing, check=False)
    assert result.returncode == 2, result.stderr
    assert f"error: dataset folder not found: {missing}\n" in result.stderr
    assert "MarkupError" not in result.stderr and "Traceback" not in result.stderr

    folder = tmp_path / "photos" / "[draft]"
    folder.mkdir(parents=True)
    pattern_image("stripes", 1).save(folder / "a [red].jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    result = egr("predict", str(folder))
    rows = result.stdout.splitlines()[1:]  # under the header: one table row per readable image
    assert len(rows) == 1 and rows[0].startswith(f"{folder / 'a [red].jpg'} "), result.stdout
    assert f"{folder / 'broken.jpg'}: " in result.stderr


def test_progress_bar_on_stderr_and_silent_when_there_is_nothing_to_do(tmp_path):
    source = tmp_path / "source" / "Kazakhs"
    source.mkdir(parents=True)
    pattern_image("circles", 1).save(source / "a.jpg")
    result = egr("data", "import", str(tmp_path / "source"), "--out", str(tmp_path / "ds"))
    assert "Importing" in result.stderr and "1/1" in result.stderr
    assert "Importing" not in result.stdout
    (tmp_path / "empty").mkdir()
    result = egr("data", "import", str(tmp_path / "empty"), "--out", str(tmp_path / "ds2"))
    assert "imported 0" in result.stderr
    assert "Importing" not in result.stderr and "0/0" not in result.stderr


def test_progress_helper_is_silent_for_zero_items(capsys):
    from ethnic_group_recognizer.progress import progress

    assert list(progress([], "Nothing")) == []
    assert list(progress(range(0), "Nothing", total=0)) == []
    assert list(progress(iter(()), "Nothing", total=0)) == []
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_import_says_unreadable_files_are_part_of_the_imported_count(tmp_path):
    source = tmp_path / "source" / "Uzbeks"
    source.mkdir(parents=True)
    pattern_image("checker", 1).save(source / "good.jpg")
    (source / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    result = egr("data", "import", str(tmp_path / "source"), "--out", str(tmp_path / "ds"))
    line = " ".join(result.stderr.split())
    assert "imported 2 (1 of them unreadable: kept and marked, never trained on;" in line
    assert "--auto moves them to .quarantine/)" in line and "refused 0" in line
    clean = egr("data", "import", str(tmp_path / "source"), "--out", str(tmp_path / "ds"))
    assert "unreadable" not in clean.stderr  # nothing new imported, nothing to say about it
