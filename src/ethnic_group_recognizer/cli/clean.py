"""``egr collect``, ``egr clean`` and ``egr review``: gather photos, find what is wrong, fix it by hand.

The work lives in :mod:`~ethnic_group_recognizer.collect`, the :mod:`~ethnic_group_recognizer.clean`
package and :mod:`~ethnic_group_recognizer.serve.review`; here flags become calls, results become
tables on stdout and lines on stderr, and every refusal becomes ``error: …`` with exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ethnic_group_recognizer.cli.common import PlainUsage, plain, stdout_console
from ethnic_group_recognizer.console import fail, stderr

app = typer.Typer()

#: Addresses that mean "every interface": a browser on this machine reaches them at loopback.
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}


@app.command("collect", cls=PlainUsage)
def collect_command(
    labels: Annotated[
        list[str] | None,
        typer.Argument(metavar="LABEL...", help="Labels to collect (default: the shipped model's labels)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create or extend.")] = Path(
        "data/collected"
    ),
    per_class: Annotated[int, typer.Option(help="Fill each class folder up to this many images.")] = 100,
    urls: Annotated[
        Path | None,
        typer.Option(
            help="A list of image URLs instead of a search: lines of 'URL' or 'label<TAB>URL', or a CSV."
        ),
    ] = None,
    folder: Annotated[
        Path | None, typer.Option(help="Take images from FOLDER/<label>/ instead of a search.")
    ] = None,
    query: Annotated[
        list[str] | None,
        typer.Option(
            help="Search query template, repeatable; {label} is replaced "
            "(default: '{label}' and '{label} traditional dress')."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Concurrent downloads.")] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a connection or a read.")] = 15.0,
    retries: Annotated[int, typer.Option(help="Extra tries for timeouts, 429 and 5xx answers.")] = 3,
    rate: Annotated[float, typer.Option(help="Requests per second to any one host.")] = 2.0,
    max_mb: Annotated[float, typer.Option(help="Largest file to download, in MB.")] = 20.0,
) -> None:
    """Search and download images into a dataset (resumable; where each came from is in the manifest)."""
    from ethnic_group_recognizer.collect import (
        CollectError,
        CollectOptions,
        DuckDuckGoSource,
        FolderSource,
        UrlListSource,
        collect,
    )
    from ethnic_group_recognizer.config import LABELS

    if urls and folder:
        fail("give --urls or --folder, not both")
    options = CollectOptions(
        per_class=per_class,
        workers=workers,
        timeout=timeout,
        retries=retries,
        per_host_per_second=rate,
        max_bytes=int(max_mb * 1024 * 1024),
    )
    if query:
        options.queries = tuple(query)
    try:
        if urls:
            source = UrlListSource(urls, default_label=labels[0] if labels and len(labels) == 1 else None)
            chosen = labels or source.labels()
            if not chosen:
                fail("the URL list names no labels: add 'label<TAB>URL' lines or give one label")
            if any(r.label is None for r in source.entries) and len(chosen) != 1:
                fail("some URLs have no label: give exactly one label for them")
        elif folder:
            source, chosen = FolderSource(folder), labels or list(LABELS)
        else:
            source, chosen = DuckDuckGoSource(timeout=int(timeout)), labels or list(LABELS)
        summaries = collect(chosen, out, source, options)
    except CollectError as error:
        fail(str(error))
    table = Table("label", "had", "added", "duplicates", "failed", "already done", "errors")
    for label, s in summaries.items():
        errors = ", ".join(f"{kind} ×{n}" for kind, n in s.errors.most_common(4))
        table.add_row(
            plain(label),
            str(s.had),
            str(s.added),
            str(s.duplicates),
            str(s.failed),
            str(s.skipped),
            plain(errors),
        )
    stdout_console().print(table)
    stderr.print(
        f"dataset: {escape(str(out))} (provenance in manifest.jsonl, attempts in .collect/log.jsonl)",
        soft_wrap=True,
    )


@app.command("clean", cls=PlainUsage)
def clean_command(
    dataset: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset folder.")],
    other: Annotated[
        list[Path] | None,
        typer.Option(
            help="Folder of photos that show none of the classes (repeatable); "
            "the dataset's own 'other' folder is used too."
        ),
    ] = None,
    jsonl: Annotated[
        bool,
        typer.Option(
            "--jsonl",
            help="Print the queue as JSON lines on stdout: path, label, score, action (auto|review), "
            "checks [{check, reason, score, safe}], suggestion.",
        ),
    ] = False,
    auto: Annotated[
        bool,
        typer.Option("--auto", help="Apply the safe fixes only: unreadable files and exact duplicates."),
    ] = False,
    undo: Annotated[bool, typer.Option("--undo", help="Revert the last action.")] = False,
    undo_all: Annotated[bool, typer.Option("--undo-all", help="Revert every action, newest first.")] = False,
    embeddings: Annotated[
        bool,
        typer.Option(
            help="Run the model-based checks (mislabels, outliers, 'other'-like, the drawing score)."
        ),
    ] = True,
    limit: Annotated[int, typer.Option(help="Rows of the table (0: all); --jsonl prints all.")] = 40,
) -> None:
    """Find problems (each with a reason and a score) and print the review queue, most suspicious first.

    Nothing is deleted: --auto and 'egr review' move files to DATASET/.quarantine/ and log every
    action in DATASET/.clean/actions.jsonl; --undo and --undo-all put them back byte for byte.
    """
    from ethnic_group_recognizer import clean
    from ethnic_group_recognizer.dataset import DatasetError
    from ethnic_group_recognizer.locking import DatasetBusyError

    if not dataset.is_dir():
        fail(f"dataset folder not found: {dataset}")
    try:
        if undo or undo_all:
            done = clean.undo(dataset, all_actions=undo_all)
            if not done:
                stderr.print("nothing to undo")
            for entry in done:
                stderr.print(f"undone: action {entry['undoes']} ({len(entry['moves'])} files moved back)")
            return
        if auto:
            entry = clean.auto_fix(dataset)  # hash checks only: the safe fixes need no model
            moved = len(entry["moves"]) if entry else 0
            stderr.print(
                f"auto: moved {moved} files to {escape(str(dataset / '.quarantine'))} "
                f"(undo: egr clean {escape(str(dataset))} --undo)",
                soft_wrap=True,
            )
        options = clean.CleanOptions(embeddings=embeddings)
        report = clean.find_issues(dataset, options, other_dirs=other or [])
        clean.save_queue(dataset, report)
    except (clean.CleanError, DatasetError, DatasetBusyError, FileNotFoundError) as error:
        fail(str(error))  # a damaged log or manifest, a refused action, a busy dataset: exit 2
    if jsonl:
        for flag in report.flags:
            sys.stdout.write(json.dumps(flag.public(), ensure_ascii=False) + "\n")
    else:
        table = Table("#", "score", "label", "path", "reasons", title="review queue (most suspicious first)")
        shown = report.flags if limit <= 0 else report.flags[:limit]
        for rank, flag in enumerate(shown, 1):
            table.add_row(
                str(rank),
                f"{flag.score:.2f}",
                plain(flag.label),
                plain(flag.path),
                plain("; ".join(flag.reasons)),
            )
        stdout_console().print(table)
        if len(shown) < len(report.flags):
            stderr.print(f"… {len(report.flags) - len(shown)} more (--limit 0 or --jsonl for all)")
    summary = ", ".join(f"{check} {n}" for check, n in report.counts.items() if n)
    stderr.print(
        f"{report.images} images, {len(report.flags)} flagged ({summary or 'nothing'}); "
        f"{len(report.to_review())} need a reviewer, {len(report.flags) - len(report.to_review())} "
        f"are safe fixes (--auto); {report.reviewed} already kept by a reviewer"
    )
    for check, why in report.skipped.items():
        stderr.print(f"[yellow]skipped {escape(check)}:[/] {escape(why)}")


def browser_url(host: str, port: int) -> str:
    """The address a browser on this machine opens: ``--host 0.0.0.0`` listens everywhere, loopback too."""
    shown = _ANY_ADDRESS.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"  # an IPv6 address in a URL
    return f"http://{shown}:{port}/"


@app.command("review", cls=PlainUsage)
def review_command(
    dataset: Annotated[
        Path, typer.Argument(metavar="DATASET", help="Dataset folder (run 'egr clean' on it first).")
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on (keep it local).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8765,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the page in a browser.")
    ] = True,
) -> None:
    """Open a local page to keep, remove or relabel flagged images (keyboard shortcuts, undo)."""
    import threading
    import webbrowser

    import uvicorn

    from ethnic_group_recognizer.clean import CleanError
    from ethnic_group_recognizer.dataset import DatasetError
    from ethnic_group_recognizer.locking import DatasetBusyError
    from ethnic_group_recognizer.serve.review import create_review_app

    try:
        review_app = create_review_app(dataset)
    except (CleanError, DatasetError, DatasetBusyError, FileNotFoundError) as error:
        fail(str(error))  # no queue yet, a refused or damaged log, a busy dataset: exit 2
    url = browser_url(host, port)
    stderr.print(f"reviewing {escape(str(dataset))} at {url} (Ctrl+C to stop)", soft_wrap=True)
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(review_app, host=host, port=port, log_level="warning")
