"""The check registry: one place declares a check (name, safe, needs_embeddings), and the report,
the skipped list, ``--auto`` and the structured ``--jsonl`` rows all follow from it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ethnic_group_recognizer import clean
from ethnic_group_recognizer.clean import checks
from ethnic_group_recognizer.dataset import STATUS_QUARANTINED, Dataset
from ethnic_group_recognizer.graph import union_find

NO_EMBEDDINGS = clean.CleanOptions(embeddings=False)


def _photo(seed: int, size: int = 160) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    base = 128 + 90 * (np.cos(angle) * x + np.sin(angle) * y - 0.5)
    pixels = np.clip(base[..., None] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "dataset"
    for index, label in enumerate(("Bai people", "Kazakhs")):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"img_{i}.jpg").write_bytes(_photo(100 * index + i))
    small = _photo(7, size=60)
    (root / "Kazakhs/small.jpg").write_bytes(small)
    (root / "Kazakhs/small_copy.jpg").write_bytes(small)  # a tiny exact copy: two checks at once
    return root


@pytest.fixture
def extra_check() -> Iterator[list[str]]:
    """Registers 'kazakh_img_1' (flags one file, safe) for one test; yields what it was called on."""
    calls: list[str] = []

    @checks.register("kazakh_img_1", safe=True, summary="a test check")
    def kazakh_img_1(context) -> None:
        calls.append(context.dataset.root.name)
        context.flag("Kazakhs/img_1.jpg", "kazakh_img_1", 0.7, "the test check says so", "remove")

    try:
        yield calls
    finally:
        checks.unregister("kazakh_img_1")


def test_the_registry_declares_every_check_once_in_report_order() -> None:
    names = [c.name for c in checks.registered()]
    assert tuple(names) == clean.CHECKS == checks.check_names()
    assert names == [
        "unreadable",
        "tiny",
        "exact_duplicate",
        "near_duplicate",
        "cross_label",
        "mislabel",
        "other_like",
        "outlier",
        "not_photo",
    ]
    assert clean.SAFE_CHECKS == checks.safe_check_names() == {"unreadable", "exact_duplicate"}
    assert {c.name for c in checks.registered() if c.needs_embeddings} == {
        "mislabel",
        "other_like",
        "outlier",
    }
    assert all(c.summary for c in checks.registered())
    with pytest.raises(ValueError, match="registered twice"):
        checks.register("tiny")(lambda context: None)
    assert not hasattr(clean, "ACTION_KINDS")


def test_a_new_check_is_one_registration(dataset: Path, extra_check: list[str]) -> None:
    report = clean.find_issues(dataset, NO_EMBEDDINGS, show_progress=False)
    assert extra_check == ["dataset"]
    flags = {f.path: f for f in report.flags}
    assert flags["Kazakhs/img_1.jpg"].checks == {"kazakh_img_1": 0.7}
    assert report.counts["kazakh_img_1"] == 1 and list(report.counts)[-1] == "kazakh_img_1"
    row = flags["Kazakhs/img_1.jpg"].public()
    assert row["action"] == "auto" and row["checks"][0]["reason"] == "the test check says so"
    # registered as safe, so --auto quarantines it with the other safe fixes
    entry = clean.auto_fix(dataset)
    assert entry is not None and "Kazakhs/img_1.jpg" in {m["from"] for m in entry["moves"]}
    assert Dataset(dataset).records["Kazakhs/img_1.jpg"].status == STATUS_QUARANTINED


def test_skipped_checks_are_reported_from_the_registry(dataset: Path) -> None:
    calls: list[str] = []

    @checks.register("needs_model", needs_embeddings=True, summary="a test check")
    def needs_model(context) -> None:
        calls.append("needs_model")

    @checks.register("needs_module", requires=(("no_such_module_egr", "pip install it"),), summary="a test")
    def needs_module(context) -> None:
        calls.append("needs_module")

    @checks.register("optional", option="not_photo", summary="a test check")
    def optional(context) -> None:
        calls.append("optional")

    try:
        report = clean.find_issues(
            dataset, clean.CleanOptions(embeddings=False, not_photo=False), show_progress=False
        )
    finally:
        for name in ("needs_model", "needs_module", "optional"):
            checks.unregister(name)
    assert calls == []
    assert report.skipped == {
        "mislabel": "embeddings turned off",
        "other_like": "embeddings turned off",
        "outlier": "embeddings turned off",
        "not_photo": "turned off",
        "needs_model": "embeddings turned off",
        "needs_module": "needs no_such_module_egr: pip install it",
        "optional": "turned off",
    }
    report = clean.find_issues(dataset, NO_EMBEDDINGS, show_progress=False)
    assert report.skipped["not_photo"].startswith("embeddings turned off: only the pixel tests ran")


def test_jsonl_rows_carry_each_check_with_its_own_reason_and_score(dataset: Path) -> None:
    report = clean.find_issues(dataset, NO_EMBEDDINGS, show_progress=False)
    flags = {f.path: f for f in report.flags}
    copy = flags["Kazakhs/small_copy.jpg"].public()
    assert set(copy) == {"path", "label", "score", "action", "checks", "suggestion"}
    assert copy["action"] == "auto" and copy["suggestion"] == "remove"
    assert [(c["check"], c["safe"]) for c in copy["checks"]] == [("tiny", False), ("exact_duplicate", True)]
    tiny, duplicate = copy["checks"]
    assert (
        tiny["reason"] == "tiny: 60x60 px" and duplicate["reason"] == "exact duplicate of Kazakhs/small.jpg"
    )
    assert duplicate["score"] == 1.0 and 0.3 <= tiny["score"] <= 0.7
    assert copy["score"] == pytest.approx(1 - (1 - tiny["score"]) * (1 - duplicate["score"]), abs=1e-4)
    original = flags["Kazakhs/small.jpg"].public()
    assert original["action"] == "review" and [c["check"] for c in original["checks"]] == ["tiny"]
    assert flags["Kazakhs/small_copy.jpg"].reason_for("tiny") == "tiny: 60x60 px"


def test_union_find_groups_every_chain() -> None:
    groups = union_find(6, [(0, 1), (3, 4), (1, 2)])
    assert groups[0] == groups[1] == groups[2]
    assert groups[3] == groups[4] != groups[0]
    assert len(set(groups)) == 3 and union_find(0, []) == []
