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
    """``egr predict --jsonl`` objects for ``entries``, in order; failures become ``{"path","error"}``.

    The same engine as ``egr predict`` (decoding overlapped with the model, draft mode): only
    the reader differs (it also fetches URLs).
    """
    low_data = set(recognizer.low_data_labels())
    config, side = recognizer.config, recognizer.decode_side
    results: list[dict] = []
    try:
        for entry, result in recognizer.predict_sources(
            entries,
            decode=lambda entry: reader.read(entry, config, target_side=side)[0],
            expected=(Exception,),  # any bad file is a row, never a crashed job
        ):
            if isinstance(result, BaseException):
                results.append({"path": entry, "error": describe_error(result)})
            else:
                results.append(prediction_row(result, entry, low_data))
    except Exception as error:  # the model failed: the rest of the batch are error rows
        for entry in entries[len(results) :]:
            results.append({"path": entry, "error": f"model failed: {describe_error(error)}"})
    return results


def embed_batch(embedder: Embedder, entries: Sequence[str], reader: Reader, mirror: bool) -> list[dict]:
    """Embedding rows ``{"path","sha256","embedding","embedding_mirror","error"}`` for ``entries``."""
    rows = [
        {"path": entry, "sha256": None, "embedding": None, "embedding_mirror": None, "error": None}
        for entry in entries
    ]
    loaded = []
    for i, entry in enumerate(entries):
        try:
            # decoded as the embedding cache's full-photo views are (draft to the input side)
            side = embedder.spec.image_size
            image, digest = reader.read(entry, embedder.config, want_hash=True, target_side=side)
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
