"""Find what is wrong with a dataset, and fix it without ever losing an image.

Why: web-scraped training data holds duplicates, drawings, stamps, shop photos and wrong labels.
:func:`find_issues` runs the registered checks (:mod:`.checks`), each giving a reason and a
score, and returns one review queue, most suspicious first. Fixes are file moves: a removal moves
the file to ``DATASET/.quarantine/``, a relabel moves it to another class folder. Every action is
written to an append-only log (``DATASET/.clean/actions.jsonl``) *before* any file moves, with
the sha256 of each file and the manifest records before and after, so that :func:`recover` can
roll back an action a crash interrupted and :func:`undo` can restore every byte (:mod:`.journal`).

Where things live: ``context.py`` (options, flags, the shared view the checks read),
``checks/`` (the registry and the checks), ``find.py`` (running them, the queue),
``journal.py`` (the log, recovery, undo), ``actions.py`` (remove, relabel, keep, ``--auto``).
"""

from __future__ import annotations

from ethnic_group_recognizer.clean.actions import (
    auto_fix,
    file_of,
    keep,
    relabel,
    remove,
    review_status,
)
from ethnic_group_recognizer.clean.checks import Check, check_names, register, registered, safe_check_names
from ethnic_group_recognizer.clean.checks.not_photo import (
    DRAWING_CLASS,
    PICTURE_SIDE,
    PictureStats,
    _drawing_probabilities,
    _imagenet_head,
    not_photo_evidence,
    picture_stats,
)
from ethnic_group_recognizer.clean.context import CleanContext, CleanOptions, CleanReport, Flag
from ethnic_group_recognizer.clean.errors import CleanError, InvalidLabelError
from ethnic_group_recognizer.clean.find import QUEUE_FILE, find_issues, load_queue, save_queue
from ethnic_group_recognizer.clean.journal import (
    ACTIONS_FILE,
    CLEAN_DIR,
    history,
    open_dataset,
    read_log,
    recover,
    undo,
)
from ethnic_group_recognizer.dataset import Dataset

#: The built-in checks in report order, and those whose fix needs no reviewer (from the registry).
CHECKS: tuple[str, ...] = check_names()
SAFE_CHECKS: frozenset[str] = safe_check_names()

__all__ = [
    "ACTIONS_FILE",
    "CHECKS",
    "CLEAN_DIR",
    "DRAWING_CLASS",
    "PICTURE_SIDE",
    "QUEUE_FILE",
    "SAFE_CHECKS",
    "Check",
    "CleanContext",
    "CleanError",
    "CleanOptions",
    "CleanReport",
    "Dataset",
    "Flag",
    "InvalidLabelError",
    "PictureStats",
    "_drawing_probabilities",
    "_imagenet_head",
    "auto_fix",
    "check_names",
    "file_of",
    "find_issues",
    "history",
    "keep",
    "load_queue",
    "not_photo_evidence",
    "open_dataset",
    "picture_stats",
    "read_log",
    "recover",
    "register",
    "registered",
    "relabel",
    "remove",
    "review_status",
    "safe_check_names",
    "save_queue",
    "undo",
]
