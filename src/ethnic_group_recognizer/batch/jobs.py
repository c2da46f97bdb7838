"""``predict_to_parquet`` and ``embed_to_parquet``: a whole batch job, from sources to a results folder.

The driver (this process) expands the sources, skips every entry already in the results folder,
hands the rest to an engine and writes the result tables as they arrive. Prediction runs on Ray
only (``egr predict`` without Ray is :func:`~ethnic_group_recognizer.predict.predict_paths`);
embedding runs here or on Ray, with the same reading, batching and writing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ethnic_group_recognizer.batch.engine import Engine, parse_engine, require_engine
from ethnic_group_recognizer.batch.inputs import Reader, expand_sources
from ethnic_group_recognizer.batch.parquet import (
    EMBED_ROWS_PER_PART,
    JSONL_FILE,
    PREDICT_ROWS_PER_PART,
    PartWriter,
    check_run_facts,
    done_paths,
    embed_schema,
    predict_schema,
    to_table,
    write_stream,
)
from ethnic_group_recognizer.batch.work import embed_batch
from ethnic_group_recognizer.config import Config

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa


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

    def describe(self, verb: str) -> str:
        """One line for a person: what was done, skipped and failed, and where the results are."""
        rate = self.processed / self.seconds if self.seconds else 0.0
        return (
            f"{verb} {self.processed} of {self.inputs} inputs ({self.errors} error rows), "
            f"{self.skipped} already done; {self.seconds:.1f} s ({rate:.1f}/s) -> {self.out}"
        )


def _job_config(config: Config | None, batch_size: int | None) -> Config:
    """The caller's config (all of it) with the job's batch size, when one is given."""
    config = config or Config()
    batch_size = config.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    return dataclasses.replace(config, batch_size=batch_size)


def _actor_config(config: Config, cpus_per_actor: float) -> Config:
    """``config`` for one actor: ``threads=0`` ("every core") becomes the actor's CPU share, as a
    pool of actors that each took every core of a node would fight over them."""
    return dataclasses.replace(config, threads=config.threads or max(1, int(cpus_per_actor)))


def _model_files(
    model: Path | None, config: Config, threshold: float | None
) -> tuple[dict[str, bytes], dict]:
    """The model's files as bytes (shipped to actors) and the facts that identify its results."""
    from ethnic_group_recognizer.model import Recognizer
    from ethnic_group_recognizer.model_dir import LABELS_FILE, METADATA_FILE, MODEL_FILE

    recognizer = Recognizer.load(model, config, threshold=threshold)  # checks the folder, clear errors
    # What an actor needs of the model directory, shipped through the object store.
    files = {
        name: (recognizer.directory / name).read_bytes() for name in (MODEL_FILE, LABELS_FILE, METADATA_FILE)
    }
    facts = {
        "kind": "predict",
        "model": recognizer.name,
        "version": recognizer.version,
        "model_sha256": hashlib.sha256(files[MODEL_FILE]).hexdigest(),
    }
    if threshold is not None:  # another threshold gives other labels: its rows must not mix
        facts["threshold"] = threshold
    return files, facts


