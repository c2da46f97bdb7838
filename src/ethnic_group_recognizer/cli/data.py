"""``egr data import`` and ``egr data info``: dataset folders of class folders, and their manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ethnic_group_recognizer.cli.common import PlainUsage, plain, stdout_console
from ethnic_group_recognizer.config import ABSTAIN_LABEL
from ethnic_group_recognizer.console import fail, stderr
from ethnic_group_recognizer.dataset import printable

app = typer.Typer(
    no_args_is_help=True,
    help="Dataset folders (one folder per class, plus 'other') and their manifests.",
)


def no_other_warning(dataset: Path) -> str:
    """The one line said when a dataset has no ``other`` photos: what it costs and how to fix it."""
    shown = printable(str(dataset))
    return (
        f"[bold yellow]warning:[/] {escape(shown)} has no '{ABSTAIN_LABEL}' photos, so a model trained on it "
        "can never answer \"none of these\": add an 'other/' folder of photos that are none of the "
        f"classes (egr data import DIR --out {escape(shown)} --label {ABSTAIN_LABEL}) and train again"
    )


def _counts_table(counts: dict[str, int]) -> Table:
    table = Table("label", "usable images")
    for name, count in counts.items():
        table.add_row(plain(name), str(count))
    return table


@app.command("import", cls=PlainUsage)
def data_import(
    sources: Annotated[
        list[Path],
        typer.Argument(metavar="SRC...", help="Folders of class folders, class folders or image files."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create or extend.")],
    link: Annotated[bool, typer.Option(help="Symlink instead of copying.")] = False,
    label: Annotated[str | None, typer.Option(help="Give every imported file this label.")] = None,
) -> None:
    """Copy (or link) images into a dataset folder; running it again imports nothing twice.

    A folder named 'other' at any depth holds photos that are none of the classes: the model
    learns from them when to answer "none of these".
    """
    from ethnic_group_recognizer.dataset import Dataset, DatasetError, LabelError, import_images
    from ethnic_group_recognizer.locking import DatasetBusyError

    problems: list[str] = []  # one line per source folder whose name cannot be a label
    try:
        stats = import_images(sources, out, link=link, label=label, problems=problems)
        counts = Dataset(out).counts()
    except LabelError as error:  # only --label reaches here: bad folder names are refused per folder
        fail(f"--label: {error}")
    except (FileNotFoundError, DatasetError, DatasetBusyError) as error:
        fail(str(error))
    for line in problems:
        stderr.print(line, markup=False, highlight=False, soft_wrap=True)
    unreadable = stats["unreadable"]
    kept_note = (
        f" ({unreadable} of them unreadable: kept and marked, never trained on; "
        f"egr clean {escape(printable(str(out)))} --auto moves them to .quarantine/)"
        if unreadable
        else ""
    )
    stderr.print(
        f"imported {stats['imported']}{kept_note}, already present {stats['skipped']}, "
        f"refused {stats.get('refused', 0)}",
        soft_wrap=True,
    )
    stdout_console().print(_counts_table(counts))


@app.command("info", cls=PlainUsage)
def data_info(
    dataset: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset folder.")],
) -> None:
    """Bring a dataset's manifest up to date; show images per class and the unreadable files."""
    from ethnic_group_recognizer.dataset import STATUS_ERROR, Dataset, DatasetError
    from ethnic_group_recognizer.locking import DatasetBusyError

    try:
        ds = Dataset.open(dataset)
    except (FileNotFoundError, DatasetError, DatasetBusyError) as error:
        fail(str(error))
    counts = ds.counts()
    stdout_console().print(_counts_table(counts))
    if not counts.get(ABSTAIN_LABEL):
        stderr.print(no_other_warning(dataset), soft_wrap=True)
    for record in ds.records.values():
        if record.status == STATUS_ERROR:
            stderr.print(
                f"unreadable: {escape(printable(str(record.path)))}: {escape(printable(str(record.error)))}",
                soft_wrap=True,
            )
