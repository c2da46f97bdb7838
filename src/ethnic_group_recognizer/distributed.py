"""Batch prediction and embedding for archives larger than one machine, on Ray Data.

Why Ray: archives hold hundreds of thousands to millions of photos. Ray Data streams the input
list through a pool of actors, each holding one onnxruntime session, on a laptop (an embedded
local Ray) or on a cluster (``--address``). Each actor reads, decodes (with the project's own
safe :func:`~ethnic_group_recognizer.images.load_image`) and classifies its batch, so only file
names go in and small result rows come out: no pixels travel through the object store.

Results are a Parquet *dataset folder* (``OUT/part-*.parquet``, readable as one table by pandas,
pyarrow, DuckDB or Spark), written by the driver part by part and atomically, so an interrupted
run keeps every finished part and a re-run skips every input that already has a row. A file that
cannot be read becomes an error row, never a crashed job.

The same reading, batching and writing serve ``engine="local"`` (this process, no Ray), so the
two engines cannot drift apart. Parquet needs pyarrow, which comes with the ``ray`` extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ethnic_group_recognizer.config import DEFAULT_MODEL_DIR, Config
from ethnic_group_recognizer.images import ImageError, load_image, sha256_bytes, sha256_file

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa

    from ethnic_group_recognizer.backbone import Embedder
    from ethnic_group_recognizer.model import Recognizer

RAY_HINT = "pip install 'ethnic-group-recognizer[ray]'"
#: Text files that list one image path or URL per line.
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
#: Rows per Parquet part: small enough that an interruption loses little, large enough to stay few files.
PREDICT_ROWS_PER_PART = 5000
EMBED_ROWS_PER_PART = 1000
#: Run facts (kind, model or backbone) kept beside the parts; the leading underscore hides it from readers.
RUN_FILE = "_egr.json"
#: The underscore keeps it out of the Parquet dataset that pandas/pyarrow read from the folder.
JSONL_FILE = "_results.jsonl"
#: A download larger than this is refused (a photo is rarely over 50 MB; this stops a runaway URL).
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
MODEL_FILES = ("model.onnx", "labels.json", "metadata.json")


class MissingExtraError(RuntimeError):
    """Ray or pyarrow is not installed; the message says which command installs them."""


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as error:
        raise MissingExtraError(f"Parquet output needs pyarrow: {RAY_HINT}") from error


def _require_ray() -> None:
    _require_pyarrow()
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as error:
        raise MissingExtraError(f"--engine ray needs Ray: {RAY_HINT}") from error


# -- inputs -------------------------------------------------------------------------------------
def is_url(entry: str) -> bool:
    return entry.startswith(("http://", "https://"))


def _list_entries(path: Path) -> list[str]:
    """Entries of a text or Parquet list; relative paths are relative to the list's folder."""
    if path.suffix.lower() == ".parquet":
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

    Folders and globs expand exactly as in the local engine, so both engines see the same paths.
    """
    from ethnic_group_recognizer.predict import expand_inputs

    entries: list[str] = []
    for item in sources:
        text = str(item)
        path = Path(text)
        if is_url(text):
            entries.append(text)
        elif path.is_file() and (path.suffix.lower() in LIST_SUFFIXES or path.suffix.lower() == ".parquet"):
            entries.extend(_list_entries(path))
        else:
            entries.extend(str(p) for p in expand_inputs([text]))
    return list(dict.fromkeys(entries))  # unique, first occurrence wins, order kept


class Reader:
    """Reads one input for the safe loader: a local path, or an http(s) URL fetched with httpx.

    Relative paths are resolved against the driver's working folder (``base``), since an actor on
    another node starts elsewhere. Every failure is an :class:`ImageError`, so it becomes an error row.
    """

    def __init__(self, base: str | None = None, timeout: float = 30.0, max_bytes: int = MAX_DOWNLOAD_BYTES):
        self.base = base
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._client = None

    def fetch(self, url: str) -> bytes:
        import httpx

        if self._client is None:
            self._client = httpx.Client(follow_redirects=True, timeout=self.timeout)
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise ImageError(f"cannot fetch URL: HTTP {response.status_code}")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ImageError(f"cannot fetch URL: larger than {self.max_bytes:,} bytes")
                    chunks.append(chunk)
        except httpx.HTTPError as error:
            raise ImageError(f"cannot fetch URL: {str(error) or type(error).__name__}") from None
        return b"".join(chunks)

    def read(self, entry: str, config: Config, want_hash: bool = False) -> tuple[Any, str | None]:
        """Decode one input with the safe loader; the sha256 of its bytes when asked."""
        if is_url(entry):
            data = self.fetch(entry)
            return load_image(data, config), sha256_bytes(data) if want_hash else None
        path = entry
        if self.base and not os.path.isabs(entry) and os.getcwd() != self.base:
            path = os.path.join(self.base, entry)
        image = load_image(path, config)  # the same checks and messages as the local engine
        return image, sha256_file(path) if want_hash else None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _describe(error: Exception) -> str:
    if isinstance(error, ImageError):
        return str(error)
    return f"{type(error).__name__}: {error}"


# -- the work on one batch (runs in a Ray actor, or in this process for engine="local") --------
def predict_batch(recognizer: Recognizer, entries: Sequence[str], reader: Reader) -> list[dict]:
    """``egr predict --jsonl`` objects for ``entries``, in order; failures become ``{"path","error"}``."""
    results: list[dict | None] = [None] * len(entries)
    loaded = []
    for i, entry in enumerate(entries):
        try:
            loaded.append((i, reader.read(entry, recognizer.config)[0]))
        except Exception as error:  # any bad file is a row, never a crashed job
            results[i] = {"path": entry, "error": _describe(error)}
    if loaded:
        try:
            predictions = recognizer.predict_images([image for _, image in loaded])
            for (i, _), prediction in zip(loaded, predictions, strict=True):
                results[i] = prediction.to_dict(entries[i])
        except Exception as error:
            for i, _ in loaded:
                results[i] = {"path": entries[i], "error": f"model failed: {_describe(error)}"}
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
            rows[i]["error"] = _describe(error)
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
                rows[i]["error"] = f"model failed: {_describe(error)}"
    return rows


# -- Parquet schemas and rows -------------------------------------------------------------------
def predict_schema() -> pa.Schema:
    """Prediction rows; ``scores`` is the ``--jsonl`` scores object as a JSON string (any model's labels)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),
            ("confidence", pa.float64()),
            ("scores", pa.string()),
            ("error", pa.string()),
        ]
    )


