"""The model directory format and :class:`Recognizer`, the one object that makes predictions.

A model directory holds:

- ``model.onnx``: one self-contained graph, ``pixels`` (N,3,S,S) -> ``probabilities`` (N, K+1)
  over the K labels plus the abstain class, and ``embedding`` (N, 1280);
- ``labels.json``: the K labels in output order (the abstain class is the last output);
- ``metadata.json``: backbone, preprocessing, abstain threshold, temperature, per-class training
  counts, metrics, data hashes and version.

Prediction needs only onnxruntime, numpy and Pillow. No pickle anywhere.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ethnic_group_recognizer.config import ABSTAIN_TEXT, DEFAULT_MODEL_DIR, Config
from ethnic_group_recognizer.images import load_image

MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.json"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
#: A class backed by fewer training images than this is flagged as low-data everywhere.
LOW_DATA_IMAGES = 20


@dataclass
class Prediction:
    """One photo's result. ``label`` is None when the model abstains ("none of these 12")."""

    label: str | None
    confidence: float
    scores: dict[str, float]  # probability of each of the 12 labels; 1 - sum is P(none of them)
    abstain_probability: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def abstained(self) -> bool:
        return self.label is None

    @property
    def display_label(self) -> str:
        return self.label if self.label is not None else ABSTAIN_TEXT

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda item: -item[1])

    def to_dict(self, path: str | None = None) -> dict:
        """The ``egr predict --jsonl`` object."""
        data: dict = {} if path is None else {"path": path}
        data.update(
            label=self.label,
            confidence=round(self.confidence, 6),
            scores={label: round(p, 6) for label, p in self.scores.items()},
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
        from ethnic_group_recognizer.backbone import onnx_session

        self.directory = Path(directory)
        self.config = config or Config()
        for name in (MODEL_FILE, LABELS_FILE, METADATA_FILE):
            if not (self.directory / name).is_file():
                raise FileNotFoundError(f"not a model directory (no {name}): {self.directory}")
        self.labels: list[str] = json.loads((self.directory / LABELS_FILE).read_text(encoding="utf-8"))
        self.metadata: dict = json.loads((self.directory / METADATA_FILE).read_text(encoding="utf-8"))
        self.session = onnx_session(self.directory / MODEL_FILE, self.config)
        self.image_size = int(self.metadata["preprocessing"]["image_size"])
        self.threshold = float(self.metadata["threshold"] if threshold is None else threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        self.tta = bool(self.metadata.get("tta", False))
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, path: str | Path | None = None, config: Config | None = None, threshold: float | None = None
    ) -> Recognizer:
        """Load the model at ``path``, or the default model shipped inside the package.

        ``threshold`` overrides the calibrated abstain threshold: lower answers more photos
        (and abstains less on photos of other cultures); 0 never abstains.
        """
        return cls(Path(path) if path else DEFAULT_MODEL_DIR, config, threshold)

    # -- facts about the model ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.metadata.get("name", self.directory.name)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0"))

    @property
    def training_counts(self) -> dict[str, int]:
        """Training images behind each label (before augmentation)."""
        counts = self.metadata.get("training_counts", {})
        return {label: int(counts.get(label, 0)) for label in self.labels}

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

    def decide(self, probabilities: np.ndarray) -> Prediction:
        """Turn one probability row into a prediction, abstaining below the calibrated threshold."""
        scores = {
            label: float(p) for label, p in zip(self.labels, probabilities[: len(self.labels)], strict=True)
        }
        best = int(np.argmax(probabilities[: len(self.labels)]))
        confidence = float(probabilities[best])
        abstain = float(probabilities[len(self.labels)])
        label = self.labels[best] if confidence >= self.threshold else None
        return Prediction(label=label, confidence=confidence, scores=scores, abstain_probability=abstain)

    def predict_images(self, images: Sequence[Image.Image]) -> list[Prediction]:
        return [self.decide(row) for row in self.probabilities(images)]

    def predict(self, image: str | Path | bytes | Image.Image) -> Prediction:
        """Classify one photo given as a path, raw bytes or a Pillow image.

        Raises :class:`~ethnic_group_recognizer.images.ImageError` for an unusable image.
        """
        return self.predict_images([load_image(image, self.config)])[0]
