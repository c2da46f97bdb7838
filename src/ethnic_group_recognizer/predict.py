"""Batch prediction over files and folders, streaming one result per image.

Unreadable files become error results, never a crashed batch. Results come out in input order.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from pathlib import Path

from ethnic_group_recognizer.images import ImageError, is_image_path, load_image
from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.progress import progress


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for images, globs expanded; sorted per input.

    A path that does not exist is kept, so that it is reported as an error rather than dropped.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p)))
        elif not path.exists() and any(ch in str(item) for ch in "*?["):
            paths.extend(sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file()))
        else:
            paths.append(path)
    return paths


def predict_paths(
    recognizer: Recognizer, paths: list[Path], batch_size: int = 32, show_progress: bool = True
) -> Iterator[dict]:
    """Yield ``{"path", "label", "confidence", "scores"}`` or ``{"path", "error"}`` per path."""
    for start in progress(
        range(0, len(paths), batch_size),
        f"Predicting {len(paths)} images, batches of {batch_size}",
        disable=not show_progress,
        total=-(-len(paths) // batch_size),
    ):
        chunk = paths[start : start + batch_size]
        loaded, results = [], {}
        for i, path in enumerate(chunk):
            try:
                loaded.append((i, load_image(path, recognizer.config)))
            except ImageError as error:
                results[i] = {"path": str(path), "error": str(error)}
        if loaded:
            predictions = recognizer.predict_images([image for _, image in loaded])
            for (i, _), prediction in zip(loaded, predictions, strict=True):
                results[i] = prediction.to_dict(str(chunk[i]))
        for i in range(len(chunk)):
            yield results[i]
