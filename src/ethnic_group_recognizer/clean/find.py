"""Run the registered checks over a dataset and keep the review queue.

Why apart from the checks: finding only reads (it may take minutes with embeddings), so it
holds the dataset's lock only while it recovers and refreshes the manifest, and again for the
moment it writes the queue.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ethnic_group_recognizer.clean.checks import check_names, run_checks
from ethnic_group_recognizer.clean.context import CleanContext, CleanOptions, CleanReport, Flag, is_kept
from ethnic_group_recognizer.clean.errors import CleanError
from ethnic_group_recognizer.clean.journal import CLEAN_DIR, open_dataset, writing
from ethnic_group_recognizer.dataset import STATUS_QUARANTINED, Dataset
from ethnic_group_recognizer.locking import atomic_write_text

QUEUE_FILE = "queue.jsonl"


def find_issues(
    dataset: Dataset | str | Path,
    options: CleanOptions | None = None,
    other_dirs: Sequence[str | Path] = (),
    embedder=None,
    show_progress: bool = True,
) -> CleanReport:
    """Run every registered check on a dataset and return the review queue, most suspicious first.

    Images a reviewer already kept (and that have not changed since) are left out. ``embedder``
    is any object with ``embed_files(paths, hashes, show_progress=...)``; by default the
    dataset's backbone.
    """
    options = options or CleanOptions()
    if not isinstance(dataset, Dataset):
        dataset = open_dataset(dataset, show_progress=show_progress)
    records = [
        r for r in sorted(dataset.records.values(), key=lambda r: r.path) if r.status != STATUS_QUARANTINED
    ]
    context = CleanContext(dataset, records, options, [Path(p) for p in other_dirs], embedder, show_progress)
    run_checks(context)
    result = context.flags.result()
    by_path = {r.path: r for r in records}
    kept = [f for f in result if is_kept(by_path[f.path])]
    result = [f for f in result if not is_kept(by_path[f.path])]
    counts = {check: sum(check in f.checks for f in result) for check in check_names()}
    return CleanReport(result, len(records), counts, context.skipped, len(kept))


def save_queue(root: str | Path, report: CleanReport) -> Path:
    """Write the queue for ``egr review`` (atomically; it is derived data, rewritten each run)."""
    path = Path(root) / CLEAN_DIR / QUEUE_FILE
    text = "".join(json.dumps(asdict(flag), ensure_ascii=False) + "\n" for flag in report.flags)
    with writing(root):
        atomic_write_text(path, text)
    return path


def load_queue(root: str | Path) -> list[Flag] | None:
    """The queue ``egr clean`` saved (None: none yet); a damaged file is refused with its line."""
    path = Path(root) / CLEAN_DIR / QUEUE_FILE
    if not path.exists():
        return None
    flags = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                flags.append(Flag(**json.loads(line)))
            except (ValueError, TypeError, RecursionError) as error:
                raise CleanError(
                    f"{path}: line {number} is not a queue entry ({error}); re-run 'egr clean'"
                ) from None
    return flags