def embed_schema(backbone: str) -> pa.Schema:
    """Embedding rows; the backbone is in the schema metadata so a copied file still says what it holds."""
    import pyarrow as pa

    from ethnic_group_recognizer.backbone import spec_for

    spec = spec_for(backbone)
    facts = {"backbone": backbone, "network": spec.name, "image_size": spec.image_size, "resize": "squish"}
    return pa.schema(
        [
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("embedding", pa.list_(pa.float32())),
            ("embedding_mirror", pa.list_(pa.float32())),
            ("error", pa.string()),
        ],
        metadata={b"egr": json.dumps(facts).encode()},
    )


def _predict_row(result: dict) -> dict:
    if "error" in result:
        return {
            "path": result["path"],
            "label": None,
            "confidence": None,
            "scores": None,
            "error": result["error"],
        }
    scores = json.dumps(result["scores"], ensure_ascii=False)
    return {**result, "scores": scores, "error": None}


def _row_to_jsonl(row: dict) -> dict:
    """A Parquet prediction row back into the exact ``egr predict --jsonl`` object."""
    if row["error"] is not None:
        return {"path": row["path"], "error": row["error"]}
    scores = json.loads(row["scores"])
    return {"path": row["path"], "label": row["label"], "confidence": row["confidence"], "scores": scores}


