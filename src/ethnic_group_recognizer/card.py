"""The model card's own words: what a model is called, what it recognises, how it may be used.

Every text a person reads about a model (the page header, "none of these", the label names, the
model card's uses, data sources and failure modes) comes from the :class:`ModelCard` stored in
its directory (``metadata.json``, key ``card``), never from constants, so a model of someone's
own classes describes its own classes.

The card is filled at training time from an optional ``card.toml`` beside the dataset's class
folders (or ``egr train --card FILE``), with ``--title`` / ``--description`` overrides; whatever
it does not say gets neutral words built from the labels (:func:`default_card`). Both the TOML
file and the stored JSON may come from anyone, so they are read with a size cap, every key and
type checked, and refused with one :class:`CardError` line naming the file and the key.

A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

import stat
import tomllib
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

#: The card file a dataset may hold beside its class folders.
CARD_FILE_NAME = "card.toml"
#: A card is a few kB; anything larger is not one (and is not read into memory).
MAX_CARD_BYTES = 64 * 1024
#: Longest one-line texts, in characters.
ONE_LINE_LIMITS = {"title": 120, "description": 300, "none_of_these": 80, "other_photos": 80}
#: Longest Markdown text (uses, data sources, what it does) and failure mode.
TEXT_LIMIT = 8000
FAILURE_MODE_LIMIT = 1000
MAX_FAILURE_MODES = 40
LABEL_NAME_LIMIT = 120
#: The training options (``TrainOptions``) that fill the card; kept in the card, not in ``options``.
OPTION_FIELDS = ("title", "description", "card_file")
#: The title a model gets when neither its card nor its name gives one.
NEUTRAL_TITLE = "Photo recognizer"
#: Model names that say nothing (``egr train``'s default, the shipped model's directory name).
_PLACEHOLDER_NAMES = ("", "model", "default")
#: Listing every label in the default description stops being readable above this many.
_LISTED_LABELS_MAX = 8
#: Bidirectional-override characters: they can make a text read differently from what it is.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

NEUTRAL_OUT_OF_SCOPE = (
    "- **Inferring anything about the people in a photo**: who they are, their ethnicity or origin, "
    "or any decision about a person (surveillance, policing, migration or border control, hiring, "
    "credit). The model recognises what a photo shows, not who someone is.\n"
    "- Biometric categorisation of people by race or ethnicity is prohibited in the EU by the AI Act, "
    "Article 5(1)(g).\n"
    "- The product has no face detection, face cropping or facial-feature pipeline, and must not be "
    "given one."
)
NEUTRAL_DATA_SOURCES = (
    "Not stated: whoever trained this model did not say where its training photos come from "
    "(a `data_sources` entry in the dataset's `card.toml`). Check their origin and licence "
    "before publishing the model."
)
NEUTRAL_FAILURE_MODES = (
    "Photos unlike the training photos (other light, framing, settings or styles) are recognised worse.",
    "Labels backed by few training photos (marked **low data**) are recognised mostly by resemblance "
    "to those few photos.",
    "Drawings, screenshots and posters may be classified as if they were photographs.",
    "A photo that shows none of the labels but looks like one of them can be given that label with "
    "moderate confidence.",
)


class CardError(ValueError):
    """A card (``card.toml`` or the stored ``card`` object) that cannot be used; one line, which file and key."""


@dataclass(frozen=True)
class ModelCard:
    """What a model says about itself; every field is plain text or Markdown, checked when read."""

    #: The product name shown in page headers, the API docs and the Gradio demo.
    title: str
    #: One line: what a photo is classified into (page lead, OpenAPI summary).
    description: str
    #: Display name of a label where it differs from the label (a folder name); others show as is.
    label_names: Mapping[str, str]
    #: What the answer "none of these" is called, e.g. "None of these 3".
    none_of_these: str
    intended_use: str  # Markdown
    out_of_scope_use: str  # Markdown
    data_sources: str  # Markdown; empty: not stated (data_sources_markdown says so)
    failure_modes: tuple[str, ...]
    #: The model card's "What it does" paragraph (Markdown); empty: the description.
    what_it_does: str = ""
    #: What the ``other`` photos show, as in "photos of other things".
    other_photos: str = "other things"

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_names", MappingProxyType(dict(self.label_names)))
        object.__setattr__(self, "failure_modes", tuple(self.failure_modes))

    def display_name(self, label: str) -> str:
        """The label as people read it."""
        return self.label_names.get(label, label)

    def to_json(self) -> dict[str, Any]:
        """The ``card`` object of ``metadata.json``."""
        return {
            "title": self.title,
            "description": self.description,
            "none_of_these": self.none_of_these,
            "label_names": dict(self.label_names),
            "what_it_does": self.what_it_does,
            "intended_use": self.intended_use,
            "out_of_scope_use": self.out_of_scope_use,
            "data_sources": self.data_sources,
            "failure_modes": list(self.failure_modes),
            "other_photos": self.other_photos,
        }

    @classmethod
    def from_json(
        cls, data: object, labels: Sequence[str], where: str = "card", name: str | None = None
    ) -> ModelCard:
        """A stored card, checked like ``card.toml``; keys it lacks get the neutral defaults.

        Keys this version does not know are ignored (a newer egr may have written them).
        """
        if not isinstance(data, dict):
            raise CardError(f"{where}: must be an object")
        known = {key: value for key, value in data.items() if key in _FIELDS}
        return _build(known, labels, where, default_card(labels, name))


_FIELDS = tuple(f.name for f in fields(ModelCard))


# -- neutral words ------------------------------------------------------------------------------
def listing(items: Sequence[str], last: str = "and") -> str:
    """``a, b and c``."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {last} {items[-1]}"


