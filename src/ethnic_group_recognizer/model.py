"""The :class:`Recognizer`, the one object that makes predictions, and the ONNX head it runs.

The model directory format (files, typed metadata, load-time checks) lives in
:mod:`ethnic_group_recognizer.model_dir`. Prediction needs only onnxruntime, numpy and Pillow.
No pickle anywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from ethnic_group_recognizer.backbone import VIEWS_PER_RUN, preprocess
from ethnic_group_recognizer.calibrate import in_scope_scores
from ethnic_group_recognizer.config import ABSTAIN_TEXT, DEFAULT_MODEL_DIR, Config
from ethnic_group_recognizer.conformal import ConformalCalibration, prediction_sets
from ethnic_group_recognizer.engine import streamed
from ethnic_group_recognizer.images import ImageError, load_image
from ethnic_group_recognizer.model_dir import ModelDir, open_session, read_model_dir
from ethnic_group_recognizer.views import View, decode_side, render_views

#: What a photo may be given as.
Source = str | Path | bytes | Image.Image
Item = TypeVar("Item")

#: A class backed by fewer training images than this is flagged as low-data everywhere.
LOW_DATA_IMAGES = 20


@dataclass
class Prediction:
    """One photo's result. ``label`` is None when the model abstains ("none of these 12")."""

    label: str | None
    confidence: float
    scores: dict[str, float]  # probability of each of the 12 labels; 1 - sum is P(none of them)
    abstain_probability: float = 0.0
    #: The conformal prediction set: labels, most likely first; ``[]`` when abstaining. Contains the
    #: right label for ``coverage`` of photos like the calibration photos (docs/PREDICTION_SETS.md).
    prediction_set: list[str] = field(default_factory=list)
    #: The set's target coverage (e.g. 0.9); None for a model without a conformal calibration.
    coverage: float | None = None
    #: What the model calls "none of these" (its card's ``none_of_these``), for ``display_label``.
    abstain_text: str = ABSTAIN_TEXT

    @property
    def abstained(self) -> bool:
        return self.label is None

    @property
    def display_label(self) -> str:
        return self.label if self.label is not None else self.abstain_text

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda item: -item[1])

    def to_dict(self, path: str | None = None) -> dict:
        """The one JSON form of a prediction (``egr predict --jsonl``, batch and Ray results)."""
        data: dict = {} if path is None else {"path": path}
        data.update(
            label=self.label,
            confidence=round(self.confidence, 6),
            scores={label: round(p, 6) for label, p in self.scores.items()},
            prediction_set=list(self.prediction_set),
            coverage=self.coverage,
        )
        return data