def _vectors(values: list[np.ndarray | None]) -> pa.Array:
    """A list<float32> column built from one flat buffer (per-element conversion is ten times slower)."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    sizes = [0 if v is None else len(v) for v in values]
    offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
    flat = np.concatenate(present).astype(np.float32) if present else np.zeros(0, np.float32)
    mask = pa.array([v is None for v in values])
    return pa.ListArray.from_arrays(offsets, pa.array(flat), mask=mask)


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa

    columns = [
        _vectors([row[field.name] for row in rows])
        if pa.types.is_list(field.type)
        else pa.array([row[field.name] for row in rows], type=field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


# -- Ray actors -----------------------------------------------------------------------------------
def _materialise(files: dict[str, bytes]) -> Path:
    """Write shipped model files once per node (keyed by content) so cluster nodes need no shared disk."""
    digest = hashlib.sha256(b"".join(files[name] for name in sorted(files))).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "egr-ray-models" / digest
    if not folder.is_dir():
        tmp = folder.with_name(f".{digest}-{uuid.uuid4().hex}")
        tmp.mkdir(parents=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        try:
            os.replace(tmp, folder)
        except OSError:  # another actor on this node won the race; its copy is identical
            for name in files:
                (tmp / name).unlink()
            tmp.rmdir()
    return folder


def _shipped_files(shipped: list) -> dict[str, bytes]:
    """The model files the driver put in the object store (wrapped in a list, so Ray passes the ref)."""
    import ray

    return ray.get(shipped[0])


class _PredictActor:
    """One onnxruntime session per actor; called by Ray Data with a batch of input entries."""

    def __init__(self, shipped: list, threads: int, base: str):
        from ethnic_group_recognizer.model import Recognizer

        folder = _materialise(_shipped_files(shipped))
        self.recognizer = Recognizer.load(folder, Config(threads=threads))
        self.reader = Reader(base)
        self.schema = predict_schema()

    def __call__(self, batch: pa.Table) -> pa.Table:
        entries = [str(entry) for entry in batch.column("path").to_pylist()]
        rows = [_predict_row(r) for r in predict_batch(self.recognizer, entries, self.reader)]
        return _table(rows, self.schema)


class _EmbedActor:
    """One backbone session per actor; returns embedding rows for a batch of input entries."""

    def __init__(self, shipped: list, backbone: str, threads: int, mirror: bool, base: str):
        from ethnic_group_recognizer.backbone import Embedder

        folder = _materialise(_shipped_files(shipped))
        config = Config(backbone=backbone, threads=threads)
        self.embedder = Embedder(backbone, config, onnx_path=folder / "backbone.onnx")
        self.reader = Reader(base)
        self.mirror = mirror
        self.schema = embed_schema(backbone)

    def __call__(self, batch: pa.Table) -> pa.Table:
        entries = [str(entry) for entry in batch.column("path").to_pylist()]
        return _table(embed_batch(self.embedder, entries, self.reader, self.mirror), self.schema)


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Join the cluster at ``address``, or start an embedded local Ray; reuse one already running.

    Only a Ray started here is shut down here, so a caller (a test, a notebook) keeps its own.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        options["address"] = address
    elif num_cpus:
        options["num_cpus"] = num_cpus
    ray.init(**options)
    try:
        yield
    finally:
        ray.shutdown()


def _quiet_ray_data() -> None:
    """Our own progress bar on stderr replaces Ray Data's per-operator bars and start-up notes."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled": we know


