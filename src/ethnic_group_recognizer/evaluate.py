"""Evaluation: metrics with confidence intervals, pictures, a top-losses gallery and the model card.

Everything a reviewer needs lands in one report folder: ``metrics.json`` for machines,
``report.html`` with the confusion matrix, reliability diagram and coverage curve for people,
and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from ethnic_group_recognizer.calibrate import abstain_decisions, in_scope_scores
from ethnic_group_recognizer.card import (
    ModelCard,
    data_sources_markdown,
    failure_modes_markdown,
    what_it_does,
)
from ethnic_group_recognizer.config import ABSTAIN_LABEL, Config
from ethnic_group_recognizer.conformal import coverage_curve as set_coverage_curve
from ethnic_group_recognizer.conformal import set_metrics
from ethnic_group_recognizer.dataset import Dataset, Record
from ethnic_group_recognizer.images import ImageError, load_image
from ethnic_group_recognizer.model import LOW_DATA_IMAGES, Recognizer
from ethnic_group_recognizer.model_dir import CARD_FILE, ModelMetadata, read_split, write_model_dir
from ethnic_group_recognizer.progress import progress


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion; honest for small counts, unlike p ± 2σ."""
    if total == 0:
        return (0.0, 0.0)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> tuple[float, list]:
    """ECE over equal-width confidence bins, and the bins themselves for the reliability diagram."""
    edges = np.linspace(0, 1, bins + 1)
    table, ece = [], 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = abs(confidence[inside].mean() - correct[inside].mean())
            ece += inside.mean() * gap
            table.append(
                [
                    float(low),
                    float(high),
                    int(inside.sum()),
                    float(confidence[inside].mean()),
                    float(correct[inside].mean()),
                ]
            )
    return float(ece), table


def select_records(model_dir: Path, dataset: Dataset, split: str) -> list[Record]:
    """The records to evaluate: the model's own held-out split (by sha256) or every usable image."""
    records = dataset.usable()
    if split == "all":
        return records
    wanted = read_split(model_dir, split)
    return [r for r in records if r.sha256 in wanted]


def _coverage_thresholds(probabilities: np.ndarray, n_labels: int, rule: str) -> list[float]:
    """Thresholds of the coverage curve: a fixed grid plus every in-domain photo's own score.

    Why the photos' scores: with few held-out photos every grid threshold can answer the same
    photos, which gives one point and an empty plot; a threshold at each score drops one photo.
    """
    grid = np.linspace(0, 0.95, 39)
    scores = in_scope_scores(probabilities, n_labels, rule) if len(probabilities) else np.array([])
    if len(scores) > 200:  # a large split: the grid and 200 quantiles draw the same curve
        scores = np.quantile(scores, np.linspace(0, 1, 200))
    return sorted({round(float(t), 6) for t in (*grid, *scores)})


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _plots(
    out: Path,
    confusion: np.ndarray,
    row_names: list[str],
    col_names: list[str],
    reliability: list,
    coverage: list,
    set_curve: list,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Write the report's pictures; returns the confusion matrix as drawn (empty abstain row/column dropped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion, row_names, col_names = _trim_confusion(confusion, row_names, col_names)
    fig, ax = plt.subplots(figsize=(9, 8))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(col_names)), col_names, rotation=60, ha="right")
    ax.set_yticks(range(len(row_names)), row_names)
    for (i, j), value in np.ndenumerate(confusion):
        if value:
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > confusion.max() / 2 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (held-out)")
    (out / "confusion_matrix.png").write_bytes(_figure_png(fig))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    if reliability:
        centres = [(b[0] + b[1]) / 2 for b in reliability]
        ax.bar(centres, [b[4] for b in reliability], width=0.09, alpha=0.7, label="accuracy in bin")
        ax.plot(
            [b[3] for b in reliability],
            [b[4] for b in reliability],
            "o-",
            color="C1",
            label="mean confidence",
        )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    (out / "reliability.png").write_bytes(_figure_png(fig))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    points = _coverage_points(coverage)
    ax.plot([c for c, _ in points], [a for _, a in points], "o-", markersize=3)
    if len(points) < 2:
        ax.text(
            0.5, 0.5, _coverage_note(coverage), ha="center", va="center", wrap=True, transform=ax.transAxes
        )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("coverage (share of in-domain photos answered)")
    ax.set_ylabel("accuracy of answered photos")
    ax.set_title("Coverage vs accuracy")
    (out / "coverage.png").write_bytes(_figure_png(fig))
    plt.close(fig)

    if set_curve:
        fig, ax = plt.subplots(figsize=(5, 4))
        points = [c for c in set_curve if c["mean_set_size"] is not None]
        for key, name in (("answered_coverage", "answered photos"), ("coverage", "all in-domain photos")):
            ax.plot([c["mean_set_size"] for c in points], [c[key] for c in points], "o-", label=name)
        for c in points:
            ax.annotate(f"{c['target']:.2f}", (c["mean_set_size"], c["answered_coverage"]), fontsize=7)
        ax.set_xlabel("mean prediction-set size (answered photos)")
        ax.set_ylabel("empirical coverage (held-out)")
        ax.set_title("Prediction sets: coverage vs set size\n(labels: target coverage)")
        ax.legend(loc="lower right")
        (out / "set_coverage.png").write_bytes(_figure_png(fig))
        plt.close(fig)
    return confusion, row_names, col_names


