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

from ethnic_group_recognizer.calibrate import abstain_decisions
from ethnic_group_recognizer.config import ABSTAIN_LABEL, ABSTAIN_TEXT, Config
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
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax.plot([c["coverage"] for c in coverage], [c["selective_accuracy"] for c in coverage], "-")
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
    rows = []
    step = config.batch_size
    for start in progress(range(0, len(records), step), "Evaluating", total=math.ceil(len(records) / step)):
        images = [load_image(dataset.abspath(r), config) for r in records[start : start + step]]
        rows.append(recognizer.probabilities(images))
    probabilities = np.concatenate(rows)
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
    for threshold in np.linspace(0, 0.95, 39):
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
    col_names = [*labels, ABSTAIN_TEXT]
    row_names = [*labels, ABSTAIN_LABEL]
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
    _plots(out, confusion, row_names, col_names, reliability, coverage, metrics["set_coverage_curve"])
    (out / "metrics.json").write_text(
        json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )

    # Top losses: the held-out photos the model was most confidently wrong about.
    loss = -np.log(np.maximum(probabilities[np.arange(len(targets)), targets], 1e-12))
    worst = np.argsort(-loss)[:top_losses]
    cards = []
    for i in worst:
        predicted = labels[decided[i]] if decided[i] >= 0 else ABSTAIN_TEXT
        cards.append(
            f'<figure><img src="{_thumbnail(dataset.abspath(records[i]))}" alt="{html.escape(records[i].path)}">'
            f"<figcaption>true: {html.escape(records[i].label)}<br>predicted: {html.escape(predicted)} "
            f"({confidence[i]:.0%})<br>loss {loss[i]:.2f}<br><small>{html.escape(records[i].path)}</small></figcaption></figure>"
        )
    (out / "report.html").write_text(_report_html(metrics, cards, recognizer), encoding="utf-8")
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


def _report_html(metrics: dict, cards: list[str], recognizer: Recognizer) -> str:
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
<p>{metrics["in_domain_images"]} in-domain photos, {metrics["other_images"]} photos of other cultures.</p>
<ul><li>Accuracy (top-1, never abstaining): {_pct(metrics["accuracy"])} (95% CI {low:.1%}–{high:.1%})</li>
<li>With abstention (threshold {metrics["threshold"]:.2f}): {_pct(metrics["accuracy_with_abstention"])} correct, coverage {_pct(metrics["coverage"])},
accuracy of answered photos {_pct(metrics["selective_accuracy"])}</li>
<li>Photos of other cultures abstained: {_pct(metrics["other_abstained"])}</li>
<li>Expected calibration error: {metrics["ece"]:.3f}</li></ul>
{_sets_html(metrics)}
<h2>Per class</h2><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th>training images</th></tr>{rows}</table>
<h2>Confusion matrix</h2><img style="max-width:100%" src="confusion_matrix.png" alt="Confusion matrix of true versus predicted labels">
<h2>Calibration</h2><img style="max-width:45%" src="reliability.png" alt="Reliability diagram">
<img style="max-width:45%" src="coverage.png" alt="Coverage versus accuracy curve">
<h2>Top losses</h2><p>The held-out photos the model was most confidently wrong about; check them for label noise.</p>
{"".join(cards)}</body></html>
"""


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
<li>Photos of other cultures given the empty set: {_pct(sets["other_empty_set"])}</li></ul>
<p>The guarantee is marginal, for photos exchangeable with the calibration photos; see docs/PREDICTION_SETS.md.</p>
<table><tr><th>set size</th><th>photos</th><th>share</th><th>coverage</th></tr>{by_size}</table>
<table><tr><th>label</th><th>photos</th><th>coverage</th><th>coverage answered</th><th>mean size</th></tr>{by_class}</table>
{curve}
"""


def _sets_card(metrics: dict) -> str:
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
(shop and stage costumes); it does not hold under domain shift (real-life photos).

| metric | value |
| --- | --- |
| coverage of all in-domain photos (abstaining counts as a miss) | {_pct(sets["coverage"])} |
| in-domain photos answered / coverage of those | {_pct(sets["answered"])} / {_pct(sets["answered_coverage"])} |
| mean set size (answered photos) | {_size(sets["mean_set_size"])} |
| photos of other cultures given the empty set | {_pct(sets["other_empty_set"])} |

By set size (share of in-domain photos): {sizes or "n/a"}.

Coverage of answered photos vs mean set size, by target coverage: {curve or "n/a"}.

