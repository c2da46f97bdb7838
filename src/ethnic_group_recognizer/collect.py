"""Collect training images from an image search (or a URL list, or a folder) into a dataset.

Why: the original project built its data by searching DuckDuckGo for each class name; this does
the same, safely and resumably. Search is behind :class:`ImageSource` so that any engine or list
can plug in. Downloads run concurrently with timeouts, retries with backoff, a per-host rate
limit and a size cap; content is judged by its magic bytes (never the URL or Content-Type),
decoded with the project's safe loader and re-encoded as a plain JPEG, so no file from the web
reaches the dataset as it came. Exact duplicates are dropped on the way in. Each image's
provenance (query, URLs, licence, time, hashes) goes into the manifest, and every attempt into
``DATASET/.collect/log.jsonl``, so a second run skips what is done.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import httpx

from ethnic_group_recognizer.config import LABELS, Config
from ethnic_group_recognizer.dataset import STATUS_OK, Dataset, append_jsonl, describe_file, read_jsonl
from ethnic_group_recognizer.http_fetch import Refused as _Refused
from ethnic_group_recognizer.http_fetch import read_capped
from ethnic_group_recognizer.images import (
    ImageError,
    is_image_path,
    load_image,
    sha256_bytes,
    sniff_format,
)
from ethnic_group_recognizer.progress import progress

COLLECT_DIR = ".collect"
LOG_FILE = "log.jsonl"
SEARCH_FILE = "searches.jsonl"
USER_AGENT = (
    "ethnic-group-recognizer/0.1 (dataset collection; +https://pypi.org/project/ethnic-group-recognizer)"
)
#: HTTP statuses worth another try: the server may answer differently in a moment.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class CollectError(RuntimeError):
    """A collection that cannot start (missing extra, bad URL list), with what to do about it."""


# -- search ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchResult:
    """One image a source found, with what is known about where it came from."""

    image_url: str
    page_url: str | None = None
    title: str | None = None
    licence: str | None = None
    width: int | None = None
    height: int | None = None
    engine: str = ""
    label: str | None = None  # sources that know the label (URL lists) say so


class ImageSource(Protocol):
    """Anything that turns a label and a query into image URLs: a search engine, a list, a folder."""

    name: str

    def search(self, label: str, query: str, max_results: int) -> list[SearchResult]: ...


def _as_int(value: object) -> int | None:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def parse_ddgs_images(items: Sequence[dict], engine: str = "duckduckgo") -> list[SearchResult]:
    """Turn ``DDGS().images(...)`` dicts into results: drop entries without a usable http(s) image
    URL, drop repeats, and keep the page URL, title and size. DuckDuckGo gives no licence."""
    results: list[SearchResult] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            continue
        url = str(item.get("image") or "").strip()
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc or url in seen:
            continue
        seen.add(url)
        page = str(item.get("url") or "").strip() or None
        results.append(
            SearchResult(
                image_url=url,
                page_url=page if page and urlsplit(page).scheme in ("http", "https") else None,
                title=(str(item.get("title") or "").strip() or None),
                licence=(str(item.get("license") or item.get("licence") or "").strip() or None),
                width=_as_int(item.get("width")),
                height=_as_int(item.get("height")),
                engine=engine,
            )
        )
    return results


class DuckDuckGoSource:
    """DuckDuckGo image search through the ``ddgs`` package (the ``collect`` extra)."""

    name = "duckduckgo"

    def __init__(self, region: str = "us-en", safesearch: str = "moderate", timeout: int = 15):
        self.region = region
        self.safesearch = safesearch
        self.timeout = timeout

    def search(self, label: str, query: str, max_results: int) -> list[SearchResult]:
        try:
            from ddgs import DDGS
            from ddgs.exceptions import DDGSException
        except ImportError as error:
            raise CollectError(
                "image search needs the 'collect' extra: pip install 'ethnic-group-recognizer[collect]'"
            ) from error
        try:
            items = DDGS(timeout=self.timeout).images(
                query,
                region=self.region,
                safesearch=self.safesearch,
                max_results=max_results,
                backend="duckduckgo",
            )
        except DDGSException as error:
            raise CollectError(f"DuckDuckGo search for {query!r} failed: {error}") from error
        return parse_ddgs_images(items, self.name)


class UrlListSource:
    """A file of image URLs: one per line (``#`` comments), ``label<TAB>url``, or a CSV with a
    header naming ``url`` and optionally ``label``, ``page_url``, ``licence``, ``title``."""

    name = "url-list"

    def __init__(self, path: str | Path, default_label: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CollectError(f"URL list not found: {self.path}")
        self.entries = self._read(default_label)

    def _read(self, default_label: str | None) -> list[SearchResult]:
        text = self.path.read_text(encoding="utf-8-sig")
        rows: list[dict] = []
        if self.path.suffix.lower() == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            if "url" not in (reader.fieldnames or []):
                raise CollectError(f"{self.path}: a CSV URL list needs a 'url' column")
            rows = [dict(row) for row in reader]
        else:
            for line in text.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = [p.strip() for p in line.split("\t")]
                rows.append({"url": parts[-1], "label": parts[0] if len(parts) > 1 else None})
        results = []
        for number, row in enumerate(rows, 1):
            url = (row.get("url") or "").strip()
            if urlsplit(url).scheme not in ("http", "https", "file"):
                raise CollectError(f"{self.path}: entry {number} is not an http(s) or file URL: {url!r}")
            label = (row.get("label") or "").strip() or default_label
            results.append(
                SearchResult(
                    image_url=url,
                    page_url=(row.get("page_url") or "").strip() or None,
                    title=(row.get("title") or "").strip() or None,
                    licence=(row.get("licence") or row.get("license") or "").strip() or None,
                    engine=self.name,
                    label=label,
                )
            )
        return results

    def labels(self) -> list[str]:
        return sorted({r.label for r in self.entries if r.label})

    def search(self, label: str, query: str, max_results: int) -> list[SearchResult]:
        return [r for r in self.entries if r.label in (label, None)][:max_results]


class FolderSource:
    """Images already on disk, ``ROOT/<label>/...``: the same checks and provenance as a download."""

    name = "folder"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CollectError(f"folder not found: {self.root}")

    def search(self, label: str, query: str, max_results: int) -> list[SearchResult]:
        folder = self.root / label
        files = (
            sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p))
            if folder.is_dir()
            else []
        )
        return [
            SearchResult(p.resolve().as_uri(), engine=self.name, label=label) for p in files[:max_results]
        ]


# -- download --------------------------------------------------------------------------------------
@dataclass
class Fetched:
    """What one URL gave: bytes or an error, and whether trying again later could help."""

    url: str
    data: bytes | None = None
    final_url: str | None = None
    status: int | None = None
    content_type: str | None = None
    error: str | None = None
    transient: bool = False
    attempts: int = 0


class HostRateLimiter:
    """At most ``per_second`` request starts per host, shared by all download threads."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, 0.0))
            self._next[host] = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class Downloader:
    """Fetch URLs with timeouts, retries and backoff, a per-host rate limit and a size cap."""

    def __init__(
        self,
        timeout: float = 15.0,
        total_timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        per_host_per_second: float = 2.0,
        max_bytes: int = 20 * 1024 * 1024,
        max_redirects: int = 5,
        user_agent: str = USER_AGENT,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.total_timeout = total_timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_bytes = max_bytes
        self.limiter = HostRateLimiter(per_host_per_second)
        self.sleep = sleep
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            follow_redirects=True,
            max_redirects=max_redirects,
            headers={"User-Agent": user_agent, "Accept": "image/*,*/*;q=0.5"},
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(self, url: str) -> Fetched:
        """Bytes of ``url`` or the reason there are none; never raises."""
        result = Fetched(url)
        if url.startswith("file:"):
            return self._read_file(url, result)
        if urlsplit(url).scheme not in ("http", "https"):
            result.error = f"unsupported URL scheme: {url[:40]!r}"
            return result
        for attempt in range(self.retries + 1):
            result.attempts = attempt + 1
            wait_for = None
            try:
                self._get(url, result)
                result.error, result.transient = None, False
                return result
            except _Refused as refused:
                result.error, result.transient, result.status = (
                    str(refused),
                    refused.transient,
                    refused.status,
                )
                wait_for = refused.retry_after
            except httpx.TooManyRedirects:
                result.error, result.transient = "too many redirects", False
            except httpx.UnsupportedProtocol as error:
                result.error, result.transient = f"redirected to an unsupported URL: {error}", False
            except httpx.TimeoutException as error:
                result.error, result.transient = f"timed out ({type(error).__name__})", True
            except httpx.TransportError as error:
                result.error, result.transient = f"connection failed: {error or type(error).__name__}", True
            if not result.transient or attempt == self.retries:
                break
            delay = self.backoff * 2**attempt * (1 + random.random() / 4)
            self.sleep(min(self.max_backoff, max(delay, wait_for or 0.0)))
        result.data = None
        return result

    def _get(self, url: str, result: Fetched) -> None:
        self.limiter.wait(urlsplit(url).netloc.lower())
        started = time.monotonic()
        with self.client.stream("GET", url) as response:
            result.status = response.status_code
            result.final_url = str(response.url)
            result.content_type = response.headers.get("content-type")
            if response.status_code != 200:
                retry_after = response.headers.get("retry-after", "")
                raise _Refused(
                    f"HTTP {response.status_code}",
                    response.status_code in RETRY_STATUSES,
                    response.status_code,
                    float(retry_after) if retry_after.isdigit() else None,
                )
            result.data = read_capped(
                response, self.max_bytes, started=started, total_timeout=self.total_timeout
            )

    def _read_file(self, url: str, result: Fetched) -> Fetched:
        path = Path(unquote(urlsplit(url).path))
        result.attempts = 1
        result.final_url = url
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                result.error = f"too large: {size:,} bytes (limit {self.max_bytes:,})"
            else:
                result.data = path.read_bytes()
        except OSError as error:
            result.error = f"cannot read file: {error.strerror or error}"
        return result


@dataclass
class Prepared:
    """A downloaded image, checked and re-encoded, ready to be written into the dataset."""

    jpeg: bytes
    source_sha256: str
    source_format: str
    width: int
    height: int
    original_size: tuple[int, int]


def prepare_image(
    data: bytes, config: Config | None = None, min_side: int = 96, max_side: int = 2048
) -> Prepared:
    """Check downloaded bytes by content and re-encode them as a clean JPEG, or raise ImageError.

    The format comes from the magic bytes alone; the decode goes through :func:`load_image`
    (truncation, decompression bombs, EXIF orientation); metadata is dropped; very large
    pictures are scaled down to ``max_side`` on their long side.
    """
    kind = sniff_format(data[:16])
    if kind is None:
        head = data[:64].lstrip().lower()
        what = "HTML" if head.startswith((b"<!doctype", b"<html", b"<")) else "unknown content"
        raise ImageError(f"not an image: the content is {what}, not JPEG, PNG, WebP, GIF, BMP or TIFF")
    image = load_image(data, config)
    original = image.size
    if min(original) < min_side:
        raise ImageError(f"image too small: {original[0]}x{original[1]} (need {min_side} px a side)")
    if max(original) > max_side:
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, optimize=True)
    return Prepared(buffer.getvalue(), sha256_bytes(data), kind, image.size[0], image.size[1], original)


# -- the collection run ---------------------------------------------------------------------------
@dataclass
class CollectOptions:
    per_class: int = 100  # fill each class folder up to this many usable images
    queries: tuple[str, ...] = ("{label}", "{label} traditional dress")
    search_factor: float = 2.0  # results asked for per image still needed (many downloads fail)
    workers: int = 8
    timeout: float = 15.0
    total_timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0
    per_host_per_second: float = 2.0
    max_bytes: int = 20 * 1024 * 1024
    min_side: int = 96
    max_side: int = 2048


@dataclass
class LabelSummary:
    had: int = 0
    added: int = 0
    duplicates: int = 0
    failed: int = 0
    skipped: int = 0  # URLs a previous run already finished
    errors: Counter = field(default_factory=Counter)


def _error_kind(error: str) -> str:
    return error.split(":")[0].split(" (")[0]


class Collector:
    """One collection run into a dataset folder; see :func:`collect`."""

    def __init__(
        self, out: Path, source: ImageSource, options: CollectOptions, config: Config, downloader: Downloader
    ):
        self.out = out
        self.source = source
        self.options = options
        self.config = config
        self.downloader = downloader
        self.state_dir = out / COLLECT_DIR
        self.log_path = self.state_dir / LOG_FILE
        self.dataset = Dataset(out, config)
        self.dataset.refresh(show_progress=False)
        self.done: set[tuple[str, str]] = set()
        for entry in read_jsonl(self.log_path):
            if entry.get("status") in ("ok", "duplicate") or not entry.get("transient"):
                self.done.add((entry["label"], entry["url"]))
        self.by_hash: dict[str, str] = {}
        for record in self.dataset.records.values():
            self.by_hash.setdefault(record.sha256, record.path)
            source_hash = (record.extra.get("provenance") or {}).get("source_sha256")
            if source_hash:
                self.by_hash.setdefault(source_hash, record.path)

    def candidates(self, label: str, need: int) -> list[SearchResult]:
        """Search results for a label (cached in ``.collect/searches.jsonl``), queries interleaved."""
        cache_path = self.state_dir / SEARCH_FILE
        cached = {
            (e["engine"], e["query"]): e
            for e in read_jsonl(cache_path)
            if e.get("engine") == self.source.name
        }
        wanted = max(1, math.ceil(need * self.options.search_factor / len(self.options.queries)))
        lists = []
        for template in self.options.queries:
            query = template.format(label=label)
            entry = cached.get((self.source.name, query))
            if entry is None or (
                entry["max_results"] < wanted and len(entry["results"]) >= entry["max_results"]
            ):
                found = self.source.search(label, query, wanted)
                entry = {
                    "engine": self.source.name,
                    "query": query,
                    "label": label,
                    "max_results": wanted,
                    "time": time.time(),
                    "results": [asdict(r) for r in found],
                }
                if self.source.name == DuckDuckGoSource.name:
                    append_jsonl(cache_path, entry)
            lists.append([(query, SearchResult(**r)) for r in entry["results"]])
        merged, seen = [], set()
        for row in range(max((len(x) for x in lists), default=0)):
            for results in lists:
                if row < len(results) and results[row][1].image_url not in seen:
                    seen.add(results[row][1].image_url)
                    merged.append(results[row])
        return merged

    def _work(self, result: SearchResult) -> tuple[Fetched, Prepared | None, str | None]:
        fetched = self.downloader.fetch(result.image_url)
        if fetched.data is None:
            return fetched, None, fetched.error
        try:
            return (
                fetched,
                prepare_image(fetched.data, self.config, self.options.min_side, self.options.max_side),
                None,
            )
        except ImageError as error:
            return fetched, None, str(error)

    def _commit(
        self,
        label: str,
        query: str,
        result: SearchResult,
        fetched: Fetched,
        prepared: Prepared,
        summary: LabelSummary,
    ) -> bool:
        """Write one image and its manifest record; False if it was a duplicate."""
        saved_hash = sha256_bytes(prepared.jpeg)
        provenance = {
            "query": query,
            "engine": result.engine or self.source.name,
            "image_url": result.image_url,
            "final_url": fetched.final_url,
            "page_url": result.page_url,
            "title": result.title,
            "licence": result.licence,
            "collected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source_sha256": prepared.source_sha256,
            "source_format": prepared.source_format,
            "source_size": list(prepared.original_size),
        }
        existing = self.by_hash.get(prepared.source_sha256) or self.by_hash.get(saved_hash)
        if existing:
            record = self.dataset.records.get(existing)
            if record is not None and "provenance" not in record.extra:
                # A file a crash left without provenance (or one imported by hand) gets it now.
                record.extra["provenance"] = provenance
                self.dataset.save()
            summary.duplicates += 1
            self._log(
                label, result.image_url, "duplicate", duplicate_of=existing, sha256=prepared.source_sha256
            )
            return False
        folder = self.out / label
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{saved_hash[:16]}.jpg"
        tmp = self.state_dir / "tmp" / target.name
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(prepared.jpeg)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        record = describe_file(target, self.out, label, self.config, source=result.image_url)
        record.extra["provenance"] = dict(provenance, sha256=record.sha256)
        self.dataset.records[record.path] = record
        self.dataset.save()
        self.by_hash[saved_hash] = record.path
        self.by_hash[prepared.source_sha256] = record.path
        summary.added += 1
        self._log(label, result.image_url, "ok", path=record.path, sha256=record.sha256)
        return True

    def _log(self, label: str, url: str, status: str, **details: object) -> None:
        entry = {"time": time.time(), "label": label, "url": url, "status": status, **details}
        append_jsonl(self.log_path, entry)
        if status in ("ok", "duplicate") or not details.get("transient"):
            self.done.add((label, url))

    def run_label(self, label: str, summary: LabelSummary) -> Iterator[None]:
        """Download until the class has ``per_class`` usable images; yields once per image added."""
        have = sum(1 for r in self.dataset.records.values() if r.label == label and r.status == STATUS_OK)
        summary.had = have
        need = self.options.per_class - have
        if need <= 0:
            return
        queue = []
        for query, result in self.candidates(label, need):
            if (label, result.image_url) in self.done:
                summary.skipped += 1
            else:
                queue.append((query, result))
        pending: dict[Future, tuple[str, SearchResult]] = {}
        position = 0
        with ThreadPoolExecutor(max_workers=self.options.workers, thread_name_prefix="egr-collect") as pool:
            while summary.added < need and (position < len(queue) or pending):
                while position < len(queue) and len(pending) < self.options.workers:
                    query, result = queue[position]
                    position += 1
                    pending[pool.submit(self._work, result)] = (query, result)
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    query, result = pending.pop(future)
                    if summary.added >= need:
                        continue  # enough already: leave this URL for a later, larger run
                    fetched, prepared, error = future.result()
                    if prepared is None:
                        summary.failed += 1
                        summary.errors[_error_kind(error or "error")] += 1
                        self._log(
                            label,
                            result.image_url,
                            "failed",
                            error=error,
                            transient=fetched.transient,
                            http_status=fetched.status,
                            attempts=fetched.attempts,
                        )
                    elif self._commit(label, query, result, fetched, prepared, summary):
                        yield None
            for future in pending:
                future.cancel()


def collect(
    labels: Sequence[str],
    out: str | Path,
    source: ImageSource,
    options: CollectOptions | None = None,
    config: Config | None = None,
    downloader: Downloader | None = None,
    show_progress: bool = True,
) -> dict[str, LabelSummary]:
    """Fill each label's class folder in ``out`` up to ``options.per_class`` images from ``source``.

    Resumable: URLs a previous run finished (saved, duplicate, or failed for good) are skipped,
    and a class already full is not searched again.
    """
    options = options or CollectOptions()
    config = config or Config()
    labels = list(dict.fromkeys(labels or LABELS))
    for label in labels:
        if not label.strip() or "/" in label or label.startswith("."):
            raise CollectError(f"not a usable label (it becomes a folder name): {label!r}")
    if options.per_class < 1:
        raise CollectError("--per-class must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    own = downloader is None
    downloader = downloader or Downloader(
        timeout=options.timeout,
        total_timeout=options.total_timeout,
        retries=options.retries,
        backoff=options.backoff,
        per_host_per_second=options.per_host_per_second,
        max_bytes=options.max_bytes,
    )
    collector = Collector(out, source, options, config, downloader)
    summaries: dict[str, LabelSummary] = {}
    try:
        for label in labels:
            summary = summaries[label] = LabelSummary()
            have = sum(
                1 for r in collector.dataset.records.values() if r.label == label and r.status == STATUS_OK
            )
            need = max(0, options.per_class - have)
            for _ in progress(
                collector.run_label(label, summary), label, disable=not show_progress or need == 0, total=need
            ):
                pass
    finally:
        if own:
            downloader.close()
    return summaries
