"""Every check of ``egr clean``, registered in report order: file and hash checks, the model-based
checks, then 'not a photograph'. Importing this package registers them all.

To add a check: write ``@register("name", safe=..., needs_embeddings=...)`` over a function of
the :class:`~ethnic_group_recognizer.clean.context.CleanContext` in one of these modules (or a
new one imported here); the report, the skipped list and ``--auto`` pick it up from the registry.
"""

from __future__ import annotations

from ethnic_group_recognizer.clean.checks import files, model, not_photo
from ethnic_group_recognizer.clean.checks.registry import (
    Check,
    check_names,
    register,
    registered,
    run_checks,
    safe_check_names,
    skip_reason,
    unregister,
)

__all__ = [
    "Check",
    "check_names",
    "files",
    "model",
    "not_photo",
    "register",
    "registered",
    "run_checks",
    "safe_check_names",
    "skip_reason",
    "unregister",
]
