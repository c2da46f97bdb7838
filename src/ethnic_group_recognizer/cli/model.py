"""``egr train``, ``egr evaluate`` and ``egr predict``: make a model, measure it, use it.

Flags become the options dataclasses (``TrainOptions``, :class:`Config`), which check them; their
ValueError is the one error exit (:func:`~ethnic_group_recognizer.cli.common.fail_option`).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ethnic_group_recognizer.cli.common import PlainUsage, fail_option, stdout_console
from ethnic_group_recognizer.config import ABSTAIN_LABEL, Config
from ethnic_group_recognizer.console import fail, stderr

app = typer.Typer()


@app.command(cls=PlainUsage)
def train(
    dataset: Annotated[
        Path, typer.Argument(metavar="DATASET", help="Dataset folder (class folders + manifest).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    mode: Annotated[
        str, typer.Option(help="probe (frozen backbone, seconds) or finetune (whole network).")
    ] = "probe",
    backbone: Annotated[
        str, typer.Option(help="lite0 (default, 13 MB) or lite2 (larger, slower).")
    ] = "lite0",
    views: Annotated[
        str | None,
        typer.Option(
            help="Views of a photo averaged by the model: crops (photo, mirror, 4 corners and centre; "
            "7 views, most accurate; the probe's default), mirror (photo and mirror; 3.5x faster; "
            "fine-tuning's default) or full (1 view)."
        ),
    ] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", hidden=True)] = None,
    epochs: Annotated[int, typer.Option(help="finetune: maximum epochs.")] = 8,
    image_size: Annotated[
        int | None, typer.Option(help="finetune: input side in pixels (default 224; the probe reads 320).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and the training.")] = 0,
    name: Annotated[str, typer.Option(help="Model name stored in its metadata.")] = "model",
    abstain_target: Annotated[
        float,
        typer.Option(
            help="Share of held-out 'other' photos the model must abstain on (0: balance abstention "
            "against accuracy instead)."
        ),
    ] = 0.9,
    coverage: Annotated[
        float,
        typer.Option(
            help="How often a prediction set must contain the right label, e.g. 0.9 "
            "(docs/PREDICTION_SETS.md)."
        ),
    ] = 0.9,
    title: Annotated[
        str | None,
        typer.Option(help="The model's title, shown as the product name on its pages (default: the card's)."),
    ] = None,
    description: Annotated[
        str | None,
        typer.Option(help="One line saying what the model recognises (default: the card's)."),
    ] = None,
    card: Annotated[
        Path | None,
        typer.Option(
            "--card",
            help="The model card's texts (TOML; default: DATASET/card.toml when it exists; README, "
            "'Train on your own classes').",
        ),
    ] = None,
) -> None:
    """Train a model on a dataset; writes model.onnx, labels.json, metadata.json and split.json.

    Its card (title, label names, uses, data sources, failure modes) comes from DATASET/card.toml
    or --card FILE, with --title and --description on top; whatever it leaves out gets neutral words.
    """
    from ethnic_group_recognizer.card import check_card_file
    from ethnic_group_recognizer.cli.data import no_other_warning
    from ethnic_group_recognizer.dataset import Dataset, DatasetError
    from ethnic_group_recognizer.locking import DatasetBusyError
    from ethnic_group_recognizer.train import TrainOptions
    from ethnic_group_recognizer.train import train as run_training

    if tta is not None:  # the flag of releases before multi-crop views
        fail_option(
            ValueError("--tta/--no-tta was replaced by --views crops|mirror|full (--no-tta: --views full)")
        )
    try:
        options = TrainOptions(
            mode=mode,  # type: ignore[arg-type] - TrainOptions checks it
            views=views,  # type: ignore[arg-type] - TrainOptions checks it
            epochs=epochs,
            image_size=image_size,
            name=name,
            abstain_target=abstain_target or None,  # 0: no target, balance instead
            coverage=coverage,
            title=title,
            description=description,
            card_file=None if card is None else str(card),
        )
        config = Config(backbone=backbone, seed=seed)  # type: ignore[arg-type] - Config checks it
    except ValueError as error:
        fail_option(error)
    try:
        check_card_file(dataset, card)  # a bad card fails now, not after the embeddings
    except ValueError as error:
        fail(str(error))
    try:
        has_other = bool(Dataset.open(dataset).counts().get(ABSTAIN_LABEL))
        if not has_other:  # said before the minutes of training, not after them
            stderr.print(no_other_warning(dataset), soft_wrap=True)
        result = run_training(dataset, out, options, config)
    except (FileNotFoundError, DatasetError, DatasetBusyError, ValueError, RuntimeError) as error:
        fail(str(error))
    meta = result.model_metadata
    stderr.print(
        f"trained {meta.provenance.train_images} images in {meta.provenance.training_seconds} s; "
        f"threshold {meta.calibration.threshold:.3g}, temperature {meta.calibration.temperature:.2f} "
        f"-> {escape(str(result.out_dir))}",
        soft_wrap=True,
    )
    if meta.abstain_training_count == 0 and has_other:
        stderr.print(
            f"[bold yellow]warning:[/] none of the '{ABSTAIN_LABEL}' photos fell in the training split, "
            'so this model can never answer "none of these": add more of them and train again',
            soft_wrap=True,
        )


@app.command(cls=PlainUsage)
def evaluate(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Model directory.")],
    dataset: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder to write.")],
    split: Annotated[str, typer.Option(help="val (the model's held-out split), train, or all.")] = "val",
    update_model: Annotated[
        bool, typer.Option(help="Store the metrics and MODEL_CARD.md in the model directory.")
    ] = False,
) -> None:
    """Evaluate a model: metrics.json, report.html with plots and top losses, MODEL_CARD.md."""
    from ethnic_group_recognizer.dataset import DatasetError
    from ethnic_group_recognizer.evaluate import evaluate as run_evaluation
    from ethnic_group_recognizer.locking import DatasetBusyError

    try:
        metrics = run_evaluation(model, dataset, out, split=split, update_model=update_model)
    except (FileNotFoundError, DatasetError, DatasetBusyError, ValueError) as error:
        fail(str(error))
    table = Table("metric", "value")
    for key in (
        "images",
        "accuracy",
        "accuracy_with_abstention",
        "coverage",
        "selective_accuracy",
        "other_abstained",
        "ece",
    ):
        value = metrics[key]
        if value is None:  # e.g. other_abstained of a dataset without 'other' photos
            shown = f"n/a (no '{ABSTAIN_LABEL}' photos)" if key == "other_abstained" else "n/a"
        else:
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    stdout_console().print(table)
    stderr.print(f"report: {escape(str(out / 'report.html'))}", soft_wrap=True)


@app.command(cls=PlainUsage)
def predict(
    paths: Annotated[
        list[str],
        typer.Argument(metavar="PATH...", help="Image files, folders (searched recursively) or globs."),
    ],
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the shipped model).")] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per image on stdout.")] = False,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Write results to this CSV file.")] = None,
    batch_size: Annotated[
        int, typer.Option(help="Photos per model call (1, the default, is the fastest measured on 2 cores).")
    ] = 1,
    engine: Annotated[str, typer.Option(help="local (batched, this process) or ray (Ray Data).")] = "local",
    address: Annotated[str | None, typer.Option(help="ray: address of an existing cluster.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="ray: results folder (Parquet).")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Abstain below this probability (default: the model's calibrated one)."),
    ] = None,
) -> None:
    """Name what each photo shows, or say "none of these" (label null in --jsonl) when the model abstains."""
    from ethnic_group_recognizer.batch.engine import parse_engine

    try:
        engine_name = parse_engine(engine)
        config = Config(batch_size=batch_size)
    except ValueError as error:
        fail_option(error)
    if engine_name == "ray":
        from ethnic_group_recognizer.cli.batch import run_ray_predict

        if csv_file:
            fail("--csv is for the local engine; --engine ray writes Parquet (and --jsonl) to --out DIR")
        run_ray_predict(
            paths, config=config, model=model, address=address, out=out, jsonl=jsonl, threshold=threshold
        )
        return
    _predict_here(paths, config, model=model, jsonl=jsonl, csv_file=csv_file, threshold=threshold)


def _predict_here(
    paths: list[str],
    config: Config,
    *,
    model: Path | None,
    jsonl: bool,
    csv_file: Path | None,
    threshold: float | None,
) -> None:
    """``egr predict`` in this process: a table, or JSON lines, and/or a CSV file."""
    from ethnic_group_recognizer.batch.inputs import expand_inputs
    from ethnic_group_recognizer.cli.predictions import csv_header, csv_row, results_table
    from ethnic_group_recognizer.dataset import printable
    from ethnic_group_recognizer.model import Recognizer
    from ethnic_group_recognizer.predict import predict_paths

    files = expand_inputs(paths)
    if not files:
        fail("no images found in the given paths")
    try:
        recognizer = Recognizer.load(model, config=config, threshold=threshold)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    handle = None
    if csv_file is not None:
        try:
            handle = open(csv_file, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as error:
            fail(f"--csv {csv_file}: cannot write this file ({error.strerror or error})")
    writer = csv.writer(handle) if handle else None
    table_rows: list[dict] = []
    usable = 0
    try:
        if writer:
            writer.writerow(csv_header(recognizer.labels))
        for row in predict_paths(recognizer, files):
            usable += "error" not in row
            if jsonl:
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            elif "error" in row:
                shown = printable(f"{row['path']}: {row['error']}")  # the ImageError message as it is
                stderr.print(f"[red]{escape(shown)}[/]", soft_wrap=True)
            elif not csv_file:
                table_rows.append(row)
            if writer:
                writer.writerow(csv_row(row, recognizer.labels))
    finally:
        if handle:
            handle.close()
    if table_rows:
        stdout_console().print(results_table(table_rows, recognizer.training_counts))
    if usable == 0:
        fail("no input image could be read", code=1)
