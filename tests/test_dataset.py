"""Dataset folders: idempotent import, the manifest, refresh, and a leak-free split."""

from __future__ import annotations

import json
import shutil
from collections import Counter

from conftest import make_dataset, pattern_image

from ethnic_group_recognizer.dataset import (
    MANIFEST_NAME,
    STATUS_ERROR,
    Dataset,
    duplicate_groups,
    import_images,
    label_for,
    split,
)


def test_import_is_idempotent_and_records_everything(tmp_path):
    source = make_dataset(tmp_path / "source", per_class=3)
    (source / "Bai people" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated nonsense")
    out = tmp_path / "dataset"
    first = import_images([source], out, show_progress=False)
    assert first == {"imported": 13, "skipped": 0, "unreadable": 1, "refused": 0}
    second = import_images([source], out, show_progress=False)
    assert second["imported"] == 0 and second["skipped"] == 13
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    assert len(lines) == 13
    record = json.loads(lines[0])
    for key in ("path", "label", "sha256", "width", "height", "format", "source", "status", "phash"):
        assert key in record
    broken = Dataset(out).records["Bai people/broken.jpg"]
    assert broken.status == STATUS_ERROR and broken.error
    assert Dataset(out).counts() == {"Bai people": 3, "Hani people": 3, "Kazakhs": 3, "other": 3}


def test_exact_duplicates_from_different_files_are_kept_for_clean(tmp_path):
    source = tmp_path / "source" / "Bai people"
    source.mkdir(parents=True)
    pattern_image("stripes", 1).save(source / "a.jpg")
    shutil.copy(source / "a.jpg", source / "b.jpg")
    stats = import_images([tmp_path / "source"], tmp_path / "out", show_progress=False)
    assert stats["imported"] == 2  # import never silently drops data; clean finds the duplicate


def test_other_folder_at_any_depth_is_the_abstain_class(tmp_path):
    root = tmp_path / "src"
    assert label_for(root / "other" / "world01" / "x.jpg", root) == "other"
    assert label_for(root / "Kazakhs" / "x.jpg", root) == "Kazakhs"
    assert label_for(root / "x.jpg", root) == "src"
    assert label_for(tmp_path / "other" / "x.jpg", tmp_path / "other") == "other"


def test_name_collision_keeps_both_files(tmp_path):
    for n, kind in enumerate(("stripes", "checker")):
        folder = tmp_path / f"s{n}" / "Bai people"
        folder.mkdir(parents=True)
        pattern_image(kind, n).save(folder / "same.jpg")
    import_images([tmp_path / "s0", tmp_path / "s1"], tmp_path / "out", show_progress=False)
    assert len(list((tmp_path / "out" / "Bai people").iterdir())) == 2


def test_refresh_follows_the_folder(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=2)
    dataset = Dataset.open(root)
    assert len(dataset.records) == 8
    (root / "Kazakhs" / "circles_0.jpg").unlink()
    pattern_image("stripes", 99).save(root / "Bai people" / "new.jpg")
    dataset = Dataset.open(root)
    assert "Kazakhs/circles_0.jpg" not in dataset.records
    assert dataset.records["Bai people/new.jpg"].label == "Bai people"


def test_split_is_stratified_seeded_and_keeps_duplicates_together(tmp_path):
    root = make_dataset(tmp_path / "ds", per_class=10)
    for i in range(3):  # plant copies (one mirrored) of one image
        image = pattern_image("stripes", 0)
        if i == 2:
            image = image.transpose(0)
        image.save(root / "Bai people" / f"copy{i}.png")
    records = Dataset.open(root).usable()
    train, val = split(records, 0.2, seed=0)
    assert sorted(train + val) == list(range(len(records)))
    assert split(records, 0.2, seed=0) == (train, val)
    groups = duplicate_groups(records)
    by_path = {r.path: i for i, r in enumerate(records)}
    planted = {
        groups[by_path[p]]
        for p in ("Bai people/stripes_0.jpg", "Bai people/copy0.png", "Bai people/copy2.png")
    }
    assert len(planted) == 1, "an image, its copies and its mirror image form one group"
    planted_members = {i for i, g in enumerate(groups) if g in planted}
    assert planted_members <= set(train) or planted_members <= set(val)
    val_labels = Counter(records[i].label for i in val)
    assert set(val_labels) == {"Bai people", "Hani people", "Kazakhs", "other"}
