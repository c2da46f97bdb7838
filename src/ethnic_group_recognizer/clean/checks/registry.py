"""The check registry: each check says once what it is called, whether its fix is safe, and what it needs.

Modelled on cleanlab's Datalab issue managers: a check is a function over the shared
:class:`~ethnic_group_recognizer.clean.context.CleanContext` that adds flags through it. The
registry (not the check) decides whether a check can run at all, and says why not, so that the
report's "skipped" list, ``--auto``'s notion of safe and the order of the report come from one
place. Adding a check is one decorated function in a module of :mod:`.checks`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: What each registered check needs from the shared context (see ``Check.needs_embeddings``).
CheckFunction = Callable[[Any], None]


@dataclass(frozen=True)
class Check:
    """One registered check; ``run(context)`` adds its flags via ``context.flag(...)``."""

    name: str
    run: CheckFunction
    #: Its fix may be applied without a reviewer (``egr clean --auto``): unreadable, exact copies.
    safe: bool = False
    #: It reads the shared out-of-fold model (embeddings of at least two classes); skipped without.
    needs_embeddings: bool = False
    #: Modules it imports, with the install hint shown when one is missing.
    requires: tuple[tuple[str, str], ...] = ()
    #: A boolean field of ``CleanOptions`` that turns it off.
    option: str | None = None
    #: One line: what it finds.
    summary: str = ""


_REGISTRY: dict[str, Check] = {}


def register(
    name: str,
    *,
    safe: bool = False,
    needs_embeddings: bool = False,
    requires: tuple[tuple[str, str], ...] = (),
    option: str | None = None,
    summary: str = "",
) -> Callable[[CheckFunction], CheckFunction]:
    """Register the decorated function as the check ``name`` (report order: registration order)."""

    def decorate(function: CheckFunction) -> CheckFunction:
        if name in _REGISTRY:
            raise ValueError(f"check {name!r} is registered twice")
        _REGISTRY[name] = Check(name, function, safe, needs_embeddings, requires, option, summary)
        return function

    return decorate


def unregister(name: str) -> Check:
    """Take a check out of the registry (a plugin's or a test's own); returns it."""
    return _REGISTRY.pop(name)


def registered() -> tuple[Check, ...]:
    """Every check, in the order the report lists them."""
    return tuple(_REGISTRY.values())


def check_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def safe_check_names() -> frozenset[str]:
    """Checks whose fix needs no reviewer."""
    return frozenset(name for name, check in _REGISTRY.items() if check.safe)


def _missing(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return True
    return False


def skip_reason(check: Check, context: Any) -> str | None:
    """Why ``check`` cannot run on ``context`` (None: it can), in the order a person would fix it."""
    options = context.options
    if check.option is not None and not getattr(options, check.option):
        return "turned off"
    if check.needs_embeddings:
        if not options.embeddings:
            return "embeddings turned off"
        if context.model() is None:
            return context.model_unavailable
    for module, hint in check.requires:
        if _missing(module):
            return f"needs {module}: {hint}"
    return None


def run_checks(context: Any) -> None:
    """Run every registered check that can run; record why each other one was skipped."""
    for check in registered():
        reason = skip_reason(check, context)
        if reason is not None:
            context.skip(check.name, reason)
            continue
        check.run(context)
