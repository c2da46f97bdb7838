"""Parquet results folders: schemas, result tables, the atomic part writer, and resume.

A results folder is a Parquet *dataset folder* (``OUT/part-*.parquet``, read as one table by
pandas, pyarrow, DuckDB or Spark), written part by part and atomically, so an interrupted run
keeps every finished part, and a re-run skips every entry that already has a row. Parquet needs
pyarrow (the ``ray`` extra); it is imported inside the functions, so this module imports without it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.progress import progress

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa

#: Rows per Parquet part: small enough that an interruption loses little, large enough to stay few files.
PREDICT_ROWS_PER_PART = 5000
EMBED_ROWS_PER_PART = 1000
#: Run facts (kind, model or backbone) kept beside the parts; the leading underscore hides it from readers.
RUN_FILE = "_egr.json"
#: The underscore keeps it out of the Parquet dataset that pandas/pyarrow read from the folder.
JSONL_FILE = "_results.jsonl"


def predict_schema() -> pa.Schema:
    """Prediction rows; ``scores`` is the ``--jsonl`` scores object as a JSON string (any model's labels)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),
            ("confidence", pa.float64()),
            ("scores", pa.string()),
            ("prediction_set", pa.list_(pa.string())),
            ("coverage", pa.float64()),
            ("low_data", pa.bool_()),
            ("error", pa.string()),
        ]
    )


def embed_schema(backbone: str, config: Config | None = None) -> pa.Schema:
    """Embedding rows; the backbone is in the schema metadata so a copied file still says what it holds."""
    import pyarrow as pa

    from ethnic_group_recognizer.backbone import spec_for

    spec = spec_for(backbone, config)
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


def predict_row(result: dict) -> dict:
    """An ``egr predict --jsonl`` object as a row of :func:`predict_schema`."""
    if "error" in result:
        return {
            "path": result["path"],
            "label": None,
            "confidence": None,
            "scores": None,
            "prediction_set": None,
            "coverage": None,
            "low_data": None,
            "error": result["error"],
        }
    scores = json.dumps(result["scores"], ensure_ascii=False)
    return {**result, "scores": scores, "error": None}


def row_to_jsonl(row: dict) -> dict:
    """A Parquet prediction row back into the exact ``egr predict --jsonl`` object."""
    if row["error"] is not None:
        return {"path": row["path"], "error": row["error"]}
    return {
        "path": row["path"],
        "label": row["label"],
        "confidence": row["confidence"],
        "scores": json.loads(row["scores"]),
        "prediction_set": list(row["prediction_set"] or []),
        "coverage": row["coverage"],
        "low_data": bool(row["low_data"]),
    }


def _vectors(values: list[np.ndarray | None]) -> pa.Array:
    """A list<float32> column built from one flat buffer (per-element conversion is ten times slower)."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    sizes = [0 if v is None else len(v) for v in values]
    offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
    flat = np.concatenate(present).astype(np.float32) if present else np.zeros(0, np.float32)
    mask = pa.array([v is None for v in values])
    return pa.ListArray.from_arrays(offsets, pa.array(flat), mask=mask)


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts with every field of ``schema``) as one Arrow table of that schema."""
    import pyarrow as pa

    columns = [
        _vectors([row[field.name] for row in rows])
        if pa.types.is_list(field.type) and pa.types.is_floating(field.type.value_type)
        else pa.array([row[field.name] for row in rows], type=field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


class PartWriter:
    """Buffers result tables and writes ``part-<run>-<n>.parquet`` files, each atomically (tmp + rename)."""

    def __init__(self, folder: Path, schema: pa.Schema, rows_per_part: int):
        self.folder = folder
        self.schema = schema
        self.rows_per_part = rows_per_part
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.parts = 0

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


def part_files(folder: Path) -> list[Path]:
    """The Parquet parts of a results folder (or the file itself), hidden and underscore files left out."""
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))


def done_paths(folder: Path) -> set[str]:
    """Entries that already have a row (a result or an error) in a results folder: a re-run skips them."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for part in part_files(folder):
        done.update(pq.read_table(part, columns=["path"]).column("path").to_pylist())
    return done


def check_run_facts(folder: Path, facts: dict) -> None:
    """Refuse to resume into a folder made by another model or backbone: its rows would mix."""
    path = folder / RUN_FILE
    if path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"{path} is not a results file of egr ({error}); use a new --out folder"
            ) from None
        if before != facts:
            raise ValueError(
                f"{folder} holds results of another run ({before}); this run is {facts}. "
                "Use a new --out folder."
            )
    elif part_files(folder):
        raise ValueError(f"{folder} holds Parquet files not written by egr; use a new --out folder")
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")


def write_stream(
    tables: Iterable[pa.Table],
    writer: PartWriter,
    description: str,
    total: int,
    show_progress: bool,
    sink: TextIO | None = None,
) -> int:
    """Write result tables as they come (JSONL lines too when ``sink``); returns the error rows.

    The progress bar counts rows, whatever the size of the tables Ray hands over.
    """
    errors = 0
    rows = progress(tables, description, disable=not show_progress, total=total, weight=lambda t: t.num_rows)
    try:
        for table in rows:
            errors += table.num_rows - table.column("error").null_count
            writer.add_table(table)
            if sink is not None:
                for row in table.to_pylist():
                    sink.write(json.dumps(row_to_jsonl(row), ensure_ascii=False) + "\n")
    finally:
        writer.flush()  # an interrupted run keeps what it finished; a re-run does the rest
    return errors
