"""Embeddings files (``egr embed``) read back, and loaded into this machine's embedding cache.

At archive scale the embeddings (the slow part of ``egr train`` and ``egr clean``) are computed
once on a cluster; seeding the cache from that file means cleaning and a ``--views mirror|full``
training (not the default crops, whose views are embedded locally) read no pixels
for those images. The file is untrusted input: its backbone, input size and vector length are
checked against this machine's backbone before a single vector goes in.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ethnic_group_recognizer.batch.engine import require_pyarrow
from ethnic_group_recognizer.batch.parquet import part_files
from ethnic_group_recognizer.config import Config


def _parts(path: str | Path) -> list[Path]:
    parts = part_files(Path(path))
    if not parts:
        raise FileNotFoundError(f"no embeddings file (or folder of Parquet parts) at {path}")
    return parts


def embedding_file_facts(path: str | Path) -> dict:
    """The backbone facts stored in an embeddings file's schema metadata (empty if absent)."""
    require_pyarrow()
    import pyarrow.parquet as pq

    metadata = pq.read_schema(_parts(path)[0]).metadata or {}
    if b"egr" not in metadata:
        return {}
    try:
        facts = json.loads(metadata[b"egr"])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path}: its 'egr' schema metadata is not JSON") from None
    if not isinstance(facts, dict):
        raise ValueError(f"{path}: its 'egr' schema metadata is not an object")
    return facts


def load_embedding_file(path: str | Path, mirror: bool = False) -> dict[str, np.ndarray]:
    """``{sha256: embedding}`` from an ``egr embed`` file or folder (error rows left out)."""
    require_pyarrow()
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    column = "embedding_mirror" if mirror else "embedding"
    vectors: dict[str, np.ndarray] = {}
    for part in _parts(path):
        table = pq.read_table(part, columns=["sha256", column])
        table = table.filter(pc.and_(pc.is_valid(table.column("sha256")), pc.is_valid(table.column(column))))
        if table.num_rows == 0:
            continue
        flat = table.column(column).combine_chunks()
        try:
            matrix = np.asarray(flat.flatten(), dtype=np.float32).reshape(table.num_rows, -1)
        except ValueError:
            raise ValueError(f"{part}: its {column} vectors are not all of one length") from None
        vectors.update(zip(table.column("sha256").to_pylist(), matrix, strict=True))
    return vectors


def seed_embedding_cache(
    parquet_path: str | Path, backbone: str | None = None, config: Config | None = None
) -> dict[str, int]:
    """Put an embeddings file into this machine's :class:`EmbeddingCache` so that ``egr train`` and
    ``egr clean`` read no pixels for those images. Returns how many vectors went in per view.

    The backbone is the one stored in the file unless given; the file must match it.
    """
    from ethnic_group_recognizer.backbone import Embedder

    facts = embedding_file_facts(parquet_path)
    backbone = backbone or facts.get("backbone") or (config.backbone if config else "lite0")
    if facts.get("backbone", backbone) != backbone:
        raise ValueError(f"{parquet_path} holds {facts['backbone']} embeddings, not {backbone}")
    config = dataclasses.replace(config or Config(), backbone=backbone)
    embedder = Embedder(backbone, config)  # the same backbone (and cache) that train and clean use
    if facts.get("image_size", embedder.spec.image_size) != embedder.spec.image_size:
        raise ValueError(
            f"{parquet_path} holds embeddings of {facts['image_size']} px images; "
            f"this machine's {backbone} reads {embedder.spec.image_size} px"
        )
    width = embedder.session.get_outputs()[0].shape[-1]
    counts = {}
    for view, mirror in (("plain", False), ("mirror", True)):
        vectors = load_embedding_file(parquet_path, mirror=mirror)
        wrong = next((len(v) for v in vectors.values() if isinstance(width, int) and len(v) != width), None)
        if wrong is not None:
            raise ValueError(f"{parquet_path} holds vectors of length {wrong}; {backbone} gives {width}")
        cache = embedder.cache_for(mirror)
        for digest, vector in vectors.items():
            cache.put(digest, vector)
        cache.save()
        counts[view] = len(vectors)
    return counts
