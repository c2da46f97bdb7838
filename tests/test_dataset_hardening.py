"""Dataset folders as untrusted input (issue 11, items 7, 9, 12, 13): labels, symlinks out of the
dataset, damaged manifests, import name collisions, and concurrent writers in real processes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
from pathlib import Path

import pytest
from conftest import pattern_image

from ethnic_group_recognizer.dataset import (
    MANIFEST_NAME,
    STATUS_ERROR,
    Dataset,
    DatasetError,
    LabelError,
    content_digest,
    import_images,
    validate_label,
)


# -- the one label rule ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("kimono", "kimono"),
        ("  Hani people ", "Hani people"),
        ("e\u0301t\u00e9", "\u00e9t\u00e9"),  # NFC: a decomposed accent becomes one character
        ("x" * 100, "x" * 100),
        ("Ñandú / no", None),
        ("a\\b", None),
        ("", None),
        ("   ", None),
        (".", None),
        ("..", None),
        (".hidden", None),
        ("x" * 101, None),
        ("a\x00b", None),
        ("tab\there", None),
        ("line\nbreak", None),
        ("zero\u200bwidth", None),
        ("\U0001f600" * 70, None),  # 70 characters, but 280 bytes: too long for a folder name
    ],
)
def test_validate_label(label: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(LabelError) as caught:
            validate_label(label)
        assert isinstance(caught.value, ValueError) and str(caught.value)
    else:
        assert validate_label(label) == expected


def test_import_refuses_bad_folder_names_and_imports_the_rest(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for folder in ("kimono", "bad\x01name", "x" * 120, "hanbok"):
        (source / folder).mkdir(parents=True)
        pattern_image("stripes", len(folder)).save(source / folder / "a.jpg")
    problems: list[str] = []
    stats = import_images([source], tmp_path / "out", problems=problems, show_progress=False)
    assert stats["imported"] == 2 and stats["refused"] == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["hanbok", "kimono"]
    assert len(problems) == 2
    assert any("control or invisible character" in p for p in problems)
    assert all(p.isprintable() for p in problems), "a folder name could drive the terminal"
    assert any("characters long" in p for p in problems)
    with pytest.raises(LabelError, match="path separator"):
        import_images([source / "kimono"], tmp_path / "out", label="a/b", show_progress=False)


# -- item 12: name collisions never lose a file ----------------------------------------------
def _collision_sources(tmp_path: Path) -> list[Path]:
    """s1/same.jpg, s2/same-<8 hex of s3's sha256>.jpg and s3/same.jpg, all different."""
    s3 = tmp_path / "s3" / "kimono"
    s3.mkdir(parents=True)
    pattern_image("checker", 3).save(s3 / "same.jpg")
    digest = hashlib.sha256((s3 / "same.jpg").read_bytes()).hexdigest()
    for name, seed, file in (("s1", 1, "same.jpg"), ("s2", 2, f"same-{digest[:8]}.jpg")):
        (tmp_path / name / "kimono").mkdir(parents=True)
        pattern_image("stripes", seed).save(tmp_path / name / "kimono" / file)
    return [tmp_path / name for name in ("s1", "s2", "s3")]


@pytest.mark.parametrize("link", [False, True])
def test_import_name_collisions_keep_every_file(tmp_path: Path, link: bool) -> None:
    sources = _collision_sources(tmp_path)
    out = tmp_path / "out"
    stats = import_images(sources, out, link=link, show_progress=False)
    present = sorted((out / "kimono").iterdir())
    assert stats["imported"] == 3 == len(present)
    originals = sorted(p.read_bytes() for s in sources for p in (s / "kimono").iterdir())
    assert sorted(p.read_bytes() for p in present) == originals  # nothing overwritten
    assert all(p.is_symlink() == link for p in present)
    dataset = Dataset.open(out)
    assert sorted(dataset.records) == sorted(f"kimono/{p.name}" for p in present)
    assert all(r.usable for r in dataset.records.values())
    again = import_images(sources, out, link=link, show_progress=False)
    assert again["imported"] == 0 and again["skipped"] == 3


def test_import_never_overwrites_a_file_that_is_not_in_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "src" / "kimono").mkdir(parents=True)
    pattern_image("stripes", 1).save(tmp_path / "src" / "kimono" / "a.jpg")
    out = tmp_path / "out"
    (out / "kimono").mkdir(parents=True)
    (out / "kimono" / "a.jpg").write_bytes(b"someone else's file")
    import_images([tmp_path / "src"], out, show_progress=False)
    assert (out / "kimono" / "a.jpg").read_bytes() == b"someone else's file"
    assert len(list((out / "kimono").iterdir())) == 2


