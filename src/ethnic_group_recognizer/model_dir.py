"""The model directory on disk: typed metadata, one reader and one writer, checked at load.

A model directory holds:

- ``model.onnx``: one self-contained graph, ``pixels`` (N, V, 3, S, S) -> ``probabilities``
  (N, K+1) over the K labels plus the abstain class, and ``embedding`` (N, 1280): the V views of
  each photo (``preprocessing.views``, :mod:`ethnic_group_recognizer.views`) are averaged before
  the head. A format-1 model (before multi-crop) takes ``pixels`` (N, 3, S, S), one view a row,
  and its photo and mirror are averaged after the softmax;
- ``labels.json``: the K labels in output order (the abstain class is the last output);
- ``metadata.json``: backbone, preprocessing, calibration (temperature, abstain rule and
  threshold, the prediction sets' conformal calibration), per-class training counts, metrics,
  the data split's hashes and version (:class:`ModelMetadata`);
- ``split.json``: the sha256 of every training and validation image (for ``egr evaluate``).

A model folder may come from anyone, so everything is checked when it is read: a folder that
cannot give correct answers is refused with one :class:`ModelError` line, never a traceback or
silently wrong labels. The files written are byte-identical to what ``egr train`` always wrote
(same keys, order and formatting), so re-training the shipped model reproduces it exactly.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ethnic_group_recognizer.calibrate import ABSTAIN_RULES, LEGACY_ABSTAIN_RULE
from ethnic_group_recognizer.card import CardError, ModelCard, default_card
from ethnic_group_recognizer.config import ABSTAIN_LABEL, Config
from ethnic_group_recognizer.conformal import ConformalCalibration
from ethnic_group_recognizer.dataset import LabelError, validate_label
from ethnic_group_recognizer.views import View, parse_views

MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.json"
METADATA_FILE = "metadata.json"
SPLIT_FILE = "split.json"
CARD_FILE = "MODEL_CARD.md"
#: Version of the directory layout and metadata schema; a reader refuses any other.
#: 2: multi-view graphs (``pixels`` (N, V, 3, S, S), ``preprocessing.views``). 1 is still read.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: The preprocessing ``backbone.preprocess`` implements; a model asking for another is refused.
RESIZE = "squish"
SCALE = "(pixel - 127) / 128"
CHANNELS = "RGB"
POOLINGS = ("gem", "mean")
HEAD_MODES = ("probe", "finetune")
#: Larger JSON files than this are not metadata (the shipped one is 4 KB; split.json ~100 KB).
MAX_JSON_BYTES = 16 * 2**20


class ModelError(ValueError):
    """A model directory that cannot be used; the message (one line) says which file and why."""


class ModelFileMissing(ModelError, FileNotFoundError):
    """A model directory lacking one of its files (also a FileNotFoundError, as it always was)."""


# -- the typed metadata --------------------------------------------------------------------
@dataclass(frozen=True)
class BackboneInfo:
    """The feature extractor inside ``model.onnx`` and the preprocessing it expects."""

    name: str  # e.g. "efficientnet-lite0"
    image_size: int  # input side in pixels, after the "squish" resize
    pooling: str = "gem"  # gem | mean
    resize: str = RESIZE
    scale: str = SCALE
    channels: str = CHANNELS


@dataclass(frozen=True)
class Calibration:
    """Temperature and abstain threshold, and how they were chosen."""

    temperature: float
    threshold: float  # abstain when the rule's in-scope score (calibrate.in_scope_scores) is under it
    calibrated_on: str  # which held-out predictions they were fitted on
    abstain_target: float | None = None  # share of held-out ``other`` photos to abstain on
    #: ``top-label`` (the best of the K probabilities; every model before prediction sets) or
    #: ``in-scope-share`` (best / (best + P(other))); see calibrate.py.
    abstain_rule: str = LEGACY_ABSTAIN_RULE

    @property
    def policy(self) -> str:
        """``"other-target"``: the lowest threshold abstaining on that share of ``other`` photos;
        ``"balanced"``: abstention on ``other`` balanced against in-domain accuracy."""
        return "other-target" if self.abstain_target else "balanced"


@dataclass(frozen=True)
class Provenance:
    """What data and seed the model came from, and how long it took."""

    seed: int
    val_fraction: float
    train_images: int
    val_images: int
    train_hash: str  # sha256 over the sorted sha256 of the training images
    val_hash: str
    training_seconds: float


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a model directory says about its model, except the graph itself.

    ``labels`` is ``labels.json``; the rest is ``metadata.json``. ``options`` holds the training
    options as trained (``mode`` is the head: probe or finetune); ``metrics`` what
    ``egr evaluate --update-model`` stored (empty until then); ``extra`` any key this version
    does not know, kept so that a re-write loses nothing.
    """

    labels: tuple[str, ...]
    name: str
    version: str  # the day it was trained, YYYY.MM.DD
    backbone: BackboneInfo
    calibration: Calibration
    tta: bool  # some view is mirrored (kept for readers of format 1)
    training_counts: Mapping[str, int]  # training images behind each label, before augmentation
    abstain_training_count: int  # training images of the abstain class (``other``)
    provenance: Provenance
    options: Mapping[str, Any]
    metrics: Mapping[str, Any] = field(default_factory=dict)
    #: Prediction sets (docs/PREDICTION_SETS.md); None for a model trained before them, which
    #: answers with its top label alone (or the empty set when abstaining).
    conformal: ConformalCalibration | None = None
    #: The same calibration at other target coverages, for the evaluation's coverage-vs-size curve.
    conformal_curve: tuple[ConformalCalibration, ...] = ()
    #: What the model says about itself (card.py); None for a directory from before cards,
    #: whose readers use ``card.default_card`` (neutral words from its labels).
    card: ModelCard | None = None
    abstain_label: str = ABSTAIN_LABEL
    format_version: int = FORMAT_VERSION
    #: The views of a photo the graph averages (format 2); a format-1 model's are the photo and,
    #: with ``tta``, its mirror, averaged outside the graph.
    views: tuple[View, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("training_counts", "options", "metrics", "extra"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "conformal_curve", tuple(self.conformal_curve))
        if not self.views:
            legacy = (View(), View(mirror=True)) if self.tta else (View(),)
            object.__setattr__(self, "views", legacy)
        object.__setattr__(self, "views", tuple(self.views))

    @property
    def views_in_graph(self) -> bool:
        """True when ``model.onnx`` takes all views of a photo at once (format 2 and later)."""
        return self.format_version >= 2

    @property
    def _legacy_rule(self) -> bool:
        """A model from before prediction sets: its files are re-written without the new keys."""
        return self.calibration.abstain_rule == LEGACY_ABSTAIN_RULE and self.conformal is None

    @property
    def head(self) -> str:
        """How the head was trained: ``probe`` (frozen backbone) or ``finetune``."""
        return str(self.options.get("mode", "probe"))

    def with_metrics(self, metrics: Mapping[str, Any]) -> ModelMetadata:
        """The same metadata with the evaluation's metrics stored."""
        return replace(self, metrics=metrics)

    @property
    def card_or_default(self) -> ModelCard:
        """The card, or neutral words from the labels for a directory from before cards."""
        return self.card or default_card(self.labels, self.name)

    def with_card(self, card: ModelCard | None) -> ModelMetadata:
        """The same metadata with this card."""
        return replace(self, card=card)

    def to_json(self) -> dict[str, Any]:
        """``metadata.json`` as a dict, keys in the order ``egr train`` has always written them."""
        return copy.deepcopy(
            {
                "format_version": self.format_version,
                "name": self.name,
                "version": self.version,
                "backbone": self.backbone.name,
                "pooling": self.backbone.pooling,
                "preprocessing": {
                    "image_size": self.backbone.image_size,
                    "resize": self.backbone.resize,
                    "scale": self.backbone.scale,
                    "channels": self.backbone.channels,
                    **({"views": [v.to_json() for v in self.views]} if self.views_in_graph else {}),
                },
                "tta": self.tta,
                "temperature": self.calibration.temperature,
                "threshold": self.calibration.threshold,
                **({} if self._legacy_rule else {"abstain_rule": self.calibration.abstain_rule}),
                "calibrated_on": self.calibration.calibrated_on,
                "abstain_label": self.abstain_label,
                "training_counts": dict(self.training_counts),
                "abstain_training_count": self.abstain_training_count,
                "split": {
                    "seed": self.provenance.seed,
                    "val_fraction": self.provenance.val_fraction,
                    "train_images": self.provenance.train_images,
                    "val_images": self.provenance.val_images,
                    "train_hash": self.provenance.train_hash,
                    "val_hash": self.provenance.val_hash,
                },
                "options": dict(self.options),
                "training_seconds": self.provenance.training_seconds,
                "metrics": dict(self.metrics),
                **({} if self.conformal is None else {"conformal": self.conformal.to_dict()}),
                **(
                    {"conformal_curve": [c.to_dict() for c in self.conformal_curve]}
                    if self.conformal_curve
                    else {}
                ),
                **({} if self.card is None else {"card": self.card.to_json()}),
                **self.extra,
            }
        )


@dataclass(frozen=True)
class ModelDir:
    """A model directory that has been read and checked: where it is and what it says."""

    path: Path
    metadata: ModelMetadata

    @property
    def labels(self) -> tuple[str, ...]:
        return self.metadata.labels

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def card_path(self) -> Path:
        return self.path / CARD_FILE


# -- reading and checking ------------------------------------------------------------------
_KNOWN_KEYS = (
    "format_version",
    "name",
    "version",
    "backbone",
    "pooling",
    "preprocessing",
    "tta",
    "temperature",
    "threshold",
    "abstain_rule",
    "calibrated_on",
    "abstain_label",
    "training_counts",
    "abstain_training_count",
    "split",
    "options",
    "training_seconds",
    "metrics",
    "conformal",
    "conformal_curve",
    "card",
)
_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "an object",
}