def attach_head(
    backbone_path: Path,
    weights: np.ndarray,
    bias: np.ndarray,
    temperature: float,
    out_path: Path,
) -> None:
    """Append the classifier to a feature-extractor graph, giving one self-contained ONNX model.

    The model takes ``pixels`` (N, V, 3, S, S): the V views of each of N photos
    (:mod:`ethnic_group_recognizer.views`). The views run through the backbone as one batch of
    N*V; each view's embedding is L2-normalised and the V of a photo averaged, as the head was
    trained (docs/RECIPES.md); then the head: L2-normalise, one linear layer (K+1 outputs, the
    abstain class last), divide by the calibrated temperature, softmax. V is read from the input's
    shape, so one graph serves any number of views (``explain`` runs one). Built with
    ``onnx.helper``, so no torch needed.
    """
    import onnx  # training-time only: prediction needs onnxruntime, numpy and Pillow alone
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(backbone_path))
    graph = model.graph
    view_shape = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]  # [3, S, S]
    # The backbone reads the views flattened to (N*V, 3, S, S) and its per-view output is renamed:
    # "pixels" and "embedding" become the whole model's input and (photo-averaged) output.
    renames = {graph.input[0].name: "pixels_flat", graph.output[0].name: "view_embedding"}
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", "views", *view_shape])
    )
    scale = np.float32(1.0 / temperature)
    graph.initializer.extend(
        [
            numpy_helper.from_array(weights.astype(np.float32).T.copy(), "head_weight"),
            numpy_helper.from_array(bias.astype(np.float32), "head_bias"),
            numpy_helper.from_array(np.array(scale, np.float32), "head_inverse_temperature"),
            numpy_helper.from_array(np.array(1e-12, np.float32), "head_epsilon"),
            numpy_helper.from_array(np.array([-1, *view_shape], np.int64), "views_flat_shape"),
            numpy_helper.from_array(np.array([weights.shape[1]], np.int64), "views_width"),
        ]
    )
    graph.node.insert(0, helper.make_node("Shape", ["pixels"], ["views_lead"], start=0, end=2))
    graph.node.insert(0, helper.make_node("Reshape", ["pixels", "views_flat_shape"], ["pixels_flat"]))
    graph.node.extend(
        [
            helper.make_node("ReduceL2", ["view_embedding"], ["view_norm"], axes=[1], keepdims=1),
            helper.make_node("Max", ["view_norm", "head_epsilon"], ["view_norm_safe"]),
            helper.make_node("Div", ["view_embedding", "view_norm_safe"], ["view_unit"]),
            helper.make_node("Concat", ["views_lead", "views_width"], ["views_shape"], axis=0),
            helper.make_node("Reshape", ["view_unit", "views_shape"], ["views_unit"]),
            helper.make_node("ReduceMean", ["views_unit"], ["embedding"], axes=[1], keepdims=0),
            helper.make_node("ReduceL2", ["embedding"], ["head_norm"], axes=[1], keepdims=1),
            helper.make_node("Max", ["head_norm", "head_epsilon"], ["head_norm_safe"]),
            helper.make_node("Div", ["embedding", "head_norm_safe"], ["head_unit"]),
            helper.make_node("MatMul", ["head_unit", "head_weight"], ["head_matmul"]),
            helper.make_node("Add", ["head_matmul", "head_bias"], ["logits"]),
            helper.make_node("Mul", ["logits", "head_inverse_temperature"], ["head_scaled"]),
            helper.make_node("Softmax", ["head_scaled"], ["probabilities"], axis=1),
        ]
    )
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(bias)]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", weights.shape[1]]),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))


