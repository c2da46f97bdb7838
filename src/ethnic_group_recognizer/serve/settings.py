"""``ServeSettings``: everything ``egr serve`` can be told, read from ``EGR_*`` and validated here only.

One pydantic-settings class: each field has a default, an ``EGR_<FIELD>`` environment variable
(``EGR_MAX_UPLOAD_MB``, ``EGR_CORS_ORIGINS``, ...), a flag in ``serve/cli.py`` (a flag wins over
the environment) and, for the limits, a line in docs/SERVING.md ("Limits and hardening") saying
what a client sees when it is hit. Impossible values raise a ``ValueError`` (pydantic's
``ValidationError``) whose lines :func:`settings_error_lines` turns into plain sentences.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ethnic_group_recognizer.serve.errors import DEFAULT_MAX_UPLOAD_BYTES
from ethnic_group_recognizer.serve.payload import DEFAULT_MAX_PARTS

ENV_PREFIX = "EGR_"
CORS_ENV = f"{ENV_PREFIX}CORS_ORIGINS"
MIB = 1024 * 1024
#: The largest upload limit the server accepts: a photo needs a few MiB, and every upload slot
#: may hold about four times this much memory.
MAX_UPLOAD_MB_CEILING = 100
#: (field, lowest, highest) for the limits that are plain ranges.
_RANGES: tuple[tuple[str, float, float], ...] = (
    ("max_uploads", 1, 1024),
    ("upload_wait_s", 0, 600),
    ("body_timeout_s", 0.1, 3600),
    ("decode_timeout_s", 0.1, 600),
    ("decode_workers", 0, 256),
    ("explain_slots", 1, 64),
    ("max_parts", 1, 1000),
)


def parse_origins(text: str | None) -> list[str]:
    """``"https://a.org, https://b.org"`` -> a list; ``*`` allows any origin."""
    return [origin.strip().rstrip("/") for origin in (text or "").split(",") if origin.strip()]


def cors_origins_from_env() -> list[str]:
    return parse_origins(os.environ.get(CORS_ENV))


def upload_bytes_from_mb(megabytes: object) -> int:
    """The upload limit in bytes from MiB; a clear ValueError for inf, nan, <= 0 or over the ceiling."""
    try:
        value = float(megabytes)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"--max-upload-mb must be a number of MiB, got {megabytes!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_UPLOAD_MB_CEILING):
        raise ValueError(
            f"--max-upload-mb must be a number of MiB above 0 and at most {MAX_UPLOAD_MB_CEILING}, got {megabytes!r}"
        )
    return max(1, int(value * MIB))


class ServeSettings(BaseSettings):
    """Everything ``egr serve`` can be told; defaults are the ones ``make serve`` uses."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", protected_namespaces=())

    model_dir: Path | None = None  # None: the model shipped inside the package
    host: str = "127.0.0.1"
    port: int = 8000
    #: Origins allowed to call the API from a page on another host (``*``: any); ``$EGR_CORS_ORIGINS``
    #: is a comma-separated list.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    #: The same limit in MiB (``--max-upload-mb``, ``$EGR_MAX_UPLOAD_MB``); when given it sets
    #: ``max_upload_bytes``: a finite number, above 0, at most 100.
    max_upload_mb: float | None = None
    examples_dir: Path | None = None
    #: Off by default: on CPU a batch costs the same CPU per photo as single calls (measured in
    #: benchmarks/load.py), so batching adds queueing latency without adding throughput.
    batching: bool = False
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0
    #: Batches that may run at once (each uses onnxruntime's threads); more overlaps decoding with inference.
    batch_concurrency: int = 2
    #: Thread-pool size for decoding and model calls; 0 means one per core.
    threads: int = 0
    #: onnxruntime threads inside one model call. 1 with a pool of one thread per core gives the
    #: most requests/s under load (no intra-op synchronisation); 0 = all cores, for one user at a time.
    onnx_threads: int = 1
    #: Occlusion grid of ``?explain=true`` (grid x grid + 1 forward passes).
    explain_grid: int = 7
    #: Uploads held in memory at once (body, extracted image, decoded pixels); more wait.
    max_uploads: int = 8
    #: How long an upload waits for one of those slots before a 503 with Retry-After.
    upload_wait_s: float = 2.0
    #: The whole request body must arrive within this many seconds of its first byte, or 408.
    body_timeout_s: float = 30.0
    #: Decoding one upload (waiting for a decoder included) may take this long, then 503.
    decode_timeout_s: float = 10.0
    #: Decoding worker processes; 0 means one per core plus two, so two costly uploads never
    #: leave a normal one without a decoder.
    decode_workers: int = 0
    #: Explanations (``?explain=true``, about 25 predictions of CPU each) computed at once; 429 when full.
    explain_slots: int = 1
    #: Most parts in a multipart body (the form needs one).
    max_parts: int = DEFAULT_MAX_PARTS

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        """A comma-separated string (as ``$EGR_CORS_ORIGINS`` gives it) or a list, trimmed."""
        if isinstance(value, str):
            return parse_origins(value)
        if isinstance(value, list | tuple):
            return [str(origin).strip().rstrip("/") for origin in value if str(origin).strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> ServeSettings:
        """Every cross-field and range check, with one sentence naming the setting."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        if self.max_upload_mb is not None:
            self.max_upload_bytes = upload_bytes_from_mb(self.max_upload_mb)
        if not 1 <= self.max_upload_bytes <= MAX_UPLOAD_MB_CEILING * MIB:
            raise ValueError(
                f"max_upload_bytes must be 1 to {MAX_UPLOAD_MB_CEILING * MIB:,}, got {self.max_upload_bytes}"
            )
        for name, low, high in _RANGES:
            value = getattr(self, name)
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError("batch_wait_ms must be between 0 and 1000")
        if self.batch_concurrency < 1:
            raise ValueError("batch_concurrency must be at least 1")
        if self.onnx_threads < 0:
            raise ValueError("onnx_threads must be 0 (one per core) or more")
        if self.threads < 0:
            raise ValueError("threads must be 0 (one per core) or more")
        if not 2 <= self.explain_grid <= 16:
            raise ValueError(f"explain_grid must be between 2 and 16, got {self.explain_grid}")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"CORS origin must be '*' or start with http:// or https://, got {origin!r}")
        return self

    @property
    def upload_memory_bound_bytes(self) -> int:
        """Most memory the uploads in flight hold at once (docs/SERVING.md): per upload slot, the
        body, the image taken out of it and, for a data URL, its text (4 x the upload limit), plus
        the decoded pixels (at most 1024 px a side, 3 MiB) and the model's input (7 views of
        3 x 320 x 320 float32 for the shipped model, 8.2 MiB): 12 MiB."""
        return self.max_uploads * (4 * self.max_upload_bytes + 12 * MIB)

    @property
    def decode_processes(self) -> int:
        """Decoding workers: ``decode_workers``, or one per core plus two."""
        return self.decode_workers or self.worker_threads + 2

    @property
    def worker_threads(self) -> int:
        """Threads for the pool and for onnxruntime: the cores this process may run on (taskset/cgroups aware)."""
        if self.threads:
            return self.threads
        try:
            return len(os.sched_getaffinity(0)) or 1
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1


def settings_error_lines(error: ValidationError) -> list[str]:
    """Plain sentences for a refused setting, without pydantic's framing ("Value error, ...")."""
    lines = []
    for item in error.errors():
        message = str(item.get("msg", "")).removeprefix("Value error, ")
        where = ".".join(str(part) for part in item.get("loc", ()))
        lines.append(f"{where}: {message}" if where else message)
    return lines