def predict_to_parquet(
    sources: Iterable[str | Path],
    out: Path,
    model: Path | None = None,
    *,
    address: str | None = None,
    batch_size: int | None = None,
    jsonl: bool = False,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    config: Config | None = None,
    threshold: float | None = None,
    show_progress: bool = True,
) -> RunSummary:
    """Classify on Ray every source image not yet in ``out``; append Parquet parts (and ``_results.jsonl``).

    An actor pool of ``actors`` sessions (by default one per ``cpus_per_actor`` CPUs of the
    cluster), each with ``config`` (``batch_size``, when given, replaces its batch size).
    """
    require_engine("ray")
    config = _job_config(config, batch_size)
    started = time.perf_counter()
    out = Path(out)
    entries = expand_sources(sources)
    files, facts = _model_files(model, config, threshold)
    if not entries:  # nothing to read: leave no empty results folder behind
        return RunSummary(out, 0, 0, 0, 0, time.perf_counter() - started)
    check_run_facts(out, facts)
    done = done_paths(out)
    todo = [entry for entry in entries if entry not in done]
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(out / JSONL_FILE, "a", encoding="utf-8")) if jsonl else None
        tables: Iterator[pa.Table] = iter(())
        if todo:
            from ethnic_group_recognizer.batch.ray import PredictActor, ray_session, ray_tables, ship

            stack.enter_context(ray_session(address))
            args = (ship(files), _actor_config(config, cpus_per_actor), threshold, os.getcwd())
            tables = ray_tables(todo, PredictActor, args, config.batch_size, actors, cpus_per_actor)
        writer = PartWriter(out, predict_schema(), PREDICT_ROWS_PER_PART)
        errors = write_stream(tables, writer, "Predicting (ray)", len(todo), show_progress, sink)
    seconds = time.perf_counter() - started
    return RunSummary(out, len(entries), len(entries) - len(todo), len(todo), errors, seconds)


def embed_to_parquet(
    sources: Iterable[str | Path],
    out: Path,
    backbone: str | None = None,
    *,
    engine: Engine | str = "ray",
    address: str | None = None,
    batch_size: int | None = None,
    mirror: bool = True,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    config: Config | None = None,
    show_progress: bool = True,
) -> RunSummary:
    """Backbone embeddings (plain and, by default, mirrored, as training uses both) of every source
    image not yet in ``out``, as Parquet parts: path, sha256, embedding, embedding_mirror, error.

    ``backbone`` defaults to ``config.backbone``; every other setting of ``config`` reaches the
    engine as it is (``batch_size``, when given, replaces its batch size).
    """
    from ethnic_group_recognizer.backbone import backbone_onnx, spec_for

    engine = parse_engine(engine)
    require_engine(engine)
    config = _job_config(config, batch_size)
    config = dataclasses.replace(config, backbone=backbone or config.backbone)
    spec_for(config.backbone, config)  # unknown backbone: a clear error before any work
    started = time.perf_counter()
    out = Path(out)
    entries = expand_sources(sources)
    if not entries:
        return RunSummary(out, 0, 0, 0, 0, time.perf_counter() - started)
    onnx_file = backbone_onnx(config.backbone, config)  # exported once here; actors get the bytes
    facts = {"kind": "embed", "backbone": config.backbone, "mirror": mirror, "network_file": onnx_file.name}
    check_run_facts(out, facts)
    done = done_paths(out)
    todo = [entry for entry in entries if entry not in done]
    schema = embed_schema(config.backbone, config)
    with contextlib.ExitStack() as stack:
        tables: Iterator[pa.Table] = iter(())
        if todo and engine == "local":
            from ethnic_group_recognizer.backbone import Embedder

            embedder = Embedder(config.backbone, config, onnx_path=onnx_file)
            reader = Reader()
            stack.callback(reader.close)
            step = config.batch_size
            tables = (
                to_table(embed_batch(embedder, todo[i : i + step], reader, mirror), schema)
                for i in range(0, len(todo), step)
            )
        elif todo:
            from ethnic_group_recognizer.batch.ray import EmbedActor, ray_session, ray_tables, ship

            stack.enter_context(ray_session(address))
            shipped = ship({"backbone.onnx": onnx_file.read_bytes()})
            args = (shipped, _actor_config(config, cpus_per_actor), mirror, os.getcwd())
            tables = ray_tables(todo, EmbedActor, args, config.batch_size, actors, cpus_per_actor)
        writer = PartWriter(out, schema, EMBED_ROWS_PER_PART)
        errors = write_stream(tables, writer, f"Embedding ({engine})", len(todo), show_progress)
    seconds = time.perf_counter() - started
    return RunSummary(out, len(entries), len(entries) - len(todo), len(todo), errors, seconds)