# -- item 7: symlinks out of the dataset are recorded, never followed --------------------------
def test_refresh_records_symlinks_out_of_the_dataset_without_reading_them(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    pattern_image("circles", 1).save(outside / "photo.jpg")
    (outside / "secret.txt").write_text("not for the manifest")
    root = tmp_path / "ds"
    (root / "kimono").mkdir(parents=True)
    pattern_image("stripes", 1).save(root / "kimono" / "own.jpg")
    (root / "kimono" / "inside_link.jpg").symlink_to(root / "kimono" / "own.jpg")
    (root / "kimono" / "photo.jpg").symlink_to(outside / "photo.jpg")
    (root / "kimono" / "secret.jpg").symlink_to(outside / "secret.txt")
    (root / "linked").symlink_to(outside, target_is_directory=True)  # a class folder that leads out
    dataset = Dataset.open(root)
    assert dataset.records["kimono/own.jpg"].usable
    assert dataset.records["kimono/inside_link.jpg"].usable  # stays inside: fine
    for key in ("kimono/photo.jpg", "kimono/secret.jpg", "linked/photo.jpg"):
        record = dataset.records[key]
        assert record.status == STATUS_ERROR and "outside the dataset" in record.error, key
        assert record.width is None and record.format is None, "the target was opened"
        assert record.sha256 != hashlib.sha256((outside / "photo.jpg").read_bytes()).hexdigest()
        assert content_digest(root, record) == record.sha256
    assert dataset.counts() == {"kimono": 2}
    assert Dataset.open(root).records == dataset.records  # stable: a second refresh changes nothing
    # Replaced by a real file, it is indexed like any other.
    (root / "kimono" / "photo.jpg").unlink()
    shutil.copy(outside / "photo.jpg", root / "kimono" / "photo.jpg")
    assert Dataset.open(root).records["kimono/photo.jpg"].usable


def test_refresh_marks_a_class_folder_that_is_not_a_label(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "bad\x7fname").mkdir(parents=True)
    pattern_image("stripes", 1).save(root / "bad\x7fname" / "a.jpg")
    record = Dataset.open(root).records["bad\x7fname/a.jpg"]
    assert record.status == STATUS_ERROR and "not a usable label" in record.error


# -- item 9: damaged manifests are refused with the line -------------------------------------
@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"path": "kimono/a.jpg", "label": "kimono", "sha2', "line 2"),
        ('{"path": "/etc/passwd", "label": "kimono", "sha256": "0"}', "not a path inside the dataset"),
        ('{"path": "../x.jpg", "label": "kimono", "sha256": "0"}', "not a path inside the dataset"),
        ('{"path": "kimono/b.jpg", "label": "kimono", "sha256": "0", "size": "big"}', "wrong type"),
        ('{"path": "kimono/b.jpg", "label": "kimono", "sha256": "0", "evil": 1}', "unknown field"),
        ("[" * 100_000, "line 2"),
        ('{"path": "kimono/b.jpg", "label": "kimono", "sha256": "0", "size": ' + "9" * 5000 + "}", "line 2"),
        ("[]", "not a JSON object"),
    ],
)
def test_a_damaged_manifest_is_a_clear_error(tmp_path: Path, line: str, why: str) -> None:
    root = tmp_path / "ds"
    (root / "kimono").mkdir(parents=True)
    pattern_image("stripes", 1).save(root / "kimono" / "a.jpg")
    Dataset.open(root)
    manifest = root / MANIFEST_NAME
    manifest.write_text(manifest.read_text() + line + "\n")
    for attempt in (lambda: Dataset(root), lambda: Dataset.open(root)):
        with pytest.raises(DatasetError, match="manifest is damaged") as caught:
            attempt()
        assert why in str(caught.value) and "egr data info" in str(caught.value)
    assert manifest.read_text().endswith(line + "\n"), "a refused manifest is left as it is"


def test_save_keeps_what_another_writer_saved_meanwhile(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "kimono").mkdir(parents=True)
    for i in range(3):
        pattern_image("stripes", i).save(root / "kimono" / f"{i}.jpg")
    Dataset.open(root)
    first, second = Dataset(root), Dataset(root)
    first.records["kimono/0.jpg"].extra["note"] = "first"
    first.save()
    second.records["kimono/1.jpg"].extra["note"] = "second"
    del second.records["kimono/2.jpg"]
    second.save()
    records = Dataset(root).records
    assert records["kimono/0.jpg"].extra == {"note": "first"}
    assert records["kimono/1.jpg"].extra == {"note": "second"}
    assert "kimono/2.jpg" not in records
    assert second.records["kimono/0.jpg"].extra == {"note": "first"}  # the saver sees the merge


def _import_worker(source: str, out: str, barrier) -> None:
    barrier.wait(timeout=60)
    import_images([source], out, show_progress=False)


def _note_worker(root: str, name: str, keys: list[str], rounds: int, barrier) -> None:
    barrier.wait(timeout=60)
    for round_ in range(rounds):
        dataset = Dataset(root)
        for key in keys:
            dataset.records[key].extra[name] = round_
        dataset.save()


def _run(targets: list[tuple]) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(targets))
    processes = [context.Process(target=t, args=(*args, barrier)) for t, *args in targets]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
        assert process.exitcode == 0, f"a writer failed (exit {process.exitcode})"


def _valid_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_importing_at_once_lose_nothing(tmp_path: Path) -> None:
    for name, kind in (("a", "stripes"), ("b", "checker")):
        folder = tmp_path / name / f"class_{name}"
        folder.mkdir(parents=True)
        for i in range(12):
            pattern_image(kind, i).save(folder / f"{i}.jpg")
    out = tmp_path / "out"
    _run([(_import_worker, str(tmp_path / "a"), str(out)), (_import_worker, str(tmp_path / "b"), str(out))])
    entries = _valid_jsonl(out / MANIFEST_NAME)
    assert len(entries) == 24 == len([p for p in out.rglob("*.jpg")])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "a temp file was left behind"


def test_two_processes_saving_at_once_keep_both_changes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "kimono").mkdir(parents=True)
    for i in range(8):
        pattern_image("stripes", i).save(root / "kimono" / f"{i}.jpg")
    keys = sorted(Dataset.open(root).records)
    _run([(_note_worker, str(root), "one", keys[:4], 25), (_note_worker, str(root), "two", keys[4:], 25)])
    records = {e["path"]: e for e in _valid_jsonl(root / MANIFEST_NAME)}
    assert [records[k]["extra"] for k in keys[:4]] == [{"one": 24}] * 4
    assert [records[k]["extra"] for k in keys[4:]] == [{"two": 24}] * 4
