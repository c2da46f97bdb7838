"""The :class:`Recognizer`, the one object that makes predictions, and the ONNX head it runs.

The model directory format (files, typed metadata, load-time checks) lives in
:mod:`ethnic_group_recognizer.model_dir`. Prediction needs only onnxruntime, numpy and Pillow.
No pickle anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ethnic_group_recognizer.calibrate import in_scope_scores
from ethnic_group_recognizer.config import ABSTAIN_TEXT, DEFAULT_MODEL_DIR, Config
from ethnic_group_recognizer.conformal import ConformalCalibration, prediction_sets
from ethnic_group_recognizer.images import load_image
from ethnic_group_recognizer.model_dir import ModelDir, open_session, read_model_dir

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

    @property
    def abstained(self) -> bool:
        return self.label is None

    @property
    def display_label(self) -> str:
        return self.label if self.label is not None else ABSTAIN_TEXT

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

    Head: L2-normalise the embedding, one linear layer (K+1 outputs, the abstain class last),
    divide by the calibrated temperature, softmax. Built with ``onnx.helper``, so no torch needed.
    """
    import onnx  # training-time only: prediction needs onnxruntime, numpy and Pillow alone
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(backbone_path))
    graph = model.graph
    embedding = graph.output[0].name
    scale = np.float32(1.0 / temperature)
    graph.initializer.extend(
        [
            numpy_helper.from_array(weights.astype(np.float32).T.copy(), "head_weight"),
            numpy_helper.from_array(bias.astype(np.float32), "head_bias"),
            numpy_helper.from_array(np.array(scale, np.float32), "head_inverse_temperature"),
            numpy_helper.from_array(np.array(1e-12, np.float32), "head_epsilon"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("ReduceL2", [embedding], ["head_norm"], axes=[1], keepdims=1),
            helper.make_node("Max", ["head_norm", "head_epsilon"], ["head_norm_safe"]),
            helper.make_node("Div", [embedding, "head_norm_safe"], ["head_unit"]),
            helper.make_node("MatMul", ["head_unit", "head_weight"], ["head_matmul"]),
            helper.make_node("Add", ["head_matmul", "head_bias"], ["logits"]),
            helper.make_node("Mul", ["logits", "head_inverse_temperature"], ["head_scaled"]),
            helper.make_node("Softmax", ["head_scaled"], ["probabilities"], axis=1),
        ]
    )
    out = graph.output[0]
    graph.output.insert(
        0, helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(bias)])
    )
    del graph.output[1:]
    graph.output.append(out)
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
        from ethnic_group_recognizer.backbone import preprocess

        return preprocess(image, self.image_size, mirror)

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw model outputs for a preprocessed batch: probabilities (N, K+1) and embeddings."""
        probabilities, embedding = self.session.run(["probabilities", "embedding"], {"pixels": pixels})
        return probabilities, embedding

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, K+1) probabilities, averaged with the mirrored view when the model uses TTA."""
        out = []
        for start in range(0, len(images), self.config.batch_size):
            chunk = images[start : start + self.config.batch_size]
            probs = self.run(np.stack([self.preprocess(im) for im in chunk]))[0]
            if self.tta:
                mirrored = self.run(np.stack([self.preprocess(im, mirror=True) for im in chunk]))[0]
                probs = (probs + mirrored) / 2
            out.append(probs)
        return np.concatenate(out) if out else np.zeros((0, len(self.labels) + 1), np.float32)

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
                )
            )
        return predictions

    def predict_images(self, images: Sequence[Image.Image]) -> list[Prediction]:
        return self.decide_rows(self.probabilities(images)) if images else []

    def predict(self, image: str | Path | bytes | Image.Image) -> Prediction:
        """Classify one photo given as a path, raw bytes or a Pillow image.

        Raises :class:`~ethnic_group_recognizer.images.ImageError` for an unusable image.
        """
        return self.predict_images([load_image(image, self.config)])[0]
