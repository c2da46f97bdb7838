"""The example-photo gallery: photos from a folder given at start-up, served by index, never by path.

In development the folder is ``../shared/data/examples`` (third-party photos that are never
committed). Files are addressed by a number assigned when the server starts, so a request can
never name a path outside the folder.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ethnic_group_recognizer.config import ABSTAIN_LABEL
from ethnic_group_recognizer.images import is_image_path

#: At most this many photos are listed, so a huge folder cannot make a huge page.
MAX_EXAMPLES = 200
_MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


@dataclass(frozen=True)
class Example:
    """One gallery photo: the label of its folder (None if not one of the model's labels) and its file."""

    id: int
    path: Path
    label: str | None

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES.get(self.path.suffix.lower(), "application/octet-stream")

    def to_dict(self, base_url: str = "/api/v1/examples") -> dict:
        return {"id": self.id, "name": self.path.name, "label": self.label, "url": f"{base_url}/{self.id}"}


def _label_of(path: Path, root: Path, labels: Collection[str]) -> str | None:
    for part in path.relative_to(root).parts[:-1]:
        if part in labels:
            return part
        if part == ABSTAIN_LABEL:
            return None
    return None


def scan_examples(root: Path | None, labels: Collection[str], limit: int = MAX_EXAMPLES) -> list[Example]:
    """The image files under ``root`` (sorted, at most ``limit``), each with the model's label of
    its folder; empty when there is no folder."""
    if root is None:
        return []
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"examples folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_path(p))[:limit]
    return [Example(i, path, _label_of(path, root, set(labels))) for i, path in enumerate(files)]