def _trim_confusion(
    confusion: np.ndarray, row_names: list[str], col_names: list[str]
) -> tuple[np.ndarray, list[str], list[str]]:
    """Drop the last (``other``) row when no photo is ``other`` and the last (abstain) column when
    no photo was abstained on: an empty row or column reads as a class the model was tested on."""
    if len(row_names) > 1 and not confusion[-1].any():
        confusion, row_names = confusion[:-1], row_names[:-1]
    if len(col_names) > 1 and not confusion[:, -1].any():
        confusion, col_names = confusion[:, :-1], col_names[:-1]
    return confusion, row_names, col_names


def _coverage_points(coverage: list) -> list[tuple[float, float]]:
    """The curve's distinct (coverage, accuracy) points; a threshold that answers nothing has no accuracy."""
    return sorted({(c["coverage"], c["selective_accuracy"]) for c in coverage if c["coverage"] > 0})


def _coverage_note(coverage: list) -> str:
    """In words, what the coverage curve shows, or why it is a single point or missing."""
    points = _coverage_points(coverage)
    if not points:
        return "No curve: no in-domain photo was answered at any threshold (or there are none)."
    if len(points) == 1:
        answered, accuracy = points[0]
        return (
            f"No curve, one point: every threshold answers the same photos (coverage {answered:.0%}, "
            f"accuracy {accuracy:.0%}); more held-out photos give a curve."
        )
    return (
        f"{len(points)} operating points from {len(coverage)} thresholds: coverage {points[0][0]:.0%}–{points[-1][0]:.0%}, "
        f"accuracy of answered photos {min(a for _, a in points):.0%}–{max(a for _, a in points):.0%}."
    )


