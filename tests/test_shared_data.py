"""Integration on the reference data in ../shared/data (skipped, saying why, when it is absent)."""

from __future__ import annotations

import json

import pytest
from conftest import require_shared_data

from ethnic_group_recognizer import LABELS, Recognizer
from ethnic_group_recognizer.config import DEFAULT_MODEL_DIR
from ethnic_group_recognizer.dataset import Dataset, import_images
from ethnic_group_recognizer.evaluate import evaluate

pytestmark = [pytest.mark.shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def shared_dataset(tmp_path_factory):
    data = require_shared_data()
    root = tmp_path_factory.mktemp("shared") / "dataset"
    sources = [data / "scraped", data / "examples", data / "other"]
    import_images(sources, root, link=True, show_progress=False)  # symlinks: no third-party copies
    return root


def test_import_sees_every_class_and_the_abstain_class(shared_dataset):
    counts = Dataset(shared_dataset).counts()
    assert set(counts) == {*LABELS, "other"}
    assert counts["other"] > 400 and counts["Akha people"] >= 1


def test_shipped_model_reproduces_its_recorded_held_out_metrics(shared_dataset, tmp_path):
    """The metrics in the shipped metadata are what evaluating on its recorded split gives today."""
    recorded = json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text())["metrics"]
    metrics = evaluate(DEFAULT_MODEL_DIR, shared_dataset, tmp_path / "report", split="val")
    assert metrics["images"] == recorded["images"], "the recorded val split no longer matches the data"
    for key in ("accuracy", "other_abstained", "accuracy_with_abstention"):
        assert metrics[key] == pytest.approx(recorded[key], abs=0.01), key


def test_shipped_model_flags_its_low_data_classes():
    """Needs only the shipped model: its metadata carries every class's training count."""
    recognizer = Recognizer.load()
    low = set(recognizer.low_data_labels())
    assert {"Akha people", "Chakma people", "Mon people"} <= low
    assert recognizer.training_counts["Akha people"] <= 4