class Recognizer:
    """Load a model directory and classify photos.

    >>> recognizer = Recognizer.load()              # the shipped default model
    >>> recognizer.predict("photo.jpg").label       # a label, or None when it abstains
    """

    def __init__(self, directory: Path, config: Config | None = None, threshold: float | None = None):
        #: The checked model directory; ``model_dir.metadata`` is the typed :class:`ModelMetadata`.
        self.model_dir: ModelDir = read_model_dir(directory)
        self.directory = self.model_dir.path
        self.config = config or Config()
        self.session = open_session(self.model_dir, self.config)
        #: The session batch work's streams share (fewer onnxruntime threads), made on first use.
        self._stream_session = None
        self._stream_session_lock = threading.Lock()
        meta = self.model_dir.metadata
        self.labels: list[str] = list(meta.labels)
        self.image_size = meta.backbone.image_size
        self.threshold = float(meta.calibration.threshold if threshold is None else threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        #: How "none of these" is decided (``calibrate.in_scope_scores``): abstain when the rule's
        #: in-scope score is under ``threshold``.
        self.abstain_rule: str = meta.calibration.abstain_rule
        #: The prediction-set calibration; None for a model trained before sets (top label only).
        self.conformal: ConformalCalibration | None = meta.conformal
        self.tta = meta.tta
        #: The views of a photo the model averages (views.py); their count is the cost of a photo.
        self.views: tuple[View, ...] = meta.views
        #: Short side a photo is decoded to (JPEG draft mode), enough for the smallest view.
        self.decode_side = decode_side(self.views, self.image_size)

    @classmethod
    def load(
        cls, path: str | Path | None = None, config: Config | None = None, threshold: float | None = None
    ) -> Recognizer:
        """Load the model at ``path``, or the default model shipped inside the package.

        ``threshold`` overrides the calibrated abstain threshold: lower answers more photos
        (and abstains less on photos of other cultures); 0 never abstains. A folder that cannot
        give correct answers raises :class:`~ethnic_group_recognizer.model_dir.ModelError` (a
        ValueError; a missing folder or file is also a FileNotFoundError) with one clear line.
        """
        return cls(Path(path) if path else DEFAULT_MODEL_DIR, config, threshold)

    # -- facts about the model ---------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        """``metadata.json`` as a fresh dict (changing it changes nothing); prefer ``model_dir.metadata``."""
        return self.model_dir.metadata.to_json()

    @property
    def name(self) -> str:
        return self.model_dir.metadata.name

    @property
    def version(self) -> str:
        return self.model_dir.metadata.version

    @property
    def training_counts(self) -> dict[str, int]:
        """Training images behind each label (before augmentation)."""
        counts = self.model_dir.metadata.training_counts
        return {label: counts[label] for label in self.labels}

    def low_data_labels(self) -> list[str]:
        return [label for label, n in self.training_counts.items() if n < LOW_DATA_IMAGES]

    # -- prediction ----------------------------------------------------------------------------
    def preprocess(self, image: Image.Image, mirror: bool = False) -> np.ndarray:
        """One full-photo view (3, S, S), optionally mirrored: what ``explain`` occludes."""
        return preprocess(image, self.image_size, mirror)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """(V, 3, S, S): the model's views of one decoded photo."""
        return render_views(image, self.views, self.image_size)

    def decode(self, source: str | Path | bytes | Image.Image) -> Image.Image:
        """Decode a photo as prediction needs it (JPEG draft mode to ``decode_side``)."""
        return load_image(source, self.config, target_side=self.decode_side)

    def run(self, pixels: np.ndarray, session=None) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs for (N, V, 3, S, S) views of N photos: probabilities (N, K+1), embeddings (N, d).

        Any V works (``explain`` runs single views); all of a photo's views go in one
        ``session.run``, and at most :data:`VIEWS_PER_RUN` views do (activations take about
        20 MB a view and the arena keeps its peak), so memory stays flat at any batch size.
        A format-1 graph (one view a row) averages its rows' outputs here. ``session``: another
        session of the same graph (the engine's streams share one with fewer threads).
        """
        session = session or self.session
        step = max(1, VIEWS_PER_RUN // max(1, pixels.shape[1]))
        if len(pixels) > step:
            parts = [self.run(pixels[start : start + step], session) for start in range(0, len(pixels), step)]
            return np.concatenate([p for p, _ in parts]), np.concatenate([e for _, e in parts])
        if self.model_dir.metadata.views_in_graph:
            probabilities, embedding = session.run(["probabilities", "embedding"], {"pixels": pixels})
            return probabilities, embedding
        n, v = pixels.shape[:2]
        flat = pixels.reshape(n * v, *pixels.shape[2:])
        probabilities, embedding = session.run(["probabilities", "embedding"], {"pixels": flat})
        return probabilities.reshape(n, v, -1).mean(axis=1), embedding.reshape(n, v, -1).mean(axis=1)

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, K+1) probabilities of decoded photos, ``config.batch_size`` photos a model call."""
        out = []
        for start in range(0, len(images), self.config.batch_size):
            chunk = images[start : start + self.config.batch_size]
            out.append(self.run(np.stack([self.pixels(im) for im in chunk]))[0])
        return np.concatenate(out) if out else np.zeros((0, len(self.labels) + 1), np.float32)

    def predict_sources(
        self,
        sources: Iterable[Item],
        batch_size: int | None = None,
        decode: Callable[[Item], Image.Image] | None = None,
        expected: tuple[type[BaseException], ...] = (ImageError,),
    ) -> Iterator[tuple[Item, Prediction | BaseException]]:
        """Predict many photos as fast as the machine allows, yielding ``(source, result)`` in order.

        The engine (engine.py): ``config.engine_streams()`` threads (two on 2 cores) each decode
        a photo (draft mode), render its views and run them on :meth:`engine_session`; with one
        stream the next photos are decoded in a background thread while the model runs in this
        one. At most a few photos are in flight, so memory stays flat whatever the folder or
        photo size. A photo that fails to decode with an ``expected`` error yields that error. ``decode`` reads one source
        (default :meth:`decode`: a path, bytes or Pillow image); Ray actors pass their reader.
        """
        for source, row in self.predict_probabilities(sources, batch_size, decode, expected):
            yield source, row if isinstance(row, BaseException) else self.decide_rows(row[None])[0]

    def predict_probabilities(
        self,
        sources: Iterable[Item],
        batch_size: int | None = None,
        decode: Callable[[Item], Image.Image] | None = None,
        expected: tuple[type[BaseException], ...] = (ImageError,),
    ) -> Iterator[tuple[Item, np.ndarray | BaseException]]:
        """:meth:`predict_sources`, yielding each photo's (K+1) probability row instead."""
        step = self.config.batch_size if batch_size is None else batch_size
        if step < 1:
            raise ValueError(f"batch_size must be at least 1, got {step}")
        read = decode or self.decode
        source_iter = iter(sources)
        first = list(islice(source_iter, 2))  # one photo is not batch work: it keeps the full session
        streams = self.config.engine_streams() if len(first) > 1 else 1
        # the views in flight stay within VIEWS_PER_RUN: more photos a call buys nothing, costs memory
        step = min(step, max(1, VIEWS_PER_RUN // (len(self.views) * streams)))
        every = chain(first, source_iter)

        def views_of(source: Item) -> np.ndarray:
            return self.pixels(read(source))

        session = self.engine_session() if streams > 1 else self.session

        def rows(ready: list[np.ndarray]) -> np.ndarray:
            return self.run(np.stack(ready), session)[0]

        yield from streamed(every, views_of, rows, streams, step, expected)

    def engine_session(self):
        """The session the streams share: ``config.stream_threads()`` onnxruntime threads."""
        from ethnic_group_recognizer.backbone import onnx_session

        threads = self.config.stream_threads()
        if threads == self.config.session_threads():  # the load-time session already fits
            return self.session
        with self._stream_session_lock:
            if self._stream_session is None:  # the graph was checked when the model loaded
                self._stream_session = onnx_session(
                    self.model_dir.model_path, replace(self.config, threads=threads)
                )
            return self._stream_session

    @property
    def coverage(self) -> float | None:
        """Target coverage of the prediction sets, or None for a model without them."""
        return None if self.conformal is None else self.conformal.coverage

    def decide(self, probabilities: np.ndarray) -> Prediction:
        """Turn one probability row into a prediction: out of scope first, then the set."""
        return self.decide_rows(np.asarray(probabilities)[None, :])[0]

    def decide_rows(self, probabilities: np.ndarray) -> list[Prediction]:
        """Predictions for (N, K+1) probability rows (docs/PREDICTION_SETS.md, "How one photo is answered").

        1. abstain (label None, empty set) when the abstain rule's in-scope score is under the threshold;
        2. otherwise the label is the most likely of the K, and the set is the conformal set
           (the top label alone for a model without a conformal calibration).
        """
        rows = np.asarray(probabilities, dtype=float)
        k = len(self.labels)
        answered = in_scope_scores(rows, k, self.abstain_rule) >= self.threshold
        if self.conformal is not None:
            sets = prediction_sets(rows, self.conformal, threshold=0.0)
        else:
            sets = [[int(np.argmax(row[:k]))] for row in rows]
        none_of_these = self.model_dir.metadata.card_or_default.none_of_these
        predictions = []
        for row, answer, members in zip(rows, answered, sets, strict=True):
            best = int(np.argmax(row[:k]))
            predictions.append(
                Prediction(
                    label=self.labels[best] if answer else None,
                    confidence=float(row[best]),
                    scores={label: float(p) for label, p in zip(self.labels, row[:k], strict=True)},
                    abstain_probability=float(row[k]) if len(row) > k else 0.0,
                    prediction_set=[self.labels[i] for i in members] if answer else [],
                    coverage=self.coverage,
                    abstain_text=none_of_these,
                )
            )
        return predictions

    def predict_images(self, images: Sequence[Image.Image]) -> list[Prediction]:
        return self.decide_rows(self.probabilities(images)) if images else []

    def predict(self, image: str | Path | bytes | Image.Image) -> Prediction:
        """Classify one photo given as a path, raw bytes or a Pillow image.

        Raises :class:`~ethnic_group_recognizer.images.ImageError` for an unusable image.
        """
        return self.predict_images([self.decode(image)])[0]