def default_title(name: str | None) -> str:
    """``Recognizer: my costumes`` from a model named ``my-costumes``; the neutral title for none."""
    readable = " ".join((name or "").replace("-", " ").replace("_", " ").split())
    if readable.lower() in _PLACEHOLDER_NAMES:
        return NEUTRAL_TITLE
    return _one_line_cut(f"Recognizer: {readable}", ONE_LINE_LIMITS["title"])


def default_card(labels: Sequence[str], name: str | None = None) -> ModelCard:
    """Neutral words built from the labels alone: no product name, no group, no claim about data."""
    count = len(labels)
    noun = "label" if count == 1 else "labels"
    if count <= _LISTED_LABELS_MAX:
        description = f"Says which of its {count} {noun} a photo shows: {listing(labels, 'or')}."
    else:
        description = f"Says which of its {count} {noun} a photo shows."
    if len(description) > ONE_LINE_LIMITS["description"]:
        description = f"Says which of its {count} {noun} a photo shows."
    return ModelCard(
        title=default_title(name),
        description=description,
        label_names={},
        none_of_these=f"None of these {count}" if count else "None of these",
        intended_use=(
            "Sorting and tagging a photo collection by what the photos show, for a person to check; "
            "exploring and teaching."
        ),
        out_of_scope_use=NEUTRAL_OUT_OF_SCOPE,
        data_sources="",
        failure_modes=NEUTRAL_FAILURE_MODES,
    )


def _one_line_cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# -- the model card's sections ------------------------------------------------------------------
#: What a model trained without ``other`` photos says instead of its abstain sentence.
CANNOT_ABSTAIN = (
    '**It cannot say "none of these":** it was trained without photos that show none of its labels '
    "(an `other` folder), so it gives one of its labels to every photo, even one that shows none of them."
)


def what_it_does(card: ModelCard, can_abstain: bool) -> str:
    """The model card's "What it does": the card's paragraph, then when (or that never) it abstains."""
    paragraph = card.what_it_does or card.description
    if not can_abstain:
        return f"{paragraph}\n{CANNOT_ABSTAIN}"
    return (
        f'{paragraph}\nIt answers "{card.none_of_these}" (abstains) when the photo shows none of its labels; '
        f"it learnt what that looks like from photos of {card.other_photos}."
    )


