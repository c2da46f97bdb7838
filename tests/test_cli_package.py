"""The ``egr`` package as a user meets it: --version, --help, usage lines, one-line errors, the table.

Every check runs the installed ``egr`` script in a subprocess, as a shell would.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pattern_image
from rich.console import Console

from ethnic_group_recognizer.cli.clean import browser_url
from ethnic_group_recognizer.cli.predictions import ABSTAINED_TEXT, csv_header, csv_row, results_table
from ethnic_group_recognizer.images import ImageError, load_image
from ethnic_group_recognizer.model import Recognizer

EGR = str(Path(sys.executable).parent / "egr")


def egr(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # help panels wide enough that no sentence is folded
    return subprocess.run([EGR, *args], capture_output=True, text=True, timeout=300, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    """Exit 2, ``error: …`` on one stderr line, no traceback, nothing on stdout."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert result.stdout == ""


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for seed, kind in enumerate(("stripes", "circles", "checker", "noise", "stripes", "circles")):
        pattern_image(kind, 100 + seed).save(folder / f"{kind}_{seed}.jpg")
    return folder


def test_version_is_the_installed_package_version():
    result = egr("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"egr {importlib.metadata.version('ethnic-group-recognizer')}\n"


def test_help_opens_with_what_the_tool_does_for_a_user():
    result = egr("--help")
    assert result.returncode == 0, result.stderr
    text = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    assert text[0].startswith("Usage: egr [OPTIONS] COMMAND")
    assert text[1].startswith("Recognise what a photo shows"), text[1]
    assert "none of these" in result.stdout and "--version" in result.stdout
    for developer_note in ("thin Typer", "``", "parses, calls, prints", "register("):
        assert developer_note not in result.stdout
    for command in ("data", "collect", "clean", "review", "train", "evaluate", "predict", "serve", "site"):
        assert f" {command} " in result.stdout, command


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        (["predict"], "Usage: egr predict [OPTIONS] PATH..."),
        (["data", "import"], "Usage: egr data import [OPTIONS] SRC..."),
        (["evaluate"], "Usage: egr evaluate [OPTIONS] MODEL DATASET"),
        (["collect"], "Usage: egr collect [OPTIONS] [LABEL...]"),
        (["embed"], "Usage: egr embed [OPTIONS] SOURCE..."),
    ],
)
def test_usage_lines_name_arguments_as_the_readme_does(command, usage):
    result = egr(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert usage in result.stdout, result.stdout
    usage_line = next(line for line in result.stdout.splitlines() if "Usage:" in line)
    assert "{" not in usage_line and "}" not in usage_line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--batch-size", "0"], ["--batch-size", "got 0"]),
        (["--batch-size", "-3"], ["--batch-size", "got -3"]),
        (["--csv", "/nonexistent/dir/x.csv"], ["--csv /nonexistent/dir/x.csv", "No such file"]),
        (["--engine", "spark"], ["engine 'spark'"]),
        (["--threshold", "2"], ["between 0 and 1"]),
    ],
)
def test_bad_predict_arguments_exit_2_with_one_line(photos, args, expected):
    assert_one_line_error(egr("predict", str(photos), *args), *expected)


def test_csv_naming_a_folder_exits_2(photos, tmp_path):
    assert_one_line_error(egr("predict", str(photos), "--csv", str(tmp_path)), f"--csv {tmp_path}")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--coverage", "1.5"], ["--coverage", "1.5"]),
        (["--coverage", "0"], ["--coverage"]),
        (["--mode", "magic"], ["--mode", "'magic'"]),
        (["--backbone", "lite9"], ["--backbone", "'lite9'"]),
        (["--abstain-target", "1.5"], ["--abstain-target"]),
        (["--epochs", "0"], ["--epochs"]),
    ],
)
def test_bad_train_options_are_refused_by_the_options_with_one_line(tmp_path, args, expected):
    """TrainOptions and Config check them (before the dataset is read); the CLI only reports."""
    result = egr("train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"), *args)
    assert_one_line_error(result, *expected)
    assert not (tmp_path / "m").exists()