class _Fields:
    """Typed access to one JSON object of a model file, failing with the file and key path."""

    def __init__(self, data: object, where: str, prefix: str = ""):
        self.where, self.prefix = where, prefix
        if not isinstance(data, dict):
            raise ModelError(f"{where}: {prefix.rstrip('.') or 'the file'} must be a JSON object")
        self.data: dict = data

    def _fail(self, key: str, message: str) -> ModelError:
        return ModelError(f"{self.where}: {self.prefix}{key} {message}")

    def get(self, key: str, kind: type) -> Any:
        if key not in self.data:
            raise self._fail(key, "is missing")
        value = self.data[key]
        numeric = kind is float and isinstance(value, int | float) and not isinstance(value, bool)
        if not (numeric or (isinstance(value, kind) and not (kind is int and isinstance(value, bool)))):
            raise self._fail(key, f"must be {_TYPE_NAMES[kind]}, not {json.dumps(value)[:40]}")
        if kind is float and not math.isfinite(value):
            raise self._fail(key, "must be a finite number")
        return value

    def number(self, key: str, low: float, high: float) -> float:
        value = self.get(key, float)
        if not low <= value <= high:
            raise self._fail(key, f"must be between {low:g} and {high:g}, not {value}")
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.get(key, int)
        if not low <= value <= high:
            raise self._fail(key, f"must be between {low} and {high}, not {value}")
        return value

    def count(self, key: str) -> int:
        value = self.get(key, int)
        if value < 0:
            raise self._fail(key, f"must not be negative, not {value}")
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.get(key, str)
        if value not in allowed:
            raise self._fail(key, f"is {value!r}; this version supports {' or '.join(map(repr, allowed))}")
        return value

    def object(self, key: str) -> _Fields:
        return _Fields(self.get(key, dict), self.where, f"{self.prefix}{key}.")


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise ModelFileMissing(f"not a model directory (no {path.name}): {path.parent}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ModelError(f"{path}: {path.stat().st_size} bytes is too large for a model file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ModelError(f"{path}: not valid JSON ({str(error).splitlines()[0][:120]})") from None


def _check_labels(data: object, path: Path) -> tuple[str, ...]:
    if not isinstance(data, list) or not data:
        raise ModelError(f"{path}: must be a non-empty JSON list of label strings")
    seen: set[str] = set()
    for position, label in enumerate(data):
        if not isinstance(label, str):
            raise ModelError(f"{path}: label {position + 1} is {json.dumps(label)[:40]}, not a string")
        try:
            clean = validate_label(label)
        except LabelError as error:
            raise ModelError(f"{path}: {error}") from None
        if clean != label:
            raise ModelError(f"{path}: label {label!r} has surrounding spaces or is not in NFC form")
        if label == ABSTAIN_LABEL:
            raise ModelError(f"{path}: {ABSTAIN_LABEL!r} is the abstain class, not a label")
        if label in seen:
            raise ModelError(f"{path}: label {label!r} appears twice")
        seen.add(label)
    return tuple(data)


def parse_metadata(data: object, labels: tuple[str, ...], where: str) -> ModelMetadata:
    """Typed metadata from the JSON of ``metadata.json``, checked key by key."""
    top = _Fields(data, where)
    version = top.get("format_version", int)
    if version not in READABLE_VERSIONS:
        newer = "newer than" if version > FORMAT_VERSION else "not one"
        raise ModelError(
            f"{where}: model format version {version} is {newer} this egr understands "
            f"({', '.join(map(str, READABLE_VERSIONS))}); use the egr release that wrote it or re-train the model"
        )
    preprocessing = top.object("preprocessing")
    backbone = BackboneInfo(
        name=top.get("backbone", str),
        image_size=preprocessing.integer("image_size", 32, 4096),
        pooling=top.choice("pooling", POOLINGS),
        resize=preprocessing.choice("resize", (RESIZE,)),
        scale=preprocessing.choice("scale", (SCALE,)),
        channels=preprocessing.choice("channels", (CHANNELS,)),
    )
    views: tuple[View, ...] = ()
    if version >= 2:
        try:
            views = parse_views(preprocessing.data.get("views"))
        except ValueError as error:
            raise ModelError(f"{where}: preprocessing.views: {error}") from None
    options = top.object("options")
    target = options.data.get("abstain_target")
    if target is not None:
        target = options.number("abstain_target", 0.0, 1.0)
    if "mode" in options.data:
        options.choice("mode", HEAD_MODES)
    calibration = Calibration(
        temperature=top.number("temperature", 1e-6, 1e6),
        threshold=top.number("threshold", 0.0, 1.0),
        calibrated_on=top.get("calibrated_on", str),
        abstain_target=target,
        abstain_rule=top.choice("abstain_rule", ABSTAIN_RULES)
        if "abstain_rule" in top.data
        else LEGACY_ABSTAIN_RULE,
    )
    counts = top.object("training_counts")
    training_counts = {label: counts.count(label) for label in counts.data}
    if set(training_counts) != set(labels):
        missing = sorted(set(labels) - set(training_counts))
        unknown = sorted(set(training_counts) - set(labels))
        raise ModelError(
            f"{where}: training_counts must name exactly the labels of {LABELS_FILE}"
            f" (missing {missing or 'none'}, unknown {unknown or 'none'})"
        )
    split = top.object("split")
    provenance = Provenance(
        seed=split.get("seed", int),
        val_fraction=split.number("val_fraction", 0.0, 1.0),
        train_images=split.count("train_images"),
        val_images=split.count("val_images"),
        train_hash=split.get("train_hash", str),
        val_hash=split.get("val_hash", str),
        training_seconds=top.number("training_seconds", 0.0, math.inf),
    )
    return ModelMetadata(
        labels=labels,
        conformal=_parse_conformal(top.data.get("conformal"), labels, calibration, f"{where}: conformal"),
        conformal_curve=_parse_conformal_curve(top, labels, calibration, where),
        card=_parse_card(top.data.get("card"), labels, top.data.get("name"), f"{where}: card"),
        name=top.get("name", str),
        version=top.get("version", str),
        backbone=backbone,
        calibration=calibration,
        tta=top.get("tta", bool),
        training_counts=training_counts,
        abstain_training_count=top.count("abstain_training_count"),
        provenance=provenance,
        options=options.data,
        metrics=top.get("metrics", dict),
        abstain_label=top.choice("abstain_label", (ABSTAIN_LABEL,)),
        format_version=version,
        views=views,
        extra={key: value for key, value in top.data.items() if key not in _KNOWN_KEYS},
    )


def _parse_card(data: object, labels: tuple[str, ...], name: object, where: str) -> ModelCard | None:
    """The stored card, checked as strictly as ``card.toml`` (its texts are shown to people)."""
    if data is None:
        return None
    try:
        return ModelCard.from_json(data, labels, where, name if isinstance(name, str) else None)
    except CardError as error:
        raise ModelError(str(error)) from None


def _parse_conformal(
    data: object, labels: tuple[str, ...], calibration: Calibration, where: str
) -> ConformalCalibration | None:
    """A stored prediction-set calibration, checked against the labels and the abstain rule."""
    if data is None:
        return None
    try:
        conformal = ConformalCalibration.from_dict(data)  # refuses a non-object itself
    except (ValueError, TypeError) as error:
        raise ModelError(f"{where}: {error}") from None
    if conformal.n_labels != len(labels):
        raise ModelError(
            f"{where}: calibrated for {conformal.n_labels} labels, {LABELS_FILE} lists {len(labels)}"
        )
    if conformal.abstain_rule != calibration.abstain_rule:
        raise ModelError(
            f"{where}: abstain_rule {conformal.abstain_rule!r} differs from the model's "
            f"{calibration.abstain_rule!r}"
        )
    return conformal


def _parse_conformal_curve(
    top: _Fields, labels: tuple[str, ...], calibration: Calibration, where: str
) -> tuple[ConformalCalibration, ...]:
    entries = top.data.get("conformal_curve", [])
    if not isinstance(entries, list) or len(entries) > 100:
        raise ModelError(f"{where}: conformal_curve must be a list of at most 100 calibrations")
    return tuple(
        _parse_conformal(entry, labels, calibration, f"{where}: conformal_curve[{i}]")
        for i, entry in enumerate(entries)
        if entry is not None
    )


def read_model_dir(path: str | Path) -> ModelDir:
    """Read and check a model directory's labels and metadata (the graph: :func:`open_session`).

    Raises :class:`ModelFileMissing` (also a FileNotFoundError) for a missing folder or file and
    :class:`ModelError` for anything else that makes the model unusable.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ModelFileMissing(f"not a model directory (not a folder): {directory}")
    for name in (MODEL_FILE, LABELS_FILE, METADATA_FILE):
        if not (directory / name).is_file():
            raise ModelFileMissing(f"not a model directory (no {name}): {directory}")
    labels = _check_labels(_read_json(directory / LABELS_FILE), directory / LABELS_FILE)
    metadata = parse_metadata(_read_json(directory / METADATA_FILE), labels, str(directory / METADATA_FILE))
    return ModelDir(directory, metadata)


def read_split(path: str | Path, part: str) -> set[str]:
    """The sha256 of the images in one part (``train`` or ``val``) of the model's recorded split."""
    split_file = Path(path) / SPLIT_FILE
    if not split_file.exists():
        raise FileNotFoundError(f"{split_file} not found: this model has no recorded split; use --split all")
    data = _read_json(split_file)
    if not isinstance(data, dict) or not isinstance(data.get(part), list):
        raise ModelError(f"{split_file}: has no list of {part!r} images")
    if not all(isinstance(digest, str) for digest in data[part]):
        raise ModelError(f"{split_file}: the {part!r} list must hold sha256 strings")
    return set(data[part])


# -- the graph -----------------------------------------------------------------------------
def _ort_errors() -> tuple[type[BaseException], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented")
    return (RuntimeError, *(getattr(state, name) for name in names if hasattr(state, name)))


def check_graph(session, model_dir: ModelDir) -> None:
    """Refuse a graph whose inputs or outputs do not fit the labels and metadata beside it."""
    import numpy as np

    where = str(model_dir.model_path)
    size = model_dir.metadata.backbone.image_size
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != "pixels":
        names = ", ".join(repr(i.name) for i in inputs) or "none"
        raise ModelError(f"{where}: expected one input named 'pixels', found {names}")
    shape = list(inputs[0].shape)
    meta = model_dir.metadata
    lead = ["batch", "views"] if meta.views_in_graph else ["batch"]
    fits = (
        len(shape) == len(lead) + 3
        and shape[len(lead)] == 3
        and all(not isinstance(d, int) or d == size for d in shape[len(lead) + 1 :])
    )
    if not fits or inputs[0].type != "tensor(float)":
        expected = ", ".join([*lead, "3", str(size), str(size)])
        raise ModelError(f"{where}: input 'pixels' is {inputs[0].type} {shape}; expected float [{expected}]")
    outputs = {o.name: o for o in session.get_outputs()}
    for name in ("probabilities", "embedding"):
        if name not in outputs:
            raise ModelError(f"{where}: no output named {name!r} (found {', '.join(map(repr, outputs))})")
    width = outputs["probabilities"].shape[-1] if outputs["probabilities"].shape else None
    if not isinstance(width, int):  # a dynamic width: ask the graph itself
        try:
            probe = np.zeros((1, *([len(meta.views)] if meta.views_in_graph else []), 3, size, size), np.float32)
            width = int(session.run(["probabilities"], {"pixels": probe})[0].shape[-1])
        except _ort_errors() as error:
            raise ModelError(f"{where}: the graph fails on a blank image ({_first_line(error)})") from None
    labels = len(model_dir.labels)
    if width != labels + 1:
        raise ModelError(
            f"{where}: the graph has {width} outputs but {LABELS_FILE} lists {labels} labels "
            f"(expected {labels} + 1 for the abstain class)"
        )


def _first_line(error: BaseException, path: Path | None = None) -> str:
    """onnxruntime's message, short: its code and reason, without the path the caller already says."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    if match := re.fullmatch(r"\[ONNXRuntimeError\] : \d+ : (\w+) : (.*)", text):
        text = f"{match[1]}: {match[2]}"
    if path is not None:
        text = text.replace(f"Load model from {path} failed:", "").replace(str(path), path.name)
    return text[:160]


def open_session(model_dir: ModelDir, config: Config | None = None):
    """An onnxruntime session for the directory's graph, checked against its labels and metadata."""
    from ethnic_group_recognizer.backbone import onnx_session

    path = model_dir.model_path
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: the file is empty")
    try:
        session = onnx_session(path, config)
    except _ort_errors() as error:
        raise ModelError(f"{path}: not a usable ONNX model ({_first_line(error, path)})") from None
    check_graph(session, model_dir)
    return session


# -- writing -------------------------------------------------------------------------------
def _json_text(data: object) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_model_dir(path: str | Path, metadata: ModelMetadata) -> None:
    """Write ``labels.json`` and ``metadata.json`` (the graph is written by ``model.attach_head``).

    The metadata is checked as a reader would check it first, so nothing writes a folder that
    ``read_model_dir`` would refuse.
    """
    directory = Path(path)
    data = metadata.to_json()
    parse_metadata(data, _check_labels(list(metadata.labels), directory / LABELS_FILE), str(directory))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LABELS_FILE).write_text(_json_text(list(metadata.labels)), encoding="utf-8")
    (directory / METADATA_FILE).write_text(_json_text(data), encoding="utf-8")


def write_split(path: str | Path, train: list[str], val: list[str]) -> None:
    """Write ``split.json``: the sorted sha256 of the training and validation images."""
    text = json.dumps({"train": sorted(train), "val": sorted(val)}) + "\n"
    (Path(path) / SPLIT_FILE).write_text(text, encoding="utf-8")
