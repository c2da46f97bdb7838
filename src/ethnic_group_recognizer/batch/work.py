"""The work on one batch of entries, the same in a Ray actor and in this process.

Any input that cannot be read becomes an error row, and a batch the model fails on becomes error
rows too: a bad file never crashes a job of a million.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ethnic_group_recognizer.batch.inputs import Reader, describe_error
from ethnic_group_recognizer.predict import prediction_row

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ethnic_group_recognizer.backbone import Embedder
    from ethnic_group_recognizer.model import Recognizer


def predict_batch(recognizer: Recognizer, entries: Sequence[str], reader: Reader) -> list[dict]:
    """``egr predict --jsonl`` objects for ``entries``, in order; failures become ``{"path","error"}``."""
    results: list[dict | None] = [None] * len(entries)
    low_data = set(recognizer.low_data_labels())
    loaded = []
    for i, entry in enumerate(entries):
        try:
            loaded.append((i, reader.read(entry, recognizer.config)[0]))
        except Exception as error:  # any bad file is a row, never a crashed job
            results[i] = {"path": entry, "error": describe_error(error)}
    if loaded:
        try:
            predictions = recognizer.predict_images([image for _, image in loaded])
            for (i, _), prediction in zip(loaded, predictions, strict=True):
                results[i] = prediction_row(prediction, entries[i], low_data)
        except Exception as error:
            for i, _ in loaded:
                results[i] = {"path": entries[i], "error": f"model failed: {describe_error(error)}"}
    return [result for result in results if result is not None]


def embed_batch(embedder: Embedder, entries: Sequence[str], reader: Reader, mirror: bool) -> list[dict]:
    """Embedding rows ``{"path","sha256","embedding","embedding_mirror","error"}`` for ``entries``."""
    rows = [
        {"path": entry, "sha256": None, "embedding": None, "embedding_mirror": None, "error": None}
        for entry in entries
    ]
    loaded = []
    for i, entry in enumerate(entries):
        try:
            image, digest = reader.read(entry, embedder.config, want_hash=True)
            rows[i]["sha256"] = digest
            loaded.append((i, image))
        except Exception as error:  # any bad file is a row, never a crashed job
            rows[i]["error"] = describe_error(error)
    if loaded:
        images = [image for _, image in loaded]
        try:
            plain = embedder.embed_images(images)
            flipped = embedder.embed_images(images, mirror=True) if mirror else [None] * len(images)
            for (i, _), vector, mirrored in zip(loaded, plain, flipped, strict=True):
                rows[i]["embedding"] = vector
                rows[i]["embedding_mirror"] = mirrored
        except Exception as error:
            for i, _ in loaded:
                rows[i]["error"] = f"model failed: {describe_error(error)}"
    return rows
