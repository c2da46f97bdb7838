"""The model card section (card.py, model_dir.py): card.toml parsing, hostile files, and storage.

A card is untrusted input twice: as a ``card.toml`` beside a dataset's class folders and as the
``card`` object of a model directory's ``metadata.json``. Both are refused with one clear line.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ethnic_group_recognizer.card import (
    CARD_FILE_NAME,
    MAX_CARD_BYTES,
    NEUTRAL_TITLE,
    CardError,
    ModelCard,
    card_from_dataset,
    check_card_file,
    default_card,
    what_it_does,
)
from ethnic_group_recognizer.config import DEFAULT_MODEL_DIR, LABELS
from ethnic_group_recognizer.model_dir import ModelError, read_model_dir

REPO = Path(__file__).resolve().parents[1]
OWN = ("hanbok", "kilt", "kimono")


def write_card(root: Path, text: str | bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / CARD_FILE_NAME
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return root


def refused(root: Path, *expected: str, **kwargs: object) -> str:
    """The one-line CardError a card gives; it names the file and says why."""
    with pytest.raises(CardError) as caught:
        card_from_dataset(root, OWN, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    for part in expected:
        assert part in message, message
    return message


# -- neutral defaults ----------------------------------------------------------------------------
def test_a_dataset_without_a_card_gets_neutral_words_from_its_labels(tmp_path: Path) -> None:
    card = card_from_dataset(tmp_path, OWN, name="my-costumes")
    assert card.title == "Recognizer: my costumes"
    assert card.none_of_these == "None of these 3"
    assert "hanbok, kilt or kimono" in card.description
    assert card.display_name("kilt") == "kilt" and dict(card.label_names) == {}
    text = json.dumps(card.to_json())
    for word in (*LABELS, "12", "Ethnic Group", "Hani", "cultural-heritage"):
        assert word not in text, word
    assert card_from_dataset(tmp_path, OWN, name="model").title == NEUTRAL_TITLE


def test_many_labels_are_counted_not_listed() -> None:
    labels = [f"class {i}" for i in range(40)]
    card = default_card(labels)
    assert (
        card.description == "Says which of its 40 labels a photo shows."
        and card.none_of_these == "None of these 40"
    )


# -- card.toml -------------------------------------------------------------------------------------
def test_card_toml_fills_the_card_and_overrides_win(tmp_path: Path) -> None:
    root = write_card(
        tmp_path / "ds",
        """
title = "Costume sorter"
description = "Tells kimono, kilt and hanbok apart."
none_of_these = "Not a costume I know"
other_photos = "everyday clothes"
intended_use = "Sorting a wardrobe archive."
data_sources = "My own photos, CC BY 4.0."
failure_modes = ["Confuses  yukata\\n with kimono.", "Dark photos."]

