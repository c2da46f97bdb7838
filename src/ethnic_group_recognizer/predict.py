"""Batch prediction over files and folders in this process, streaming one result per image.

Unreadable files become error results, never a crashed batch. Results come out in input order.
Which files a set of paths, folders and globs names is :func:`~ethnic_group_recognizer.batch.inputs.expand_inputs`;
archives larger than one machine go to Ray (:func:`~ethnic_group_recognizer.batch.jobs.predict_to_parquet`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from ethnic_group_recognizer.images import ImageError
from ethnic_group_recognizer.model import Prediction, Recognizer
from ethnic_group_recognizer.progress import progress


def prediction_row(prediction: Prediction, path: str, low_data_labels: set[str]) -> dict:
    """One result as ``egr predict --jsonl`` prints it: :meth:`Prediction.to_dict` plus ``low_data``.

    ``low_data`` is true when the answered ``label`` is backed by few training images
    (:data:`~ethnic_group_recognizer.model.LOW_DATA_IMAGES`); false when the model abstained.
    """
    row = prediction.to_dict(path)
    row["low_data"] = prediction.label is not None and prediction.label in low_data_labels
    return row


def predict_paths(
    recognizer: Recognizer, paths: list[Path], batch_size: int | None = None, show_progress: bool = True
) -> Iterator[dict]:
    """Yield one :func:`prediction_row` or ``{"path", "error"}`` per path, in order.

    ``batch_size`` defaults to the recognizer's ``config.batch_size``; another value is checked
    by :class:`~ethnic_group_recognizer.config.Config`, at the call (a ValueError before any
    image is read), not at the first result.
    """
    if batch_size is not None:
        batch_size = dataclasses.replace(recognizer.config, batch_size=batch_size).batch_size
    step = recognizer.config.batch_size if batch_size is None else batch_size
    return _stream(recognizer, paths, step, show_progress)


def _stream(recognizer: Recognizer, paths: list[Path], step: int, show_progress: bool) -> Iterator[dict]:
    low_data = set(recognizer.low_data_labels())
    results = recognizer.predict_sources(paths, batch_size=step)
    for path, result in progress(
        results, f"Predicting {len(paths)} image{'' if len(paths) == 1 else 's'}", disable=not show_progress, total=len(paths)
    ):
        if isinstance(result, ImageError):
            yield {"path": str(path), "error": str(result)}
        else:
            yield prediction_row(result, str(path), low_data)
