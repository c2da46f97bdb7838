"""How ``egr predict`` shows results: an aligned table, JSON lines (stdout) and a CSV file.

One row dict per image comes from :func:`~ethnic_group_recognizer.predict.predict_paths`
(:meth:`Prediction.to_dict` plus ``low_data``); each output here only lays it out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.table import Table
from rich.text import Text

from ethnic_group_recognizer.cli.common import plain

#: The label cell of a photo the model would not name: it saw none of its classes in it.
ABSTAINED_TEXT = "none of these (abstained)"
#: CSV columns before the one score column per label (in the model's label order).
CSV_COLUMNS = ("path", "label", "confidence", "abstained", "low_data", "prediction_set", "error")
#: How a prediction set's labels are joined in the CSV file and the table.
SET_SEPARATOR = "; "


def _flag(value: bool) -> str:
    return "true" if value else "false"


def csv_header(labels: Sequence[str]) -> list[str]:
    return [*CSV_COLUMNS, *labels]


def csv_row(row: Mapping, labels: Sequence[str]) -> list:
    """One CSV line; an unreadable file has only ``path`` and ``error`` filled in."""
    scores = row.get("scores", {})
    readable = "error" not in row
    return [
        row["path"],
        row.get("label") or "",
        row.get("confidence", ""),
        _flag(row.get("label") is None) if readable else "",
        _flag(bool(row.get("low_data"))) if readable else "",
        SET_SEPARATOR.join(row.get("prediction_set") or ()),
        row.get("error", ""),
        *(scores.get(label, "") for label in labels),
    ]


def results_table(rows: Sequence[Mapping], training_counts: Mapping[str, int]) -> Table:
    """The plain output: one aligned line per readable image.

    ``low data`` says how few training images back the answered label; the prediction set
    column appears when the model was calibrated for sets (each row carries its ``coverage``).
    """
    coverage = next((row["coverage"] for row in rows if row.get("coverage") is not None), None)
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("path", overflow="fold")
    table.add_column("label")
    table.add_column("confidence", justify="right")
    table.add_column("low data")
    if coverage is not None:
        table.add_column(f"prediction set ({coverage:.0%})")
    for row in rows:
        label = row.get("label")
        label_cell = plain(label) if label is not None else Text(ABSTAINED_TEXT, style="italic")
        low_data = f"yes: {training_counts.get(label, 0)} training images" if row.get("low_data") else ""
        cells = [plain(row["path"]), label_cell, f"{row['confidence']:.2f}", low_data]
        if coverage is not None:
            cells.append(plain(SET_SEPARATOR.join(row.get("prediction_set") or ())))
        table.add_row(*cells)
    return table
