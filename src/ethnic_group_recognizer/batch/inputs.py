"""What a batch job reads: sources expanded into entries, and one entry read into an image.

A source is an image file, a folder (searched recursively), a glob, an http(s) URL, or a list
file (``.txt``/``.lst``/``.list``, one entry a line, or ``.parquet`` with a ``path``/``url``
column). Every engine expands sources here, so all of them see the same entries.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.images import ImageError, is_image_path, load_image, sha256_bytes, sha256_file

if TYPE_CHECKING:  # pragma: no cover - typing only
    import httpx
    from PIL import Image

#: Text files that list one image path or URL per line.
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
#: A download larger than this is refused (a photo is rarely over 50 MB; this stops a runaway URL).
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
#: Seconds a whole download may take, however steadily the server trickles bytes.
DOWNLOAD_DEADLINE_S = 300.0


def is_url(entry: str) -> bool:
    return entry.startswith(("http://", "https://"))


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


def list_entries(path: Path) -> list[str]:
    """Entries of a text or Parquet list; relative paths are relative to the list's folder."""
    if path.suffix.lower() == ".parquet":
        from ethnic_group_recognizer.batch.engine import require_pyarrow

        require_pyarrow()
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        column = next((name for name in ("path", "url") if name in table.column_names), None)
        if column is None:
            raise ValueError(f"{path}: a Parquet list needs a 'path' or 'url' column")
        raw = [str(value) for value in table.column(column).to_pylist() if value]
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        raw = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [
        entry if is_url(entry) or Path(entry).is_absolute() else str(path.parent / entry) for entry in raw
    ]


def expand_sources(sources: Iterable[str | Path]) -> list[str]:
    """Turn folders, globs, files, URLs and list files (.txt/.lst/.parquet) into unique entries.

    Folders and globs expand exactly as in ``egr predict`` without Ray (:func:`expand_inputs`).
    """
    entries: list[str] = []
    for item in sources:
        text = str(item)
        path = Path(text)
        if is_url(text):
            entries.append(text)
        elif path.is_file() and (path.suffix.lower() in LIST_SUFFIXES or path.suffix.lower() == ".parquet"):
            entries.extend(list_entries(path))
        else:
            entries.extend(str(p) for p in expand_inputs([text]))
    return list(dict.fromkeys(entries))  # unique, first occurrence wins, order kept


def describe_error(error: Exception) -> str:
    """The text of an error row: the loader's own message, or the exception's type and message."""
    if isinstance(error, ImageError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class Reader:
    """Reads one entry for the safe loader: a local path, or an http(s) URL fetched with httpx.

    Relative paths are resolved against the driver's working folder (``base``), since an actor on
    another node starts elsewhere. Every failure is an :class:`ImageError`, so it becomes an error row.
    """

    def __init__(
        self,
        base: str | None = None,
        timeout: float = 30.0,
        max_bytes: int = MAX_DOWNLOAD_BYTES,
        deadline: float = DOWNLOAD_DEADLINE_S,
    ):
        self.base = base
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.deadline = deadline
        self._client: httpx.Client | None = None

    def fetch(self, url: str) -> bytes:
        """The bytes at ``url``, through the shared capped reader (:mod:`~ethnic_group_recognizer.http_fetch`)."""
        import httpx

        from ethnic_group_recognizer.http_fetch import Refused, read_capped

        if self._client is None:
            self._client = httpx.Client(follow_redirects=True, timeout=self.timeout)
        started = time.monotonic()
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise ImageError(f"cannot fetch URL: HTTP {response.status_code}")
                return read_capped(response, self.max_bytes, started=started, total_timeout=self.deadline)
        except Refused as refused:
            raise ImageError(f"cannot fetch URL: {refused}") from None
        except httpx.HTTPError as error:
            raise ImageError(f"cannot fetch URL: {str(error) or type(error).__name__}") from None

    def read(
        self, entry: str, config: Config, want_hash: bool = False, target_side: int | None = None
    ) -> tuple[Image.Image, str | None]:
        """Decode one entry with the safe loader (draft mode to ``target_side``); its sha256 when asked."""
        if is_url(entry):
            data = self.fetch(entry)
            return load_image(data, config, target_side), sha256_bytes(data) if want_hash else None
        path = entry
        if self.base and not os.path.isabs(entry) and os.getcwd() != self.base:
            path = os.path.join(self.base, entry)
        image = load_image(path, config, target_side)  # the same checks and messages as `egr predict`
        return image, sha256_file(path) if want_hash else None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
