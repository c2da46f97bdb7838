"""``egr``: a thin Typer layer over the Python API. Each command parses, calls, prints."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.console import fail, stderr

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Dataset folders and their manifests.")
app.add_typer(data_app, name="data")

#: Modules that add their own commands with ``register(app)``; one line each, one owner each.
COMMAND_MODULES: list[str] = ["demo", "embed_cli", "serve.cli", "data_cli"]


@data_app.command("import")
def data_import(
    sources: Annotated[
        list[Path], typer.Argument(help="Folders of class folders, class folders or image files.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create or extend.")],
    link: Annotated[bool, typer.Option(help="Symlink instead of copying.")] = False,
    label: Annotated[str | None, typer.Option(help="Force one label for every imported file.")] = None,
) -> None:
    """Import images into a dataset folder (idempotent); an 'other' folder at any depth is the abstain class."""
    from ethnic_group_recognizer.dataset import Dataset, import_images

    try:
        stats = import_images(sources, out, link=link, label=label)
    except FileNotFoundError as error:
        fail(str(error))
    counts = Dataset(out).counts()
    stderr.print(
        f"imported {stats['imported']}, already present {stats['skipped']}, unreadable {stats['unreadable']}"
    )
    table = Table("label", "usable images")
    for name, count in counts.items():
        table.add_row(name, str(count))
    Console().print(table)


@data_app.command("info")
def data_info(dataset: Path) -> None:
    """Refresh a dataset's manifest and show per-class counts and unreadable files."""
    from ethnic_group_recognizer.dataset import STATUS_ERROR, Dataset

    try:
        ds = Dataset.open(dataset)
    except FileNotFoundError as error:
        fail(str(error))
    table = Table("label", "usable images")
    for name, count in ds.counts().items():
        table.add_row(name, str(count))
    Console().print(table)
    for record in ds.records.values():
        if record.status == STATUS_ERROR:
            stderr.print(
                f"unreadable: {escape(str(record.path))}: {escape(str(record.error))}", soft_wrap=True
            )


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (class folders + manifest).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    mode: Annotated[
        str, typer.Option(help="probe (frozen backbone, seconds) or finetune (whole network).")
    ] = "probe",
    backbone: Annotated[
        str, typer.Option(help="lite0 (default, 13 MB) or lite2 (larger, slower).")
    ] = "lite0",
    tta: Annotated[bool, typer.Option(help="Average each photo with its mirror image.")] = True,
    epochs: Annotated[int, typer.Option(help="finetune: maximum epochs.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the split and the training.")] = 0,
    name: Annotated[str, typer.Option(help="Model name stored in its metadata.")] = "model",
    abstain_target: Annotated[
        float,
        typer.Option(
            help="Share of held-out 'other' photos the model must abstain on (0: balance abstention "
            "against accuracy instead)."
        ),
    ] = 0.9,
) -> None:
    """Train a model on a dataset; writes model.onnx, labels.json, metadata.json and split.json."""
    from ethnic_group_recognizer.train import TrainOptions
    from ethnic_group_recognizer.train import train as run_training

    if not 0 <= abstain_target < 1:
        fail(f"--abstain-target must be in [0, 1), got {abstain_target}")
    options = TrainOptions(
        mode=mode, tta=tta, epochs=epochs, name=name, abstain_target=abstain_target or None
    )
    try:
        result = run_training(dataset, out, options, Config(backbone=backbone, seed=seed))
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        fail(str(error))
    meta = result.metadata
    stderr.print(
        f"trained {meta['split']['train_images']} images in {meta['training_seconds']} s; "
        f"threshold {meta['threshold']:.2f}, temperature {meta['temperature']:.2f} -> {escape(str(out))}"
    )


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="Model directory.")],
    dataset: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder to write.")],
    split: Annotated[str, typer.Option(help="val (the model's held-out split), train, or all.")] = "val",
    update_model: Annotated[
        bool, typer.Option(help="Store the metrics and MODEL_CARD.md in the model directory.")
    ] = False,
) -> None:
    """Evaluate a model: metrics.json, report.html with plots and top losses, MODEL_CARD.md."""
    from ethnic_group_recognizer.evaluate import evaluate as run_evaluation

    try:
        metrics = run_evaluation(model, dataset, out, split=split, update_model=update_model)
    except (FileNotFoundError, ValueError) as error:
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
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console().print(table)
    stderr.print(f"report: {escape(str(out / 'report.html'))}", soft_wrap=True)


@app.command()
def predict(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or globs.")],
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the shipped model).")] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per image on stdout.")] = False,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Write results to this CSV file.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 32,
    engine: Annotated[str, typer.Option(help="local (batched, this process) or ray (Ray Data).")] = "local",
    address: Annotated[str | None, typer.Option(help="ray: address of an existing cluster.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="ray: results folder (Parquet).")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Abstain below this probability (default: the model's calibrated one)."),
    ] = None,
) -> None:
    """Classify photos; label null (or '-') means the model abstained: none of the 12 groups."""
    import csv

    from ethnic_group_recognizer.model import Recognizer
    from ethnic_group_recognizer.predict import expand_inputs, predict_paths

    if engine == "ray":
        from ethnic_group_recognizer.distributed import run_ray_predict_command

        run_ray_predict_command(
            paths, model=model, address=address, out=out, jsonl=jsonl, batch_size=batch_size
        )
        return
    if engine != "local":
        fail(f"unknown engine {engine!r}: use 'local' or 'ray'")
    files = expand_inputs(paths)
    if not files:
        fail("no images found in the given paths")
    try:
        recognizer = Recognizer.load(model, threshold=threshold)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    out = Console(highlight=False, soft_wrap=True, markup=False)  # a path "[draft]/a.jpg" is no markup
    writer, handle, usable = None, None, 0
    if csv_file:
        handle = open(csv_file, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed below
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "confidence", "error", *recognizer.labels])
    try:
        for result in predict_paths(recognizer, files, batch_size=batch_size):
            usable += "error" not in result
            if jsonl:
                sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
            elif "error" in result:
                stderr.print(
                    f"[red]{escape(str(result['path']))}: {escape(str(result['error']))}[/]", soft_wrap=True
                )
            elif not csv_file:
                label = result["label"] or "none of the 12 (abstained)"
                out.print(f"{result['path']}\t{label}\t{result['confidence']:.2f}")
            if writer:
                scores = result.get("scores", {})
                writer.writerow(
                    [
                        result["path"],
                        result.get("label") or "",
                        result.get("confidence", ""),
                        result.get("error", ""),
                    ]
                    + [scores.get(label, "") for label in recognizer.labels]
                )
    finally:
        if handle:
            handle.close()
    if usable == 0:
        fail("no input image could be read", code=1)


def _register_plugins() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"ethnic_group_recognizer.{name}").register(app)


_register_plugins()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