def test_embed_batch_size_is_checked_by_config(photos, tmp_path):
    assert_one_line_error(
        egr("embed", str(photos), "--out", str(tmp_path / "e"), "--batch-size", "0"), "--batch-size"
    )


def _cells(line: str, starts: list[int]) -> list[str]:
    ends = [*starts[1:], None]
    return [line[start:end].strip() for start, end in zip(starts, ends, strict=True)]


def test_plain_table_is_aligned_with_an_abstention_and_flags_low_data(photos):
    rows = [
        json.loads(line)
        for line in egr("predict", str(photos), "--jsonl", "--threshold", "0").stdout.splitlines()
    ]
    confidences = sorted(row["confidence"] for row in rows)
    assert confidences[0] < confidences[-1], "the photos must differ for one to abstain and one not"
    # between the lowest and the highest confidence: at least one abstains and one is answered
    threshold = (confidences[0] + confidences[-1]) / 2
    result = egr("predict", str(photos), "--threshold", f"{threshold:.6f}")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert len(lines) == len(rows) and "\t" not in result.stdout
    columns = ["path", "label", "confidence", "low data"]
    has_sets = "prediction set" in header  # a model with set calibration adds that column last
    if has_sets:
        columns.append("prediction set")
    starts = [header.index(name) for name in columns]
    assert starts == sorted(starts)
    low_data = set(Recognizer.load().low_data_labels())
    seen_abstained = seen_answered = False
    confidence_end = starts[2] + len("confidence")
    for line in lines:
        path, label, confidence, flag, *members = _cells(line, starts)
        if has_sets:
            assert (members[0] == "") == (label == ABSTAINED_TEXT), line
            assert label == ABSTAINED_TEXT or members[0].split("; ")[0] == label, line
        assert Path(path).parent == photos, line
        assert line[starts[1] - 1] == " " and line[starts[1]] != " ", line  # label column aligned
        assert line[confidence_end - 1].isdigit() and line[confidence_end] == " ", line  # right-aligned
        if label == ABSTAINED_TEXT:
            seen_abstained = True
            assert flag == ""
        else:
            seen_answered = True
            assert (flag != "") == (label in low_data), line
            if flag:
                assert flag.startswith("yes: ") and flag.endswith(" training images")
        assert 0 <= float(confidence) <= 1
    assert seen_abstained and seen_answered, result.stdout
    assert "none of the 12" not in result.stdout


