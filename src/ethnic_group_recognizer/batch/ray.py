"""The Ray engine: a Ray session, the actors, and the actor pool that streams result tables.

Why Ray: archives hold hundreds of thousands to millions of photos. Ray Data streams the entry
list through a pool of actors, each holding one onnxruntime session, on a laptop (an embedded
local Ray) or on a cluster (``--address``). Each actor reads, decodes (with the project's own
safe :func:`~ethnic_group_recognizer.images.load_image`) and classifies its batch, so only entry
names go in and small result rows come out: no pixels travel through the object store.

Actors receive the caller's :class:`~ethnic_group_recognizer.config.Config` as it is (every
override included), so a job on Ray decodes and runs exactly as it would in this process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ethnic_group_recognizer.batch.inputs import Reader
from ethnic_group_recognizer.batch.parquet import embed_schema, predict_row, predict_schema, to_table
from ethnic_group_recognizer.batch.work import embed_batch, predict_batch
from ethnic_group_recognizer.config import Config

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa


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


def ship(files: dict[str, bytes]) -> list:
    """Put model files in the object store, so cluster nodes need no shared disk for them.

    The reference is wrapped in a list so that Ray passes it to the actors as a reference rather
    than resolving it into every constructor call.
    """
    import ray

    return [ray.put(files)]


def _materialise(shipped: list) -> Path:
    """The shipped files on this node's disk, written once per node (keyed by content)."""
    import ray

    files: dict[str, bytes] = ray.get(shipped[0])
    digest = hashlib.sha256(b"".join(files[name] for name in sorted(files))).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "egr-ray-models" / digest
    if folder.is_dir() and _holds(folder, files):
        return folder
    tmp = folder.with_name(f".{digest}-{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    try:
        os.replace(tmp, folder)
    except OSError:  # another actor on this node won the race, or the folder is not ours
        if folder.is_dir() and _holds(folder, files):
            for name in files:
                (tmp / name).unlink()
            tmp.rmdir()
        else:
            return tmp  # a private copy: never load model files we did not write
    return folder


def _holds(folder: Path, files: dict[str, bytes]) -> bool:
    """Whether ``folder`` holds exactly these bytes (a folder in /tmp may have been planted)."""
    try:
        return all((folder / name).read_bytes() == data for name, data in files.items())
    except OSError:
        return False


class PredictActor:
    """One onnxruntime session per actor; called by Ray Data with a batch of entries."""

    def __init__(self, shipped: list, config: Config, threshold: float | None, base: str):
        from ethnic_group_recognizer.model import Recognizer

        self.recognizer = Recognizer.load(_materialise(shipped), config, threshold=threshold)
        self.reader = Reader(base)
        self.schema = predict_schema()

    def __call__(self, batch: pa.Table) -> pa.Table:
        entries = [str(entry) for entry in batch.column("path").to_pylist()]
        rows = [predict_row(r) for r in predict_batch(self.recognizer, entries, self.reader)]
        return to_table(rows, self.schema)


class EmbedActor:
    """One backbone session per actor; returns embedding rows for a batch of entries."""

    def __init__(self, shipped: list, config: Config, mirror: bool, base: str):
        from ethnic_group_recognizer.backbone import Embedder

        onnx_path = _materialise(shipped) / "backbone.onnx"
        self.embedder = Embedder(config.backbone, config, onnx_path=onnx_path)
        self.reader = Reader(base)
        self.mirror = mirror
        self.schema = embed_schema(config.backbone, config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        entries = [str(entry) for entry in batch.column("path").to_pylist()]
        return to_table(embed_batch(self.embedder, entries, self.reader, self.mirror), self.schema)


def _quiet_ray_data() -> None:
    """Our own progress bar on stderr replaces Ray Data's per-operator bars and start-up notes."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled": we know


def ray_tables(
    entries: list[str], actor: type, constructor_args: tuple, batch_size: int, actors: int | None, cpus: float
) -> Iterator[pa.Table]:
    """Stream result tables from an actor pool over ``entries`` (unordered: first finished, first out).

    ``actors`` defaults to one per ``cpus`` CPUs of the cluster.
    """
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