def _ray_tables(
    entries: list[str], actor: type, constructor_args: tuple, batch_size: int, actors: int | None, cpus: float
) -> Iterator[pa.Table]:
    """Stream result tables from an actor pool over ``entries`` (unordered: first finished, first out)."""
    import ray
    import ray.data

    _quiet_ray_data()
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
    # Blocks of one to four batches: enough blocks to keep every actor busy, few enough to stay cheap.
    per_block = max(batch_size, min(4 * batch_size, -(-len(entries) // (4 * actors))))
    blocks = max(1, -(-len(entries) // per_block))
    dataset = ray.data.from_items([{"path": entry} for entry in entries], override_num_blocks=blocks)
    results = dataset.map_batches(
        actor,
        fn_constructor_args=constructor_args,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=min(actors, blocks)),
        num_cpus=cpus,
    )
    yield from results.iter_batches(batch_size=None, batch_format="pyarrow")


# -- output folder: parts, resume, run facts --------------------------------------------------------
class _PartWriter:
    """Buffers result tables and writes ``part-<run>-<n>.parquet`` files, each atomically (tmp + rename)."""

    def __init__(self, folder: Path, schema: pa.Schema, rows_per_part: int):
        self.folder = folder
        self.schema = schema
        self.rows_per_part = rows_per_part
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.parts = 0

    def add(self, row: dict) -> None:
        self.add_table(_table([row], self.schema))

    def add_table(self, table: pa.Table) -> None:
        self.buffer.append(table)
        self.buffered += table.num_rows
        if self.buffered >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.buffered:
            return
        name = f"part-{self.run}-{self.parts:05d}.parquet"
        tmp = self.folder / f".{name}.tmp"
        pq.write_table(pa.concat_tables(self.buffer).cast(self.schema), tmp)
        os.replace(tmp, self.folder / name)
        self.parts += 1
        self.buffer, self.buffered = [], 0


def _part_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))


def done_paths(folder: Path) -> set[str]:
    """Inputs that already have a row (a result or an error) in a results folder: a re-run skips them."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for part in _part_files(folder):
        done.update(pq.read_table(part, columns=["path"]).column("path").to_pylist())
    return done


def _check_run_facts(folder: Path, facts: dict) -> None:
    """Refuse to resume into a folder made by another model or backbone: its rows would mix."""
    path = folder / RUN_FILE
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != facts:
            raise ValueError(
                f"{folder} holds results of another run ({before}); this run is {facts}. "
                "Use a new --out folder."
            )
    elif _part_files(folder):
        raise ValueError(f"{folder} holds Parquet files not written by egr; use a new --out folder")
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")


def _track(tables: Iterable[pa.Table], description: str, total: int, disable: bool) -> Iterator[pa.Table]:
    """A progress bar on stderr that advances by rows, whatever the size of the tables."""
    if disable:
        yield from tables
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        for table in tables:
            yield table
            bar.advance(task, table.num_rows)


def _write_stream(
    tables: Iterable[pa.Table],
    writer: _PartWriter,
    description: str,
    total: int,
    show_progress: bool,
    sink=None,
) -> int:
    """Write result tables as they come (JSONL lines too when ``sink``); returns the error rows."""
    errors = 0
    try:
        for table in _track(tables, description, total, disable=not show_progress):
            errors += table.num_rows - table.column("error").null_count
            writer.add_table(table)
            if sink is not None:
                for row in table.to_pylist():
                    sink.write(json.dumps(_row_to_jsonl(row), ensure_ascii=False) + "\n")
    finally:
        writer.flush()  # an interrupted run keeps what it finished; a re-run does the rest
    return errors


@dataclass
class RunSummary:
    """What one run did; ``errors`` counts error rows written by this run."""

    out: Path
    inputs: int
    skipped: int
    processed: int
    errors: int
    seconds: float

    @property
    def usable(self) -> int:
        return self.processed - self.errors


def _model_files(model: Path | None) -> tuple[Path, dict[str, bytes], dict]:
    """The model's folder, its files as bytes (shipped to actors) and the facts that identify it."""
    from ethnic_group_recognizer.model import Recognizer

    directory = Path(model) if model else DEFAULT_MODEL_DIR
    recognizer = Recognizer.load(directory)  # validates the folder with the usual clear error
    files = {name: (directory / name).read_bytes() for name in MODEL_FILES}
    facts = {
        "kind": "predict",
        "model": recognizer.name,
        "version": recognizer.version,
        "model_sha256": hashlib.sha256(files["model.onnx"]).hexdigest(),
    }
    return directory, files, facts


def _check_engine(engine: str) -> None:
    if engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {engine!r}: use 'local' or 'ray'")
    if engine == "ray":
        _require_ray()
    else:
        _require_pyarrow()


def predict_to_parquet(
    sources: Iterable[str | Path],
    out: Path,
    model: Path | None = None,
    *,
    engine: str = "ray",
    address: str | None = None,
    batch_size: int = 32,
    jsonl: bool = False,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    show_progress: bool = True,
) -> RunSummary:
    """Classify every source image not yet in ``out``; append Parquet parts (and ``_results.jsonl``).

    ``engine="ray"`` runs an actor pool (``actors`` sessions of ``cpus_per_actor`` threads; by
    default one per CPU of the cluster); ``engine="local"`` runs the same batches in this process.
    """
    _check_engine(engine)
    started = time.perf_counter()
    out = Path(out)
    entries = expand_sources(sources)
    directory, files, facts = _model_files(model)
    if not entries:  # nothing to read: leave no empty results folder behind
        return RunSummary(out, 0, 0, 0, 0, time.perf_counter() - started)
    _check_run_facts(out, facts)
    done = done_paths(out)
    todo = [entry for entry in entries if entry not in done]
    schema = predict_schema()
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(out / JSONL_FILE, "a", encoding="utf-8")) if jsonl else None
        tables: Iterator[pa.Table] = iter(())
        if todo and engine == "local":
            from ethnic_group_recognizer.model import Recognizer

            recognizer = Recognizer(directory)
            reader = Reader()
            stack.callback(reader.close)
            tables = (
                _table(
                    [_predict_row(r) for r in predict_batch(recognizer, todo[i : i + batch_size], reader)],
                    schema,
                )
                for i in range(0, len(todo), batch_size)
            )
        elif todo:
            import ray

            stack.enter_context(ray_session(address))
            shipped = [ray.put(files)]  # nodes get the model from the object store: no shared disk needed
            args = (shipped, max(1, int(cpus_per_actor)), os.getcwd())
            tables = _ray_tables(todo, _PredictActor, args, batch_size, actors, cpus_per_actor)
        writer = _PartWriter(out, schema, PREDICT_ROWS_PER_PART)
        errors = _write_stream(tables, writer, f"Predicting ({engine})", len(todo), show_progress, sink)
    seconds = time.perf_counter() - started
    return RunSummary(out, len(entries), len(entries) - len(todo), len(todo), errors, seconds)


def embed_to_parquet(
    sources: Iterable[str | Path],
    out: Path,
    backbone: str = "lite0",
    *,
    engine: str = "ray",
    address: str | None = None,
    batch_size: int = 32,
    mirror: bool = True,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    config: Config | None = None,
    show_progress: bool = True,
) -> RunSummary:
    """Backbone embeddings (plain and, by default, mirrored, as training uses both) of every source
    image not yet in ``out``, as Parquet parts: path, sha256, embedding, embedding_mirror, error."""
    from ethnic_group_recognizer.backbone import backbone_onnx, spec_for

    _check_engine(engine)
    started = time.perf_counter()
    config = config or Config(backbone=backbone)
    spec_for(backbone)  # unknown backbone: a clear error before any work
    out = Path(out)
    entries = expand_sources(sources)
    if not entries:
        return RunSummary(out, 0, 0, 0, 0, time.perf_counter() - started)
    onnx_file = backbone_onnx(backbone, config)  # exported once here; actors get the bytes
    facts = {"kind": "embed", "backbone": backbone, "mirror": mirror, "network_file": onnx_file.name}
    _check_run_facts(out, facts)
    done = done_paths(out)
    todo = [entry for entry in entries if entry not in done]
    schema = embed_schema(backbone)
    with contextlib.ExitStack() as stack:
        tables: Iterator[pa.Table] = iter(())
        if todo and engine == "local":
            from ethnic_group_recognizer.backbone import Embedder

            embedder = Embedder(backbone, config, onnx_path=onnx_file)
            reader = Reader()
            stack.callback(reader.close)
            tables = (
                _table(embed_batch(embedder, todo[i : i + batch_size], reader, mirror), schema)
                for i in range(0, len(todo), batch_size)
            )
        elif todo:
            import ray

            stack.enter_context(ray_session(address))
            shipped = [ray.put({"backbone.onnx": onnx_file.read_bytes()})]
            args = (shipped, backbone, max(1, int(cpus_per_actor)), mirror, os.getcwd())
            tables = _ray_tables(todo, _EmbedActor, args, batch_size, actors, cpus_per_actor)
        writer = _PartWriter(out, schema, EMBED_ROWS_PER_PART)
        errors = _write_stream(tables, writer, f"Embedding ({engine})", len(todo), show_progress)
    seconds = time.perf_counter() - started
    return RunSummary(out, len(entries), len(entries) - len(todo), len(todo), errors, seconds)


# -- using an embeddings file for training and cleaning -------------------------------------------
def embedding_file_facts(path: str | Path) -> dict:
    """The backbone facts stored in an embeddings file's schema metadata (empty if absent)."""
    _require_pyarrow()
    import pyarrow.parquet as pq

    parts = _part_files(Path(path))
    if not parts:
        raise FileNotFoundError(f"no embeddings file (or folder of Parquet parts) at {path}")
    metadata = pq.read_schema(parts[0]).metadata or {}
    return json.loads(metadata[b"egr"]) if b"egr" in metadata else {}


def _read_embeddings(path: str | Path, column: str) -> dict[str, np.ndarray]:
    _require_pyarrow()
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    vectors: dict[str, np.ndarray] = {}
    parts = _part_files(Path(path))
    if not parts:
        raise FileNotFoundError(f"no embeddings file (or folder of Parquet parts) at {path}")
    for part in parts:
        table = pq.read_table(part, columns=["sha256", column])
        table = table.filter(pc.and_(pc.is_valid(table.column("sha256")), pc.is_valid(table.column(column))))
        if table.num_rows == 0:
            continue
        flat = table.column(column).combine_chunks()
        matrix = np.asarray(flat.flatten(), dtype=np.float32).reshape(table.num_rows, -1)
        vectors.update(zip(table.column("sha256").to_pylist(), matrix, strict=True))
    return vectors


def load_embedding_file(path: str | Path, mirror: bool = False) -> dict[str, np.ndarray]:
    """``{sha256: embedding}`` from an ``egr embed`` file or folder (error rows left out)."""
    return _read_embeddings(path, "embedding_mirror" if mirror else "embedding")


def seed_embedding_cache(
    parquet_path: str | Path, backbone: str | None = None, config: Config | None = None
) -> dict[str, int]:
    """Put an embeddings file into this machine's :class:`EmbeddingCache` so that ``egr train`` and
    ``egr clean`` read no pixels for those images. Returns how many vectors went in per view."""
    from ethnic_group_recognizer.backbone import Embedder, spec_for

    facts = embedding_file_facts(parquet_path)
    backbone = backbone or facts.get("backbone") or "lite0"
    if facts.get("backbone", backbone) != backbone:
        raise ValueError(f"{parquet_path} holds {facts['backbone']} embeddings, not {backbone}")
    config = config or Config(backbone=backbone)
    # cache_for only needs the config and the spec: skip building an onnxruntime session for it.
    stub = Embedder.__new__(Embedder)
    stub.config, stub.backbone, stub.spec = config, backbone, spec_for(backbone)
    counts = {}
    for view, mirror in (("plain", False), ("mirror", True)):
        vectors = load_embedding_file(parquet_path, mirror=mirror)
        cache = stub.cache_for(mirror)
        for digest, vector in vectors.items():
            cache.put(digest, vector)
        cache.save()
        counts[view] = len(vectors)
    return counts


# -- the CLI entry point the lead's ``egr predict --engine ray`` calls -----------------------------
def run_ray_predict_command(
    paths: list[str], model: Path | None, address: str | None, out: Path | None, jsonl: bool, batch_size: int
) -> None:
    """``egr predict SOURCE... --engine ray --out DIR``: Parquet parts in DIR, JSONL in DIR on request."""
    from ethnic_group_recognizer.console import fail

    if out is None:
        fail("--engine ray writes a Parquet results folder: give it with --out DIR")
    try:
        _require_ray()
        summary = predict_to_parquet(
            paths, out, model, engine="ray", address=address, batch_size=batch_size, jsonl=jsonl
        )
    except (MissingExtraError, FileNotFoundError, ValueError) as error:
        fail(str(error))
    finish_command(summary, "predicted")


def finish_command(summary: RunSummary, verb: str) -> None:
    """A command's last step: the summary line, then exit 2 for no inputs, 1 for nothing readable."""
    from ethnic_group_recognizer.console import fail, stderr

    report_summary(summary, stderr, verb)
    if summary.inputs == 0:
        fail("no images found in the given paths")
    if summary.processed and summary.usable == 0:
        fail("no input image could be read", code=1)


def report_summary(summary: RunSummary, console: Any, verb: str) -> None:
    """One line on stderr: what was done, skipped and failed, and where the results are."""
    rate = summary.processed / summary.seconds if summary.seconds else 0.0
    console.print(
        f"{verb} {summary.processed} of {summary.inputs} inputs ({summary.errors} error rows), "
        f"{summary.skipped} already done; {summary.seconds:.1f} s ({rate:.1f}/s) -> {summary.out}"
    )