def test_jsonl_and_csv_carry_low_data_abstained_and_prediction_set(photos, tmp_path):
    low_data = set(Recognizer.load().low_data_labels())
    out = tmp_path / "out.csv"
    result = egr("predict", str(photos), "--jsonl", "--threshold", "0", "--csv", str(out))
    rows = {row["path"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert rows and all(row["label"] is not None for row in rows.values())
    for row in rows.values():
        assert row["low_data"] is (row["label"] in low_data)
        assert isinstance(row["prediction_set"], list)
    with out.open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert {row["path"] for row in table} == set(rows)
    for line in table:
        row = rows[line["path"]]
        assert line["abstained"] == "false" and line["label"] == row["label"]
        assert line["low_data"] == ("true" if row["low_data"] else "false")
        assert line["prediction_set"] == "; ".join(row["prediction_set"])
    abstaining = egr("predict", str(photos), "--jsonl", "--threshold", "1").stdout.splitlines()
    assert all(json.loads(line)["low_data"] is False for line in abstaining)


def test_table_and_csv_show_a_prediction_set_when_the_model_has_one():
    """A model calibrated for sets puts the set in a column headed with its coverage."""
    rows = [
        {
            "path": "a.jpg",
            "label": "kimono",
            "confidence": 0.8,
            "scores": {"kimono": 0.8, "kilt": 0.1},
            "prediction_set": ["kimono", "kilt"],
            "coverage": 0.9,
            "low_data": True,
        },
        {
            "path": "b [draft].jpg",
            "label": None,
            "confidence": 0.3,
            "scores": {"kimono": 0.3, "kilt": 0.2},
            "prediction_set": [],
            "coverage": 0.9,
            "low_data": False,
        },
    ]
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(results_table(rows, {"kimono": 12, "kilt": 40}))
    text = console.export_text()
    assert "prediction set (90%)" in text and "kimono; kilt" in text
    assert "yes: 12 training images" in text and ABSTAINED_TEXT in text and "b [draft].jpg" in text
    assert csv_header(["kimono", "kilt"])[:7] == [
        "path",
        "label",
        "confidence",
        "abstained",
        "low_data",
        "prediction_set",
        "error",
    ]
    assert csv_row(rows[0], ["kimono", "kilt"]) == [
        "a.jpg",
        "kimono",
        0.8,
        "false",
        "true",
        "kimono; kilt",
        "",
        0.8,
        0.1,
    ]
    assert csv_row(rows[1], ["kimono", "kilt"])[3] == "true"


def test_decoding_error_is_worded_as_the_image_gate_words_it(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (tmp_path / "notes.png").write_text("no image at all")
    with pytest.raises(ImageError) as truncated:
        load_image(broken)
    with pytest.raises(ImageError) as not_image:
        load_image(tmp_path / "notes.png")
    result = egr("predict", str(tmp_path), "--jsonl")
    errors = {Path(row["path"]).name: row["error"] for row in map(json.loads, result.stdout.splitlines())}
    assert errors == {"broken.jpg": str(truncated.value), "notes.png": str(not_image.value)}
    plain = egr("predict", str(tmp_path))
    assert f"{broken}: {truncated.value}" in plain.stderr and plain.returncode == 1


def test_data_import_reports_refused_folders_and_a_bad_label(tmp_path):
    source = tmp_path / "source"
    (source / "kimono").mkdir(parents=True)
    (source / ".drafts").mkdir()
    (source / "bad\x1bname").mkdir()
    pattern_image("stripes", 1).save(source / "kimono" / "a.jpg")
    pattern_image("circles", 2).save(source / ".drafts" / "b.jpg")
    pattern_image("checker", 3).save(source / "bad\x1bname" / "c.jpg")
    result = egr("data", "import", str(source), "--out", str(tmp_path / "ds"))
    assert result.returncode == 0, result.stderr
    refused = [line for line in result.stderr.splitlines() if line.startswith("refused ")]
    assert len(refused) == 2, result.stderr
    assert "\x1b" not in result.stderr and "bad\\x1bname" in result.stderr
    assert "imported 1," in result.stderr and "refused 2" in result.stderr
    bad = egr("data", "import", str(source / "kimono"), "--out", str(tmp_path / "ds2"), "--label", ".x")
    assert_one_line_error(bad, "--label", "starts with '.'")


def test_data_info_damaged_manifest_exits_2(tmp_path):
    dataset = tmp_path / "ds"
    (dataset / "kimono").mkdir(parents=True)
    pattern_image("stripes", 1).save(dataset / "kimono" / "a.jpg")
    (dataset / "manifest.jsonl").write_text("{not json\n", encoding="utf-8")
    assert_one_line_error(egr("data", "info", str(dataset)), "the manifest is damaged")
    assert_one_line_error(egr("train", str(dataset), "--out", str(tmp_path / "m")), "the manifest is damaged")


def test_review_without_a_queue_exits_2_and_urls_for_any_address(tmp_path):
    dataset = tmp_path / "ds"
    (dataset / "kimono").mkdir(parents=True)
    result = egr("review", str(dataset), "--no-open", "--port", "1")
    assert_one_line_error(result, "egr clean")
    assert browser_url("0.0.0.0", 8765) == "http://127.0.0.1:8765/"
    assert browser_url("::", 8765) == "http://[::1]:8765/"
    assert browser_url("::1", 80) == "http://[::1]:80/"
    assert browser_url("127.0.0.1", 9) == "http://127.0.0.1:9/"


def test_serve_on_a_busy_port_says_so_in_one_line_before_loading_anything():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = egr("serve", "--host", "127.0.0.1", "--port", str(port))
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], done.stderr
    assert "serving" not in done.stderr and "Traceback" not in done.stderr
