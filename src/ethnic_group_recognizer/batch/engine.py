"""Which engine runs a batch job, checked in one place, and whether its optional extras are here.

Importable without Ray or pyarrow, so the CLI can validate ``--engine`` before importing either.
"""

from __future__ import annotations

from typing import Literal, cast, get_args

#: ``local``: this process; ``ray``: an actor pool on Ray Data (a local Ray or a cluster).
Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = get_args(Engine)
#: The package is not on PyPI: the extra is installed from a clone of the repository.
RAY_HINT = "pip install '.[ray]' in a clone of the repository"


class MissingExtraError(RuntimeError):
    """Ray or pyarrow is not installed; the message says which command installs them."""


def parse_engine(value: str) -> Engine:
    """``value`` as an :data:`Engine`, or a ValueError that names the choices."""
    if value not in ENGINES:
        raise ValueError(f"unknown engine {value!r}: use {' or '.join(repr(e) for e in ENGINES)}")
    return cast(Engine, value)


def require_pyarrow() -> None:
    """Parquet output needs pyarrow (part of the ``ray`` extra)."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as error:
        raise MissingExtraError(f"Parquet output needs pyarrow: {RAY_HINT}") from error


def require_engine(engine: Engine) -> None:
    """Raise :class:`MissingExtraError` unless ``engine``'s extras are installed."""
    require_pyarrow()
    if engine == "ray":
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError as error:
            raise MissingExtraError(f"--engine ray needs Ray: {RAY_HINT}") from error