def data_sources_markdown(card: ModelCard) -> str:
    """The model card's "Data": the card's sources, or that whoever trained it did not say."""
    return card.data_sources or NEUTRAL_DATA_SOURCES


def failure_modes_markdown(card: ModelCard) -> str:
    """The known failure modes as a Markdown list."""
    return "\n".join(f"- {mode}" for mode in card.failure_modes) or "- None stated by whoever trained it."


# -- checking ------------------------------------------------------------------------------------
def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _check_characters(text: str, where: str, allow_newlines: bool) -> None:
    for char in text:
        if char in "\n\t" and allow_newlines:
            continue
        if unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS:
            kind = "a line break" if char == "\n" else f"the control character {char!r}"
            raise CardError(
                f"{where}: contains {kind}; it must be {'text' if allow_newlines else 'one line'}"
            )


def _one_line(value: object, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise CardError(f"{where}: must be a string, not {_shown(value)}")
    text = unicodedata.normalize("NFC", value.strip())
    _check_characters(text, where, allow_newlines=False)
    if not text:
        raise CardError(f"{where}: must not be empty")
    if len(text) > limit:
        raise CardError(f"{where}: is {len(text)} characters long; the limit is {limit}")
    return text


def _markdown(value: object, where: str, limit: int = TEXT_LIMIT) -> str:
    if not isinstance(value, str):
        raise CardError(f"{where}: must be a string, not {_shown(value)}")
    text = unicodedata.normalize("NFC", value.replace("\r\n", "\n").strip())
    _check_characters(text, where, allow_newlines=True)
    if len(text) > limit:
        raise CardError(f"{where}: is {len(text)} characters long; the limit is {limit}")
    return text


def _label_names(value: object, labels: Sequence[str] | None, where: str) -> dict[str, str]:
    """Display names, only for the model's labels (``labels`` None: not known yet, not checked)."""
    if not isinstance(value, dict):
        raise CardError(f'{where}: must be a table of label = "display name", not {_shown(value)}')
    names: dict[str, str] = {}
    for label, display in value.items():
        if labels is not None and label not in labels:
            known = listing([repr(label) for label in labels]) or "none"
            raise CardError(f"{where}: {_shown(label)} is not a label of this model (its labels: {known})")
        names[label] = _one_line(display, f"{where}.{label}", LABEL_NAME_LIMIT)
    return names


def _failure_modes(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise CardError(f"{where}: must be a list of strings, not {_shown(value)}")
    if len(value) > MAX_FAILURE_MODES:
        raise CardError(f"{where}: has {len(value)} entries; the limit is {MAX_FAILURE_MODES}")
    modes = []
    for position, item in enumerate(value):
        text = _markdown(item, f"{where}[{position}]", FAILURE_MODE_LIMIT)
        if text:
            modes.append(" ".join(text.split()))  # one list item each
    return tuple(modes)


def _build(data: dict[str, Any], labels: Sequence[str] | None, where: str, base: ModelCard) -> ModelCard:
    """``base`` with every key of ``data`` checked and put in its place."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        at = f"{where}: {key}" if not where.endswith(":") else f"{where} {key}"
        if key in ONE_LINE_LIMITS:
            values[key] = _one_line(value, at, ONE_LINE_LIMITS[key])
        elif key == "label_names":
            values[key] = _label_names(value, labels, at)
        elif key == "failure_modes":
            values[key] = _failure_modes(value, at)
        else:
            values[key] = _markdown(value, at)
    card = ModelCard(**{**{f: getattr(base, f) for f in _FIELDS}, **values})
    for key in ("intended_use", "out_of_scope_use"):
        if not getattr(card, key):
            raise CardError(f"{where}: {key} must not be empty")
    return card


# -- card.toml -------------------------------------------------------------------------------------
def _read_card_file(path: Path, *, inside_dataset: bool) -> str:
    """The text of a card file: a regular file (not a link out of the dataset), at most 64 KiB, UTF-8."""
    try:
        info = path.lstat() if inside_dataset else path.stat()
    except FileNotFoundError:
        raise CardError(f"{path}: no such card file") from None
    except OSError as error:
        raise CardError(f"{path}: cannot be read ({error.strerror or error})") from None
    if stat.S_ISLNK(info.st_mode):
        raise CardError(f"{path}: is a symbolic link; a dataset's card must be a file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise CardError(f"{path}: is not a regular file")
    if info.st_size > MAX_CARD_BYTES:
        raise CardError(f"{path}: is {info.st_size:,} bytes; a card is at most {MAX_CARD_BYTES:,} bytes")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CARD_BYTES + 1)
    except OSError as error:
        raise CardError(f"{path}: cannot be read ({error.strerror or error})") from None
    if len(raw) > MAX_CARD_BYTES:
        raise CardError(f"{path}: is larger than {MAX_CARD_BYTES:,} bytes; that is not a card")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CardError(f"{path}: is not UTF-8 text") from None


def parse_card_toml(
    text: str, labels: Sequence[str] | None, where: str, name: str | None = None
) -> ModelCard:
    """A card from the text of a ``card.toml``: neutral defaults for what it leaves out.

    Unknown keys are refused (a misspelt key would otherwise be silently lost). ``labels`` None
    checks everything but whether ``label_names`` names labels of the model (not known yet).
    """
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as error:
        reason = str(error).splitlines()[0][:160] if str(error) else "too deeply nested"
        raise CardError(f"{where}: not valid TOML ({reason})") from None
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise CardError(f"{where}: unknown key {_shown(unknown[0])}; a card may set {', '.join(_FIELDS)}")
    return _build(data, labels, where, default_card(labels or (), name))


def card_from_dataset(
    root: str | Path,
    labels: Sequence[str],
    title: str | None = None,
    description: str | None = None,
    path: str | Path | None = None,
    name: str | None = None,
) -> ModelCard:
    """The card of a model trained on the dataset at ``root`` with these ``labels``.

    Read from ``path`` (``egr train --card FILE``) or else ``root/card.toml`` when it exists;
    ``title`` and ``description`` (``--title``, ``--description``) override the file's; the rest
    defaults to neutral words from the labels (and the model's ``name`` for the title).
    """
    if path is not None:
        card_path, inside = Path(path), False
    else:
        card_path, inside = Path(root) / CARD_FILE_NAME, True
    if path is None and not (card_path.exists() or card_path.is_symlink()):
        card = default_card(labels, name)
    else:
        text = _read_card_file(card_path, inside_dataset=inside)
        card = parse_card_toml(text, labels, str(card_path), name)
    overrides: dict[str, Any] = {}
    if title is not None:
        overrides["title"] = title
    if description is not None:
        overrides["description"] = description
    return _build(overrides, labels, "--title/--description:", card) if overrides else card


def check_overrides(title: object, description: object) -> None:
    """``--title`` / ``--description`` as a card would take them, or a ValueError naming the option."""
    for option, value in (("title", title), ("description", description)):
        if value is not None:
            try:
                _one_line(value, option, ONE_LINE_LIMITS[option])
            except CardError as error:  # "title must be …", as every option's message reads
                reason = str(error).removeprefix(f"{option}: ")
                raise CardError(
                    f"{option} must be one line of at most {ONE_LINE_LIMITS[option]} characters ({reason})"
                ) from None


def check_card_file(root: str | Path, path: str | Path | None = None) -> Path | None:
    """Check a card file before training (all but its label names), so a bad one fails in a second,
    not after the embeddings; returns the file that will be read, None when there is none."""
    if path is None:
        card_path = Path(root) / CARD_FILE_NAME
        if not (card_path.exists() or card_path.is_symlink()):
            return None
        inside = True
    else:
        card_path, inside = Path(path), False
    parse_card_toml(_read_card_file(card_path, inside_dataset=inside), None, str(card_path))
    return card_path