[label_names]
kilt = "Kilt (Scotland)"
""",
    )
    card = card_from_dataset(root, OWN, name="x")
    assert card.title == "Costume sorter" and card.none_of_these == "Not a costume I know"
    assert card.display_name("kilt") == "Kilt (Scotland)" and card.display_name("kimono") == "kimono"
    assert card.failure_modes == ("Confuses yukata with kimono.", "Dark photos.")
    assert card.intended_use == "Sorting a wardrobe archive."
    assert "EU" in card.out_of_scope_use  # what the file leaves out keeps the neutral words
    assert "photos of everyday clothes" in what_it_does(card, can_abstain=True)
    assert 'cannot say "none of these"' in what_it_does(card, can_abstain=False)
    override = card_from_dataset(root, OWN, title="Wardrobe", description="One line.")
    assert (override.title, override.description) == ("Wardrobe", "One line.")
    assert override.none_of_these == "Not a costume I know"


def test_a_card_round_trips_through_json() -> None:
    card = card_from_dataset(DEFAULT_MODEL_DIR, LABELS, path=REPO / "cards" / "default.toml", name="default")
    again = ModelCard.from_json(json.loads(json.dumps(card.to_json())), LABELS)
    assert again == card


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('title = "a"\ncolour = "red"\n', ["unknown key 'colour'", "title"]),
        ("title = 3\n", ["title", "must be a string"]),
        ('title = """two\nlines"""\n', ["title", "one line"]),
        ('title = "   "\n', ["title", "must not be empty"]),
        (f'title = "{"x" * 500}"\n', ["title", "500 characters", "limit is 120"]),
        ('description = "a\\u0007b"\n', ["description", "control character"]),
        ('description = "evil\\u202eelif"\n', ["description", "control character"]),
        ('failure_modes = "just one"\n', ["failure_modes", "list of strings"]),
        ("failure_modes = [1, 2]\n", ["failure_modes[0]", "must be a string"]),
        ("failure_modes = [" + ", ".join(['"x"'] * 100) + "]\n", ["failure_modes", "100 entries"]),
        ('[label_names]\n"Akha people" = "Akha"\n', ["'Akha people' is not a label", "'kilt'"]),
        ('label_names = "kilt"\n', ["label_names", "must be a table"]),
        ("[label_names]\nkilt = 5\n", ["label_names.kilt", "must be a string"]),
        ('intended_use = ""\n', ["intended_use must not be empty"]),
        ("title = \n", ["not valid TOML"]),
        ("a = " + "[" * 5000 + "]" * 5000 + "\n", ["not valid TOML"]),
    ],
)
def test_hostile_card_files_are_refused_in_one_line(tmp_path: Path, text: str, expected: list[str]) -> None:
    root = write_card(tmp_path / "ds", text)
    message = refused(root, str(root / CARD_FILE_NAME), *expected)
    assert len(message) < 400


def test_large_binary_linked_and_special_card_files_are_refused(tmp_path: Path) -> None:
    big = write_card(tmp_path / "big", b"# " + b"x" * MAX_CARD_BYTES)
    refused(big, "bytes", f"{MAX_CARD_BYTES:,}")
    binary = write_card(tmp_path / "binary", b'title = "\xff\xfe"\n')
    refused(binary, "not UTF-8")
    outside = tmp_path / "outside.toml"
    outside.write_text('title = "from elsewhere"\n')
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / CARD_FILE_NAME).symlink_to(outside)
    refused(linked, "symbolic link")
    folder = tmp_path / "folder"
    (folder / CARD_FILE_NAME).mkdir(parents=True)
    refused(folder, "not a regular file")
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / CARD_FILE_NAME)
    refused(fifo, "not a regular file")  # and it does not block reading a pipe
    refused(tmp_path, "no such card file", path=tmp_path / "missing.toml")


def test_bad_overrides_are_refused(tmp_path: Path) -> None:
    refused(tmp_path, "title", "one line", title="a\nb")
    refused(tmp_path, "description", "limit is 300", description="x" * 301)


def test_card_files_are_checked_before_training_except_their_label_names(tmp_path: Path) -> None:
    assert check_card_file(tmp_path) is None
    root = write_card(tmp_path / "ds", '[label_names]\nsari = "Sari"\n')
    assert check_card_file(root) == root / CARD_FILE_NAME  # labels are not known before training
    write_card(root, 'titel = "typo"\n')
    with pytest.raises(CardError, match="unknown key 'titel'"):
        check_card_file(root)


# -- stored in the model directory ----------------------------------------------------------------
def test_the_shipped_model_reads_its_wording_from_its_own_directory() -> None:
    card = read_model_dir(DEFAULT_MODEL_DIR).metadata.card
    assert card is not None
    assert card.title == "Ethnic Group Recognizer" and card.none_of_these == "None of the 12 groups"
    assert "Article 5(1)(g)" in card.out_of_scope_use and "ethnicity" in card.out_of_scope_use
    assert "cultural-heritage photographs" in card.intended_use
    assert any("Hani and Akha overlap" in mode for mode in card.failure_modes)
    assert "Ethnic-Costume-Classify" in card.data_sources
    # The card file `make model` trains with gives the same card.
    assert card == card_from_dataset(
        DEFAULT_MODEL_DIR, LABELS, path=REPO / "cards" / "default.toml", name="default"
    )


def copy_default(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    return folder


def edit_card(folder: Path, change: object) -> None:
    path = folder / "metadata.json"
    data = json.loads(path.read_text())
    if callable(change):
        change(data)
    else:
        data["card"] = change
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("a card", "card: must be an object"),
        ({"title": ["x"]}, "card: title: must be a string"),
        ({"none_of_these": "a\nb"}, "card: none_of_these: contains a line break"),
        ({"label_names": {"kimono": "K"}}, "'kimono' is not a label"),
        ({"failure_modes": "x"}, "failure_modes: must be a list"),
    ],
)
def test_a_damaged_stored_card_is_refused_at_load(tmp_path: Path, change: object, expected: str) -> None:
    folder = copy_default(tmp_path)
    edit_card(folder, change)
    with pytest.raises(ModelError) as caught:
        read_model_dir(folder)
    assert expected in str(caught.value) and "metadata.json" in str(caught.value)


def test_an_old_directory_without_a_card_still_loads_and_unknown_card_keys_are_ignored(
    tmp_path: Path,
) -> None:
    folder = copy_default(tmp_path)
    edit_card(folder, lambda data: data.pop("card"))
    metadata = read_model_dir(folder).metadata
    assert metadata.card is None and metadata.card_or_default.none_of_these == "None of these 12"
    assert metadata.card_or_default.title == NEUTRAL_TITLE  # named "default": no product name
    edit_card(folder, {"title": "Mine", "from_a_newer_egr": 1})
    assert read_model_dir(folder).metadata.card.title == "Mine"
    assert "card" not in read_model_dir(folder).metadata.extra