| label | held-out photos | coverage | coverage of answered | mean set size |
| --- | --- | --- | --- | --- |
{rows}
"""


def _sources_section() -> str:
    sources = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "SOURCES.md"
    table = [
        "| data | origin | licence |",
        "| --- | --- | --- |",
        "| web-scraped costume photos of Bai, Hani, Kazakhs, Lisu, Qiang, Tatar, Uzbeks | GitHub `precious0612/Ethnic-Costume-Classify` (from a Chinese image search) | none stated: research use |",
        "| one or two real-life photos per class | GitHub `MdTanvirHossainTusher/Ethnic-Group-Recognizer` | MIT |",
        "| Chakma and Tripuri festival and dress photos | GitHub `faiyazabdullah/BanglaVerse` | Apache-2.0 |",
        "| Naga and Tripuri dress and festival photos | GitHub `K1shish09/Sanskriti-Darpana` | none stated: research use |",
        "| Mon parade photo; Myanmar groups' dress (negatives) | GitHub `johndoe-se/myanmar-ethnic-groups-project` | none stated: research use |",
        "| Hui and Manchu dress (negatives) | GitHub `TiandaSun/CMC-Classification` | none stated: research use |",
        "| world traditional garments (negatives) | GitHub `Sieun651/World-Traditional-Clothes-Machine-Learning_Project` | none stated: research use |",
    ]
    note = f"(Summarised from `SOURCES.md` of the training data{'' if sources.exists() else ', not present on this machine'}.)"
    return "\n".join(table) + "\n\n" + note


def _threshold_rule(meta: ModelMetadata) -> str:
    """How the threshold was chosen, for the model card."""
    calibration = meta.calibration
    score = (
        "the best label's share of best label + P(none of these)"
        if calibration.abstain_rule == "in-scope-share"
        else "the best label's probability"
    )
    if calibration.policy == "other-target":
        chosen = f"the lowest that abstains on {calibration.abstain_target:.0%} of the out-of-fold photos of other cultures"
    else:
        chosen = "balancing abstention on other cultures against in-domain accuracy"
    return f" on {score} ({chosen})"


def model_card(recognizer: Recognizer, metrics: dict) -> str:
    """The model card, generated from the evaluation so its figures can never drift from the report."""
    meta = recognizer.model_dir.metadata
    backbone = meta.backbone
    low, high = metrics["accuracy_ci95"]
    rows = []
    for label, m in metrics["per_class"].items():
        flag = " **low data**" if m["training_images"] < LOW_DATA_IMAGES else ""
        rows.append(
            f"| {label} | {m['training_images']}{flag} | {m['support']} | {m['precision']:.2f} | {m['recall']:.2f} | {m['f1']:.2f} |"
        )
    low_data = [label for label, m in metrics["per_class"].items() if m["training_images"] < LOW_DATA_IMAGES]
    return f"""# Model card: {recognizer.name} ({recognizer.version})

## What it does
Given a photograph, the model says which of 12 ethnic groups' **visual culture** it shows: traditional
dress, adornment, crafts and festivals. It answers "{ABSTAIN_TEXT}" (abstains) when the photo shows
none of the cultures it knows. What it has learnt is clothing and ornament, nothing about people.

## Intended use
Cataloguing and exploring cultural-heritage photographs: sorting a museum's or an archive's costume
and festival photos, suggesting tags for a human cataloguer to confirm, teaching.

## Out-of-scope use
- **Inferring any individual's ethnicity**, for any purpose: surveillance, policing, migration or border
  control, hiring, credit, or any decision about a person. Dress is chosen, shared and borrowed; it does
  not tell who someone is.
- Biometric categorisation by race or ethnicity is prohibited in the EU by the AI Act, Article 5(1)(g).
- The product has no face detection, face cropping or facial-feature pipeline, and must not be given one.

## Model
- Backbone: {backbone.name} (ImageNet-1k weights, Apache-2.0), input {backbone.image_size} px,
  scaled `{backbone.scale}`, {backbone.pooling}-pooled features;
  head: {meta.head} (logistic regression on frozen embeddings
  blended with class prototypes in probe mode; fine-tuned from that probe in finetune mode).
- Test-time augmentation (mirror): {"on" if meta.tta else "off"}. Temperature {meta.calibration.temperature:.2f},
  abstain threshold {recognizer.threshold:.2f}{_threshold_rule(meta)}, calibrated on {meta.calibration.calibrated_on}.

## Results on the held-out split ({metrics["images"]} photos, duplicates kept on one side)
| metric | value |
| --- | --- |
| accuracy, top-1, never abstaining ({metrics["in_domain_images"]} in-domain photos) | {_pct(metrics["accuracy"])} (95% CI {low:.1%}–{high:.1%}) |
| correct with abstention (abstaining counts as wrong) | {_pct(metrics["accuracy_with_abstention"])} |
| coverage / accuracy of answered photos | {_pct(metrics["coverage"])} / {_pct(metrics["selective_accuracy"])} |
| photos of other cultures abstained ({metrics["other_images"]} photos) | {_pct(metrics["other_abstained"])} |
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
{_sets_card(metrics)}

## Data
{_sources_section()}

## Known failure modes
- **Hani and Akha overlap**: China classifies the Akha as part of the Hani, so some "Hani" training photos
  show Akha-style headdresses; the two are confused.
- **Stage and shop costumes vs real life**: the Kazakh, Uzbek and Tatar photos are mostly stage and shop
  costumes from China; real-life photos of these groups look different and are recognised worse.
- Classes backed by 1–4 photos (Akha, Chakma, Mon) are recognised mostly by resemblance to those few photos.
- Drawings, stamps and posters of costumes may be classified as if they were photographs.
- Photos of related cultures that are not among the 12 (e.g. Yi, Miao, Hmong, Kyrgyz) can be given one
  of the 12 labels with moderate confidence; the abstain threshold catches only part of them.
"""