def _thumbnail(path: Path) -> str:
    try:
        image = load_image(path)
    except ImageError:
        return ""
    image.thumbnail((160, 160))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def evaluate(
    model_dir: str | Path,
    dataset_dir: str | Path,
    out_dir: str | Path,
    split: str = "val",
    config: Config | None = None,
    update_model: bool = False,
    top_losses: int = 24,
) -> dict:
    """Evaluate a model on a dataset and write the report folder; returns the metrics."""
    config = config or Config()
    model_dir = Path(model_dir)
    recognizer = Recognizer.load(model_dir, config)
    dataset = Dataset.open(dataset_dir, config)
    records = select_records(model_dir, dataset, split)
    if not records:
        raise ValueError(f"no usable images to evaluate in {dataset_dir} (split {split})")
    labels = recognizer.labels
    index = {label: i for i, label in enumerate(labels)}
    abstain = len(labels)
    unknown = sorted({r.label for r in records if r.label not in index and r.label != ABSTAIN_LABEL})
    records = [r for r in records if r.label in index or r.label == ABSTAIN_LABEL]
    targets = np.array([index.get(r.label, abstain) for r in records])
    # The prediction engine, as `egr predict` runs it: decoded ahead, all views in one run.
    results = recognizer.predict_probabilities([dataset.abspath(r) for r in records], expected=())
    probabilities = np.stack([row for _, row in progress(results, "Evaluating", total=len(records))])
    rule = recognizer.abstain_rule
    decided = abstain_decisions(probabilities, len(labels), recognizer.threshold, rule)
    top = probabilities[:, : len(labels)].argmax(axis=1)
    confidence = probabilities[np.arange(len(top)), top]
    in_domain = targets < abstain
    n_in, n_other = int(in_domain.sum()), int((~in_domain).sum())

    raw_correct = int((top[in_domain] == targets[in_domain]).sum())
    abstain_correct = int((decided[in_domain] == targets[in_domain]).sum())
    answered = decided[in_domain] >= 0
    other_abstained = int((decided[~in_domain] == -1).sum())
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        targets[in_domain], top[in_domain], labels=list(range(len(labels))), zero_division=0
    )
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "training_images": recognizer.training_counts.get(label, 0),
        }
        for i, label in enumerate(labels)
    }
    ece, reliability = expected_calibration_error(confidence[in_domain], top[in_domain] == targets[in_domain])
    coverage = []
    for threshold in _coverage_thresholds(probabilities[in_domain], len(labels), rule):
        all_decided = abstain_decisions(probabilities, len(labels), threshold, rule)
        d = all_decided[in_domain]
        kept = d >= 0
        coverage.append(
            {
                "threshold": float(threshold),
                "coverage": float(kept.mean()) if n_in else 0.0,
                "selective_accuracy": float((d[kept] == targets[in_domain][kept]).mean())
                if kept.any()
                else 1.0,
                "other_abstained": float((all_decided[~in_domain] == -1).mean()) if n_other else None,
            }
        )
    words = recognizer.model_dir.metadata.card_or_default  # the model's own label names
    col_names = [*map(words.display_name, labels), words.none_of_these]
    row_names = [*map(words.display_name, labels), ABSTAIN_LABEL]
    confusion = np.zeros((len(row_names), len(col_names)), int)
    for t, d in zip(targets, decided, strict=True):
        confusion[t, d if d >= 0 else abstain] += 1

    metrics = {
        "split": split,
        "images": len(records),
        "in_domain_images": n_in,
        "other_images": n_other,
        "accuracy": raw_correct / n_in if n_in else None,
        "accuracy_ci95": wilson_interval(raw_correct, n_in),
        "accuracy_with_abstention": abstain_correct / n_in if n_in else None,
        "coverage": float(answered.mean()) if n_in else None,
        "selective_accuracy": float((decided[in_domain][answered] == targets[in_domain][answered]).mean())
        if answered.any()
        else None,
        "other_abstained": other_abstained / n_other if n_other else None,
        "other_abstained_ci95": wilson_interval(other_abstained, n_other),
        "threshold": recognizer.threshold,
        "ece": ece,
        "per_class": per_class,
        "reliability_bins": reliability,
        "coverage_curve": coverage,
        "labels_not_in_model": unknown,
        "abstain_rule": rule,
        **_set_metrics(recognizer, probabilities, targets),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn = _plots(out, confusion, row_names, col_names, reliability, coverage, metrics["set_coverage_curve"])
    (out / "metrics.json").write_text(
        json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )

    # Top losses: the mistakes only (a wrong label, an abstention on a known class, a label for an
    # ``other`` photo), most confidently wrong first; a correct photo is never shown as a loss.
    loss = -np.log(np.maximum(probabilities[np.arange(len(targets)), targets], 1e-12))
    mistaken = np.flatnonzero(np.where(decided >= 0, decided, abstain) != targets)
    worst = mistaken[np.argsort(-loss[mistaken], kind="stable")][:top_losses]
    cards = []
    for i in worst:
        predicted = labels[decided[i]] if decided[i] >= 0 else words.none_of_these
        cards.append(
            f'<figure><img src="{_thumbnail(dataset.abspath(records[i]))}" alt="{html.escape(records[i].path)}">'
            f"<figcaption>true: {html.escape(records[i].label)}<br>predicted: {html.escape(predicted)} "
            f"({confidence[i]:.0%})<br>loss {loss[i]:.2f}<br><small>{html.escape(records[i].path)}</small></figcaption></figure>"
        )
    (out / "report.html").write_text(
        _report_html(metrics, cards, recognizer, mistakes=len(mistaken), confusion=drawn), encoding="utf-8"
    )
    card = model_card(recognizer, metrics)
    (out / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    if update_model:
        bulky = ("reliability_bins", "coverage_curve", "set_coverage_curve")
        stored = {k: v for k, v in metrics.items() if k not in bulky}
        write_model_dir(model_dir, recognizer.model_dir.metadata.with_metrics(stored))
        (model_dir / CARD_FILE).write_text(card, encoding="utf-8")
    return metrics


#: Target coverages of the coverage-versus-set-size curve (each re-calibrated on the model's own data).
CURVE_TARGETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)


def _set_metrics(recognizer: Recognizer, probabilities: np.ndarray, targets: np.ndarray) -> dict:
    """Held-out coverage and size of the model's prediction sets, and the coverage-vs-size curve.

    The curve's points are the sets calibrated at training time at other target coverages (on the
    same out-of-fold predictions, ``metadata.conformal_curve``), applied to the held-out photos:
    calibrating them here would calibrate on the test split.
    """
    index = {label: i for i, label in enumerate(recognizer.labels)}
    predictions = recognizer.decide_rows(probabilities)
    sets = [[index[label] for label in p.prediction_set] for p in predictions]
    result = set_metrics(sets, targets, len(recognizer.labels), recognizer.labels)
    curve_calibrations = recognizer.model_dir.metadata.conformal_curve
    curve = set_coverage_curve(probabilities, targets, curve_calibrations) if curve_calibrations else []
    return {
        "prediction_sets": {"target_coverage": recognizer.coverage, **result},
        "set_coverage_curve": curve,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _report_html(
    metrics: dict,
    cards: list[str],
    recognizer: Recognizer,
    mistakes: int,
    confusion: tuple[np.ndarray, list[str], list[str]],
) -> str:
    """report.html: the figures, the confusion matrix as a table too, and the mistakes (only those)."""
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{m['precision']:.2f}</td><td>{m['recall']:.2f}</td><td>{m['f1']:.2f}</td>"
        f"<td>{m['support']}</td><td>{m['training_images']}</td></tr>"
        for label, m in metrics["per_class"].items()
    )
    low, high = metrics["accuracy_ci95"]
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Evaluation: {html.escape(recognizer.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}figure{{display:inline-block;width:180px;margin:6px;vertical-align:top;font-size:12px}}
img{{max-width:160px}}</style></head><body>
<h1>Evaluation of {html.escape(recognizer.name)} ({html.escape(metrics["split"])} split)</h1>
<p>{metrics["in_domain_images"]} photos of the model's labels, {metrics["other_images"]} photos of <code>other</code> (none of them).</p>
<ul><li>Accuracy (top-1, never abstaining): {_pct(metrics["accuracy"])} (95% CI {low:.1%}–{high:.1%})</li>
<li>With abstention (threshold {metrics["threshold"]:.3g}): {_pct(metrics["accuracy_with_abstention"])} correct, coverage {_pct(metrics["coverage"])},
accuracy of answered photos {_pct(metrics["selective_accuracy"])}</li>
<li>Photos of <code>other</code> abstained on: {_pct(metrics["other_abstained"])}</li>
<li>Expected calibration error: {metrics["ece"]:.3f}</li></ul>
{_sets_html(metrics)}
<h2>Per class</h2><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th>training images</th></tr>{rows}</table>
<h2>Confusion matrix</h2><img style="max-width:100%" src="confusion_matrix.png" alt="Confusion matrix of true versus predicted labels">
{_confusion_html(*confusion)}
<h2>Calibration</h2><img style="max-width:45%" src="reliability.png" alt="Reliability diagram">
<img style="max-width:45%" src="coverage.png" alt="Coverage versus accuracy curve">
<p id="coverage-note">Coverage versus accuracy: {html.escape(_coverage_note(metrics["coverage_curve"]))}</p>
{_top_losses_html(cards, mistakes, metrics["images"])}</body></html>
"""


def _confusion_html(confusion: np.ndarray, row_names: list[str], col_names: list[str]) -> str:
    """The confusion matrix as a table (rows true, columns predicted), readable without the picture."""
    head = "".join(f'<th scope="col">{html.escape(name)}</th>' for name in col_names)
    body = "".join(
        f'<tr><th scope="row">{html.escape(name)}</th>{"".join(f"<td>{value}</td>" for value in row)}</tr>'
        for name, row in zip(row_names, confusion.tolist(), strict=True)
    )
    return (
        f'<table id="confusion"><caption>true (rows) versus predicted (columns)</caption>'
        f"<tr><th></th>{head}</tr>{body}</table>"
    )


def _top_losses_html(cards: list[str], mistakes: int, images: int) -> str:
    """The top-losses section: the mistakes, most confidently wrong first, or plainly "no mistakes"."""
    if not mistakes:
        return (
            '<h2 id="top-losses">Top losses: no mistakes</h2>'
            f"<p>No mistakes: the model got all {images} photos of this split right, so there are no losses to show.</p>"
        )
    shown = f"the {len(cards)} most confidently wrong" if len(cards) < mistakes else "all of them"
    return (
        '<h2 id="top-losses">Top losses: the photos the model was most confidently wrong about</h2>'
        f"<p>{mistakes} of {images} photos are mistakes (a wrong label, an abstention on one of the labels, "
        f"or a label for an <code>other</code> photo); shown: {shown}, most confident first. "
        f'Check them for label noise.</p><div id="losses">{"".join(cards)}</div>'
    )


def _size(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _sets_html(metrics: dict) -> str:
    """The prediction-set section of report.html: overall, by set size, per class, and the curve."""
    sets = metrics.get("prediction_sets") or {}
    if sets.get("target_coverage") is None:
        return "<h2>Prediction sets</h2><p>This model has no prediction-set calibration (trained before them).</p>"
    by_size = "".join(
        f"<tr><td>{html.escape(size)}</td><td>{b['images']}</td><td>{_pct(b['share'])}</td><td>{_pct(b['coverage'])}</td></tr>"
        for size, b in sets["by_set_size"].items()
    )
    by_class = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{c['images']}</td><td>{_pct(c['coverage'])}</td>"
        f"<td>{_pct(c['answered_coverage'])}</td><td>{_size(c['mean_set_size'])}</td></tr>"
        for label, c in sets["by_class"].items()
    )
    curve = (
        '<img style="max-width:45%" src="set_coverage.png" alt="Coverage versus mean prediction-set size">'
        if metrics.get("set_coverage_curve")
        else ""
    )
    return f"""<h2>Prediction sets (target coverage {sets["target_coverage"]:.0%}, abstain rule {html.escape(metrics["abstain_rule"])})</h2>
<ul><li>Coverage of all in-domain photos (an abstention counts as a miss): {_pct(sets["coverage"])}</li>
<li>Answered {_pct(sets["answered"])} of in-domain photos; coverage of the answered ones {_pct(sets["answered_coverage"])},
mean set size {_size(sets["mean_set_size"])}</li>
<li>Photos of <code>other</code> given the empty set: {_pct(sets["other_empty_set"])}</li></ul>
<p>The guarantee is marginal, for photos exchangeable with the calibration photos; see docs/PREDICTION_SETS.md.</p>
<table><tr><th>set size</th><th>photos</th><th>share</th><th>coverage</th></tr>{by_size}</table>
<table><tr><th>label</th><th>photos</th><th>coverage</th><th>coverage answered</th><th>mean size</th></tr>{by_class}</table>
{curve}
"""


def _sets_card(metrics: dict, card: ModelCard) -> str:
    """The model card's prediction-set section."""
    sets = metrics.get("prediction_sets") or {}
    if sets.get("target_coverage") is None:
        return "This model has no prediction-set calibration: it answers with its top label alone."
    sizes = ", ".join(
        f"{size}: {_pct(b['share'])} (coverage {_pct(b['coverage'])})"
        for size, b in sets["by_set_size"].items()
    )
    rows = "\n".join(
        f"| {label} | {c['images']} | {_pct(c['coverage'])} | {_pct(c['answered_coverage'])} | {_size(c['mean_set_size'])} |"
        for label, c in sets["by_class"].items()
        if c["images"]
    )
    curve = "; ".join(
        f"{p['target']:.0%} → {_pct(p['answered_coverage'])} at size {_size(p['mean_set_size'])}"
        for p in metrics.get("set_coverage_curve", [])
    )
    return f"""Split-conformal APS sets (docs/PREDICTION_SETS.md), target coverage {sets["target_coverage"]:.0%},
calibrated on the out-of-fold predictions of the training split; measured here on the held-out split.
The guarantee is marginal and assumes new photos exchangeable with the calibration photos
(photos like the training photos); it does not hold under domain shift (photos unlike them).

| metric | value |
| --- | --- |
| coverage of all in-domain photos (abstaining counts as a miss) | {_pct(sets["coverage"])} |
| in-domain photos answered / coverage of those | {_pct(sets["answered"])} / {_pct(sets["answered_coverage"])} |
| mean set size (answered photos) | {_size(sets["mean_set_size"])} |
| photos of {card.other_photos} given the empty set | {_pct(sets["other_empty_set"])} |

By set size (share of in-domain photos): {sizes or "n/a"}.

Coverage of answered photos vs mean set size, by target coverage: {curve or "n/a"}.

| label | held-out photos | coverage | coverage of answered | mean set size |
| --- | --- | --- | --- | --- |
{rows}
"""


def _threshold_rule(meta: ModelMetadata, card: ModelCard) -> str:
    """How the threshold was chosen, for the model card (a threshold of 0: it never abstains)."""
    calibration = meta.calibration
    if calibration.threshold <= 0:
        return (
            " (it never abstains: it was trained without `other` photos, so there was nothing to "
            "calibrate abstention on)"
        )
    score = (
        "the best label's share of best label + P(none of these)"
        if calibration.abstain_rule == "in-scope-share"
        else "the best label's probability"
    )
    if calibration.policy == "other-target":
        chosen = (
            f"the lowest that abstains on {calibration.abstain_target:.0%} of the out-of-fold photos "
            f"of {card.other_photos}"
        )
    else:
        chosen = f"balancing abstention on photos of {card.other_photos} against in-domain accuracy"
    return f" on {score} ({chosen})"


def _views_text(views) -> str:
    """The views in words, e.g. 7 (the whole photo, its mirror, 5 crops of 60 % of each side)."""
    parts = []
    full = [v for v in views if v.box == (0.0, 0.0, 1.0, 1.0)]
    crops = [v for v in views if v.box != (0.0, 0.0, 1.0, 1.0)]
    if any(not v.mirror for v in full):
        parts.append("the whole photo")
    if any(v.mirror for v in full):
        parts.append("its mirror")
    if crops:
        sides = sorted({round((v.box[2] - v.box[0]) * 100) for v in crops})
        parts.append(
            f"{len(crops)} crop{'s' if len(crops) > 1 else ''} of {'/'.join(map(str, sides))} % of each side"
        )
    return f"{len(views)} ({', '.join(parts)})"


def model_card(recognizer: Recognizer, metrics: dict) -> str:
    """The model card, generated from the evaluation so its figures can never drift from the report.

    Its words (what the model does, its uses, data sources, failure modes) are the model
    directory's card (card.py), never the shipped model's.
    """
    meta = recognizer.model_dir.metadata
    card = meta.card_or_default
    can_abstain = recognizer.threshold > 0
    backbone = meta.backbone
    low, high = metrics["accuracy_ci95"]
    rows = []
    for label, m in metrics["per_class"].items():
        flag = " **low data**" if m["training_images"] < LOW_DATA_IMAGES else ""
        rows.append(
            f"| {card.display_name(label)} | {m['training_images']}{flag} | {m['support']} | {m['precision']:.2f} | {m['recall']:.2f} | {m['f1']:.2f} |"
        )
    low_data = [
        card.display_name(label)
        for label, m in metrics["per_class"].items()
        if m["training_images"] < LOW_DATA_IMAGES
    ]
    other_row = (
        f"| photos of {card.other_photos} abstained ({metrics['other_images']} photos) | {_pct(metrics['other_abstained'])} |"
        if can_abstain
        else "| photos that show none of the labels abstained | never: the model cannot abstain |"
    )
    return f"""# Model card: {recognizer.model_dir.metadata.card_or_default.title} ({recognizer.name}, {recognizer.version})

## What it does
{what_it_does(card, can_abstain)}

## Intended use
{card.intended_use}

## Out-of-scope use
{card.out_of_scope_use}

## Model
- Backbone: {backbone.name} (ImageNet-1k weights, Apache-2.0), input {backbone.image_size} px,
  scaled `{backbone.scale}`, {backbone.pooling}-pooled features;
  head: {meta.head} (logistic regression on frozen embeddings
  blended with class prototypes in probe mode; fine-tuned from that probe in finetune mode).
- Views of each photo, features averaged before the head: {_views_text(meta.views)}. Temperature {meta.calibration.temperature:.2f},
  abstain threshold {recognizer.threshold:.3g}{_threshold_rule(meta, card)}, calibrated on {meta.calibration.calibrated_on}.

## Results on the held-out split ({metrics["images"]} photos, duplicates kept on one side)
| metric | value |
| --- | --- |
| accuracy, top-1, never abstaining ({metrics["in_domain_images"]} in-domain photos) | {_pct(metrics["accuracy"])} (95% CI {low:.1%}–{high:.1%}) |
| correct with abstention (abstaining counts as wrong) | {_pct(metrics["accuracy_with_abstention"])} |
| coverage / accuracy of answered photos | {_pct(metrics["coverage"])} / {_pct(metrics["selective_accuracy"])} |
{other_row}
| expected calibration error | {metrics["ece"]:.3f} |

## Per class
Training images are before augmentation; "support" is the number of held-out photos. A class with
fewer than {LOW_DATA_IMAGES} training images is marked **low data**: its predictions rest on one to a few photos
and must not be trusted without a human check.

| label | training images | support | precision | recall | F1 |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Low-data classes: {", ".join(low_data) if low_data else "none"}.

## Prediction sets
{_sets_card(metrics, card)}

## Data
{data_sources_markdown(card)}

## Known failure modes
{failure_modes_markdown(card)}
"""
