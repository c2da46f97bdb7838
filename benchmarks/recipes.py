"""Issue 13 §2: stronger probe recipes, every variant measured on the same split and out of fold.

    .venv/bin/python benchmarks/recipes.py --compute [--stages A B ...]   # view features -> /tmp cache
    .venv/bin/python benchmarks/recipes.py --latency                      # ms per view, batch 1..8
    .venv/bin/python benchmarks/recipes.py                                # the Markdown table

Views are crops of the decoded photo (fractions of its width and height), each squished to the
backbone's input side exactly as ``backbone.preprocess`` does, optionally mirrored. Their frozen
GeM features are cached per photo sha256 under ``$RECIPES_CACHE`` (default /tmp/recipes_cache),
one npz per backbone and view, so re-runs only fit heads. Every variant is scored twice: on the
project's held-out split (seed 0, 20 %, duplicate-aware; head fitted on the whole training split)
and out of fold on the training split (5 group-aware folds), with the temperature, the abstain
threshold (90 % of out-of-fold ``other`` photos) and the conformal sets (APS, Mondrian, 0.9)
calibrated on the out-of-fold predictions, as ``train.py`` does.

This file is the runner: the recipes measured, their calibration and metrics, their cost and the
tables. The views, features, heads and out-of-fold scoring live in ``recipes_parts.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from recipes_parts import (
    CACHE,
    CORNERS80,
    GRID60,
    STAGES,
    Features,
    Head,
    Scores,
    Variant,
    compute_augmented,
    compute_stage,
    lite0_full_views,
    load_data,
    score_variant,
)

from ethnic_group_recognizer.backbone import backbone_onnx, onnx_session, spec_for
from ethnic_group_recognizer.calibrate import choose_threshold, fit_temperature, softmax
from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.conformal import calibrate_sets, prediction_sets, set_metrics

COVERAGE = 0.9
ABSTAIN_TARGET = 0.9


# -- calibration and metrics --------------------------------------------------------------------
@dataclass
class Calibrated:
    temperature: float
    threshold: float  # max-probability rule: answer when the best known label >= threshold
    sets_max: object
    tau: float  # P(other) rule: abstain when P(other) >= tau
    sets_other: object


def calibrate(logits: np.ndarray, targets: np.ndarray, n_labels: int) -> Calibrated:
    """Temperature, both abstention rules at 90 % of ``other`` abstained, and their conformal sets."""
    temperature = fit_temperature(logits, targets)
    probabilities = softmax(logits / temperature)
    threshold = choose_threshold(probabilities, targets, n_labels, ABSTAIN_TARGET)
    sets_max = calibrate_sets(
        probabilities, targets, COVERAGE, "aps", True, n_labels=n_labels, threshold=threshold
    )
    other = np.sort(probabilities[targets >= n_labels, n_labels])
    tau = float(other[int(np.floor((1 - ABSTAIN_TARGET) * len(other)))]) if len(other) else 1.0
    answered = probabilities[:, n_labels] < tau
    sets_other = calibrate_sets(
        probabilities[answered], targets[answered], COVERAGE, "aps", True, n_labels=n_labels
    )
    return Calibrated(temperature, threshold, sets_max, tau, sets_other)


def decide(logits: np.ndarray, cal: Calibrated, n_labels: int) -> dict[str, list]:
    """Per photo: top label, and for each rule whether it is answered and its prediction set."""
    probabilities = softmax(logits / cal.temperature)
    top = probabilities[:, :n_labels].argmax(axis=1)
    answered_max = probabilities[np.arange(len(top)), top] >= cal.threshold
    answered_other = probabilities[:, n_labels] < cal.tau
    sets_other = prediction_sets(probabilities, cal.sets_other, threshold=0.0)
    return {
        "top": top.tolist(),
        "answered_max": answered_max.tolist(),
        "sets_max": prediction_sets(probabilities, cal.sets_max),
        "answered_other": answered_other.tolist(),
        "sets_other": [s if a else [] for s, a in zip(sets_other, answered_other, strict=True)],
    }


def summarise(decisions: dict[str, list], targets: np.ndarray, n_labels: int) -> dict[str, float]:
    in_domain = targets < n_labels
    top = np.array(decisions["top"])
    out = {"top1": float((top[in_domain] == targets[in_domain]).mean())}
    for rule in ("max", "other"):
        answered = np.array(decisions[f"answered_{rule}"])
        sets = set_metrics(decisions[f"sets_{rule}"], targets, n_labels)
        out |= {
            f"{rule}_other_abstained": float((~answered[~in_domain]).mean()),
            f"{rule}_answered": float(answered[in_domain].mean()),
            f"{rule}_coverage": sets["coverage"] or 0.0,
            f"{rule}_answered_coverage": sets["answered_coverage"] or 0.0,
            f"{rule}_set_size": sets["mean_set_size"] or 0.0,
        }
    return out


def evaluate_scores(scores: Scores, n_labels: int) -> dict[str, dict[str, float]]:
    """Held-out metrics (calibrated on all out-of-fold rows) and cross-calibrated out-of-fold ones.

    Out of fold, each fold's photos are decided with a calibration fitted on the other four
    folds' out-of-fold predictions, so neither the threshold nor the sets see the photos they judge.
    """
    held = summarise(
        decide(scores.val, calibrate(scores.oof, scores.oof_targets, n_labels), n_labels),
        scores.val_targets,
        n_labels,
    )
    pooled: dict[str, list] = {}
    order = []
    for k in np.unique(scores.fold):
        inside, outside = scores.fold == k, scores.fold != k
        cal = calibrate(scores.oof[outside], scores.oof_targets[outside], n_labels)
        for key, values in decide(scores.oof[inside], cal, n_labels).items():
            pooled.setdefault(key, []).extend(values)
        order.extend(np.flatnonzero(inside).tolist())
    oof = summarise(pooled, scores.oof_targets[np.array(order)], n_labels)
    return {"held-out": held, "out of fold": oof}


# -- variants ---------------------------------------------------------------------------------
def _lite0(*views: str) -> Callable[[Features], np.ndarray | None]:
    return lambda f: f.mean("lite0", views)


def _mirrored(views: Sequence[str]) -> list[str]:
    return [f"{v}_m" for v in views]


def averaged(name: str, views: Sequence[str], head: Head | None = None, mirror_rows: bool = True) -> Variant:
    """Lite0 features averaged over ``views`` before the head, at training and prediction time.

    Training rows: the average of the views and, when ``views`` holds no mirror and
    ``mirror_rows`` is set, the average of their mirrors too (a training-time view only, as
    today's recipe trains on the photo and its mirror).
    """
    views = list(views)
    train = [_lite0(*views)]
    if mirror_rows and not any(v.endswith("_m") for v in views):
        train.append(_lite0(*_mirrored(views)))
    return Variant(
        name,
        lambda f: [t(f) for t in train],
        lambda f: [_lite0(*views)(f)],
        {"lite0": len(views)},
        head or Head(),
    )


BASE = ["full", "full_m"]
C80 = [*CORNERS80, "c80_cc"]


def variants() -> list[Variant]:
    """Every recipe measured, today's first."""
    baseline = Variant(
        "baseline: full + mirror, logits averaged (today)",
        lambda f: [f.view("lite0", "full"), f.view("lite0", "full_m")],
        lambda f: [f.view("lite0", "full"), f.view("lite0", "full_m")],
        {"lite0": 2},
    )
    lite2 = Variant(
        "Lite2 372 px: full photo",
        lambda f: [f.view("lite2", "full")],
        lambda f: [f.view("lite2", "full")],
        {"lite2": 1},
        augment=False,
    )
    mc10 = averaged(
        "full + 4 corners 80 %, + mirrors (10 views)", ["full", *CORNERS80, *_mirrored(["full", *CORNERS80])]
    )
    mc6 = averaged("full + mirror + 4 corners 80 % (6 views)", [*BASE, *CORNERS80])
    rows = [
        baseline,
        averaged("full + mirror, features averaged (2 views)", BASE),
        averaged("full + centre 80 % (2 views)", ["full", "c80_cc"], mirror_rows=False),
        averaged("full + mirror + centre 80 % (3 views)", [*BASE, "c80_cc"]),
        averaged("full + 4 corners 80 % (5 views)", ["full", *CORNERS80], mirror_rows=False),
        averaged("full + 4 corners 80 % (5 views; mirrors as training rows)", ["full", *CORNERS80]),
        mc6,
        averaged("full + mirror + 5 crops 80 % (7 views)", [*BASE, *C80]),
        mc10,
        averaged("full + 5 crops 80 %, + mirrors (12 views)", [*BASE, *C80, *_mirrored(C80)]),
        averaged("full + 5 crops 80 % (6 views; mirrors as training rows)", ["full", *C80]),
        averaged("full + mirror + 3x3 crops 60 % (11 views)", [*BASE, *GRID60]),
        averaged("full + 3x3 crops 60 % (10 views)", ["full", *GRID60], mirror_rows=False),
        averaged("full + mirror + 4 corners 60 % (6 views)", [*BASE, "g60_00", "g60_02", "g60_20", "g60_22"]),
        averaged(
            "full + mirror + 4 corners + centre 60 % (7 views)",
            [*BASE, "g60_00", "g60_02", "g60_11", "g60_20", "g60_22"],
        ),
        Variant(
            "full + mirror + 4 corners: each view a training row, averaged at prediction (6 views)",
            lambda f: [f.view("lite0", v) for v in [*BASE, *CORNERS80]],
            lambda f: [f.mean("lite0", [*BASE, *CORNERS80])],
            {"lite0": 6},
        ),
        lite2,
        Variant(
            "Lite0 (full + mirror) + Lite2 (full) concatenated",
            lambda f: [f.concat(f.view("lite0", v), f.view("lite2", "full")) for v in BASE],
            lambda f: [f.concat(f.view("lite0", v), f.view("lite2", "full")) for v in BASE],
            {"lite0": 2, "lite2": 1},
            augment=False,
        ),
        Variant(
            "probability ensemble: baseline + Lite2",
            lambda f: [],
            lambda f: [],
            {"lite0": 2, "lite2": 1},
            members=[baseline, lite2],
        ),
        Variant(
            "Lite0 6 views + Lite2 (full) concatenated",
            lambda f: [f.concat(mc6.predict(f)[0], f.view("lite2", "full"))],
            lambda f: [f.concat(mc6.predict(f)[0], f.view("lite2", "full"))],
            {"lite0": 6, "lite2": 1},
            augment=False,
        ),
        Variant(
            "probability ensemble: 6 views + Lite2",
            lambda f: [],
            lambda f: [],
            {"lite0": 6, "lite2": 1},
            members=[mc6, lite2],
        ),
    ]
    heads = {
        "C = 0.02": Head(regularization=0.02),
        "C = 0.2": Head(regularization=0.2),
        "no prototypes": Head(prototype_weight=0.0),
        "small-class feature mixup (4 mixes per photo)": Head(small_mix=4),
        "softmax head, label smoothing 0.1": Head(kind="linear", label_smoothing=0.1),
        "softmax head, mixup 0.4": Head(kind="linear", mixup=0.4),
        "MLP head (512, dropout 0.5), label smoothing 0.1": Head(kind="mlp", label_smoothing=0.1),
        "cosine head": Head(kind="cosine"),
    }
    for base in (mc6, mc10):
        for label, head in heads.items():
            rows.append(
                Variant(
                    f"{base.name.split(':')[0].split(' (')[0]}, {label}",
                    base.train,
                    base.predict,
                    base.views,
                    head,
                )
            )
    return rows


# -- cost -------------------------------------------------------------------------------------
LATENCY_FILE = CACHE / "latency.json"
#: README, Speed and memory: the shipped two-view model on an idle 2-core VM (p50).
IDLE_TWO_VIEWS_MS = 13.5


def measure_latency(
    config: Config, batches: Sequence[int] = (1, 2, 3, 5, 6, 7, 10, 12), rounds: int = 7
) -> dict:
    """p50 ms per ``session.run`` of a batch of views, per backbone, rounds interleaved (busy machine)."""
    import json

    sessions = {b: onnx_session(backbone_onnx(b, config), config) for b in ("lite0", "lite2")}
    samples: dict[str, dict[int, list[float]]] = {b: {n: [] for n in batches} for b in sessions}
    for _ in range(rounds):
        for backbone, session in sessions.items():
            side = spec_for(backbone, config).image_size
            for n in batches:
                pixels = np.random.default_rng(0).uniform(-1, 1, (n, 3, side, side)).astype(np.float32)
                started = time.perf_counter()
                session.run(None, {"pixels": pixels})
                samples[backbone][n].append((time.perf_counter() - started) * 1000)
    result = {
        "load_average": os.getloadavg()[0],
        "p50_ms": {b: {str(n): float(np.median(v)) for n, v in s.items()} for b, s in samples.items()},
        "size_mb": {b: backbone_onnx(b, config).stat().st_size / 1e6 for b in sessions},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    LATENCY_FILE.parent.mkdir(parents=True, exist_ok=True)
    LATENCY_FILE.write_text(json.dumps(result, indent=1))
    return result


def cost(variant: Variant, latency: dict) -> tuple[float, float, float]:
    """(measured ms, idle estimate ms, model MB) of one photo: all views of a backbone in one run."""
    p50 = latency["p50_ms"]
    measured = sum(_interpolate(p50[b], n) for b, n in variant.views.items())
    scale = IDLE_TWO_VIEWS_MS / _interpolate(p50["lite0"], 2)
    size = sum(latency["size_mb"][b] for b in variant.views) + 0.1
    return measured, measured * scale, size


def _interpolate(table: dict[str, float], n: int) -> float:
    sizes = sorted(int(k) for k in table)
    return float(np.interp(n, sizes, [table[str(k)] for k in sizes]))


# -- table ------------------------------------------------------------------------------------
def table(results: list[tuple[Variant, dict, tuple[float, float, float] | None]], part: str) -> list[str]:
    lines = [
        f"| recipe ({part}) | views | top-1 | other abstained | in-domain answered | coverage (all / answered) "
        "| mean set size | P(other) rule: other abstained / answered / coverage / set size | ms (busy / idle est.) "
        "| MB | fits |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, metrics, costs in results:
        m = metrics[part]
        views = " + ".join(f"{n} {b}" for b, n in variant.views.items())
        if costs:
            busy, idle, size = costs
            fits = "yes" if idle <= 60 and size <= 25 else ("no (size)" if size > 25 else "no (time)")
            cost_cells = f"{busy:.0f} / {idle:.0f} | {size:.1f} | {fits}"
        else:
            cost_cells = "– | – | –"
        lines.append(
            f"| {variant.name} | {views} | {m['top1']:.3f} | {m['max_other_abstained']:.3f} | {m['max_answered']:.3f} | "
            f"{m['max_coverage']:.3f} / {m['max_answered_coverage']:.3f} | {m['max_set_size']:.2f} | "
            f"{m['other_other_abstained']:.3f} / {m['other_answered']:.3f} / {m['other_coverage']:.3f} / "
            f"{m['other_set_size']:.2f} | {cost_cells} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--compute", action="store_true", help="compute and cache view features")
    parser.add_argument("--stages", nargs="*", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--latency", action="store_true", help="measure ms per view at batch 1..12")
    parser.add_argument("--only", nargs="*", default=None, help="substrings of recipe names to run")
    parser.add_argument("--cached-only", action="store_true", help="table of the variants already fitted")
    args = parser.parse_args()
    config = Config(threads=2)
    if args.latency:
        print(measure_latency(config))
        return
    data = load_data(config)
    if args.compute:
        lite0_full_views(data, config)
        compute_augmented(data, config)
        for stage in args.stages:
            backbone, views = STAGES[stage]
            compute_stage(data, backbone, views, config)
        return
    import json

    latency = json.loads(LATENCY_FILE.read_text()) if LATENCY_FILE.exists() else None
    features = Features(data)
    results = []
    chosen = variants()
    if args.only:  # in the order given: the most wanted first on a busy machine
        chosen = [v for wanted in args.only for v in chosen if wanted in v.name]
    for variant in chosen:
        scores = score_variant(variant, features, config.seed, fit=not args.cached_only)
        if scores is None:
            print(f"skipped (not computed or not fitted): {variant.name}", file=sys.stderr, flush=True)
            continue
        metrics = evaluate_scores(scores, data.n_labels)
        costs = cost(variant, latency) if latency else None
        results.append((variant, metrics, costs))
        print(
            f"{variant.name}: {scores.seconds:.0f} s, held-out top-1 {metrics['held-out']['top1']:.3f}, "
            f"oof {metrics['out of fold']['top1']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    date = time.strftime("%Y-%m-%d", time.gmtime())
    in_domain_val = int((data.targets[data.val_idx] < data.n_labels).sum())
    print(
        f"Held-out: {in_domain_val} in-domain + {len(data.val_idx) - in_domain_val} other photos; "
        f"out of fold: {len(data.train_idx)} training photos, 5 group-aware folds; {date}.\n"
    )
    for part in ("held-out", "out of fold"):
        print("\n".join(table(results, part)) + "\n", flush=True)


if __name__ == "__main__":
    main()
