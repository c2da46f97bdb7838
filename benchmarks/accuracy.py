"""Held-out accuracy of training recipes on ../shared/data, all on the same duplicate-aware split.

    .venv/bin/python benchmarks/accuracy.py [--only SUBSTRING ...] [--finetuned MODEL_DIR ...]

Each recipe is ``TrainOptions(views=...)`` plus a ``Config``: ``views`` is the set of views of a
photo whose features the model averages inside its graph (views.py: ``full`` 1, ``mirror`` 2,
``crops`` 7, the default). Trains each probe variant (seconds each once embeddings are cached), evaluates it on the same
held-out split (seed 0, 20 %, near-duplicates kept on one side) and prints a Markdown table.
Fine-tuned model directories (from ``egr train --mode finetune``) can be added to the table.
Prediction-set columns: coverage of the 0.9 sets over all in-domain photos (an abstention is a
miss) and over the answered ones, their mean size, and the share of other-culture photos given
the empty set (docs/PREDICTION_SETS.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import shared_dataset

from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.evaluate import evaluate
from ethnic_group_recognizer.train import TrainOptions, train

OLD = Config(feature_size=224, feature_pooling="mean")  # ImageNet size, average pooling
PLAIN = {"prototype_weight": 0.0, "augment_copies": 0}
CROPS = "lite0 320 px GeM + prototypes + augmentation, views crops"
VARIANTS: dict[str, tuple[TrainOptions, Config]] = {
    "lite0 224 px mean, plain logistic regression, views full (reference recipe)": (
        TrainOptions(views="full", **PLAIN),
        OLD,
    ),
    "lite0 224 px mean + prototypes + small-class augmentation, views mirror": (
        TrainOptions(views="mirror"),
        OLD,
    ),
    "lite0 320 px GeM, plain logistic regression, views full": (
        TrainOptions(views="full", **PLAIN),
        Config(),
    ),
    "lite0 320 px GeM + prototypes + augmentation, views full": (TrainOptions(views="full"), Config()),
    "lite0 320 px GeM + prototypes + augmentation, views mirror (the previous default)": (
        TrainOptions(views="mirror"),
        Config(),
    ),
    f"**{CROPS} (default)**": (TrainOptions(), Config()),
    "lite2 372 px GeM + prototypes + augmentation, views mirror": (
        TrainOptions(views="mirror"),
        Config(backbone="lite2"),
    ),
    # The default recipe with the abstain rule and set calibration of before (issue 13).
    "crops, top-label abstain rule (before prediction sets)": (
        TrainOptions(abstain_rule="top-label"),
        Config(),
    ),
    "crops, sets without Mondrian (marginal quantile only)": (TrainOptions(mondrian=False), Config()),
    "crops, top-label abstain rule, sets without Mondrian": (
        TrainOptions(abstain_rule="top-label", mondrian=False),
        Config(),
    ),
}
SMALL = ("Naga people", "Tripuri people", "Chakma people")


def row(name: str, metrics: dict) -> str:
    small = [metrics["per_class"][label] for label in SMALL if label in metrics["per_class"]]
    small_hits = sum(round(m["recall"] * m["support"]) for m in small)
    small_total = sum(m["support"] for m in small)
    sets = metrics.get("prediction_sets") or {}
    return (
        f"| {name} | {metrics['accuracy']:.3f} | {metrics['accuracy_with_abstention']:.3f} | "
        f"{metrics['coverage']:.2f} / {metrics['selective_accuracy'] or 0:.3f} | {metrics['other_abstained']:.3f} | "
        f"{_number(sets.get('coverage'))} / {_number(sets.get('answered_coverage'))} | "
        f"{_number(sets.get('mean_set_size'), 2)} | {_number(sets.get('other_empty_set'))} | "
        f"{small_hits}/{small_total} | {metrics['ece']:.3f} |"
    )


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--finetuned", type=Path, nargs="*", default=[])
    parser.add_argument("--only", nargs="*", default=None, help="substrings of variant names to run")
    args = parser.parse_args()
    dataset = shared_dataset()
    print(
        "| recipe | top-1 accuracy (in-domain) | correct with abstention | answered / accuracy answered "
        "| other cultures abstained | set coverage at 0.9, all in-domain / answered | mean set size "
        "| other cultures given the empty set | Naga+Tripuri+Chakma held-out hits | ECE |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (options, config) in VARIANTS.items():
            if args.only and not any(s in name for s in args.only):
                continue
            model = Path(tmp) / name.replace(" ", "_").replace("/", "_")
            train(dataset, model, options, config)
            print(row(name, evaluate(model, dataset, Path(tmp) / "report", split="val")), flush=True)
        for model in args.finetuned:
            print(
                row(f"fine-tuned ({model})", evaluate(model, dataset, Path(tmp) / "report", split="val")),
                flush=True,
            )


if __name__ == "__main__":
    main()
