"""Do fp16 weights or int8 quantisation of the shipped model keep its accuracy, and are they faster?

    .venv/bin/python benchmarks/quantize.py [--variants fp16 int8-dynamic] [--calibration 128] [--rounds 5]

Variants of ``model.onnx`` (the shipped model, copied first so a re-train underneath changes nothing).
The graph is format 2: its input is ``pixels`` (photos, V, 3, S, S), the V views of each photo
(views.py), whose unit features are averaged inside the graph; every variant keeps that input.

- ``fp16``: fp16 weights (onnxruntime's float16 converter, inputs and outputs kept fp32);
- ``int8-dynamic``: weights only, activations quantised at run time;
- ``int8-static`` and ``int8-static-7bit``: QDQ, per-channel weights, calibrated (MinMax) on
  training photos of the model's own split through the model's own views (``Recognizer.pixels``,
  all V views of a photo a calibration batch), on the backbone only: the head after the last
  convolution (GeM pooling, view averaging, L2 norm, the linear layer, temperature, softmax)
  stays fp32. 8-bit weights, and ``reduce_range`` (7-bit weights), which onnxruntime recommends
  on x86 CPUs without VNNI, where u8 x s8 products can saturate.

Accuracy: every variant runs on the same decoded held-out photos (the model's recorded split of
../shared/data, decoded as the product decodes them, ``Recognizer.decode``); top-1, other cultures
abstained, correct-with-abstention, ECE (``evaluate.evaluate``'s definitions, with the model's own
abstain rule; fp32 is checked against the model's recorded metrics) and the prediction sets'
coverage and mean size (``Recognizer.decide_rows``), plus how often a variant's decision differs
from fp32's. Speed: the model alone on pre-made input, one photo's V views in one run, interleaved
rounds, as a ratio to fp32 in the same round, and ms a photo. Ship rule (issue 15): int8 only if
>= 1.5x faster with top-1 and calibration unchanged within a point; fp16 (issue 13) only if
accuracy is unchanged and it is not slower.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np
import onnx
from _common import shared_dataset
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16
from throughput_parts import (
    Sample,
    SessionSettings,
    cpu_facts,
    interleaved,
    load_average,
    median,
    open_session,
    spread,
    timed,
)

from ethnic_group_recognizer.calibrate import abstain_decisions
from ethnic_group_recognizer.config import ABSTAIN_LABEL, DEFAULT_MODEL_DIR, Config
from ethnic_group_recognizer.dataset import Dataset
from ethnic_group_recognizer.evaluate import expected_calibration_error, select_records
from ethnic_group_recognizer.model import Recognizer

SHIP_SPEEDUP = 1.5
SHIP_TOLERANCE = 0.01  # "within a point"
VARIANTS = ("fp16", "int8-dynamic", "int8-static", "int8-static-7bit")


class TrainingPhotos(CalibrationDataReader):
    """Calibration batches for onnxruntime's calibrator: one photo's (1, V, 3, S, S) views each.

    Views are rendered when asked for, from photos decoded once, so memory stays at the decoded
    photos, not V float copies of each.
    """

    def __init__(self, recognizer: Recognizer, images: list):
        self.recognizer, self.images, self.index = recognizer, images, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.images):
            return None
        pixels = self.recognizer.pixels(self.images[self.index])[None]
        self.index += 1
        return {"pixels": pixels}

    def rewind(self) -> None:
        self.index = 0


def head_nodes(model_path: Path) -> list[str]:
    """Names of the nodes after the last Conv: GeM pooling, view averaging and the head stay fp32."""
    nodes = onnx.load(str(model_path)).graph.node
    last_conv = max(i for i, node in enumerate(nodes) if node.op_type == "Conv")
    return [node.name for node in nodes[last_conv + 1 :]]


def quantize_static_qdq(
    fp32: Path, out: Path, calibration: CalibrationDataReader, reduce_range: bool, work: Path
) -> None:
    prepared = work / "prepared.onnx"
    if not prepared.exists():
        quant_pre_process(str(fp32), str(prepared))  # shape inference + folding the export's Pad subgraphs
    calibration.rewind()
    quantize_static(
        str(prepared),
        str(out),
        calibration,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=head_nodes(prepared),
        # No CalibMaxIntermediateOutputs: in onnxruntime 1.32 MinMax drops every full chunk of
        # outputs without merging its range (collect_data clears before computing). MinMax keeps
        # only per-tensor minima and maxima, so every photo's views fit in memory anyway.
    )


def probabilities(model: Path, recognizer: Recognizer, images: list) -> np.ndarray:
    """(N, K+1) probabilities of decoded photos, one photo's V views a run (as the product runs)."""
    session = open_session(model, SessionSettings(intra=2, spinning=False))
    rows = [
        session.run(["probabilities"], {"pixels": recognizer.pixels(image)[None]})[0][0] for image in images
    ]
    return np.stack(rows)


def metrics(
    probs: np.ndarray, targets: np.ndarray, recognizer: Recognizer, threshold: float
) -> dict[str, float]:
    """The evaluate.evaluate figures that the ship rule looks at, with the model's abstain rule."""
    n_labels = len(recognizer.labels)
    decided = abstain_decisions(probs, n_labels, threshold, recognizer.abstain_rule)
    top = probs[:, :n_labels].argmax(axis=1)
    confidence = probs[np.arange(len(top)), top]
    inside = targets < n_labels
    ece, _ = expected_calibration_error(confidence[inside], top[inside] == targets[inside])
    index = {label: i for i, label in enumerate(recognizer.labels)}
    sets = [[index[label] for label in p.prediction_set] for p in recognizer.decide_rows(probs)]
    in_set = [
        int(t) in members for t, members in zip(targets[inside], np.array(sets, object)[inside], strict=True)
    ]
    answered_sizes = [len(members) for members in np.array(sets, object)[inside] if members]
    return {
        "top1": float((top[inside] == targets[inside]).mean()),
        "with_abstention": float((decided[inside] == targets[inside]).mean()),
        "coverage": float((decided[inside] >= 0).mean()),
        "other_abstained": float((decided[~inside] == -1).mean()) if (~inside).any() else float("nan"),
        "ece": float(ece),
        "mean_confidence": float(confidence[inside].mean()),
        "set_coverage": float(np.mean(in_set)),
        "set_size": float(np.mean(answered_sizes)) if answered_sizes else float("nan"),
    }


def model_alone(session, feed: np.ndarray, seconds: float) -> Sample:
    """Photos/s of the model alone on a pre-made (photos, V, 3, S, S) feed."""
    return timed(lambda: (session.run(["probabilities"], {"pixels": feed}), feed.shape[0])[1], seconds)


def print_table(title: str, samples: dict[str, list[Sample]], reference: str) -> None:
    """ms a photo (median over rounds) and the per-round ratio to ``reference``'s rate."""
    print(f"\n{title}   ({load_average()})")
    for name, runs in samples.items():
        ratios = [
            run.photos_per_s / base.photos_per_s for run, base in zip(runs, samples[reference], strict=True)
        ]
        ms = median(1000 / run.photos_per_s for run in runs)
        print(
            f"  {name:48s} {ms:7.1f} ms a photo   x{median(ratios):5.2f} of {reference.split()[0]} ({spread(ratios)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--calibration", type=int, default=128, help="training photos to calibrate on")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="only the first N held-out photos (a quick check, not the figures)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's per-tensor warnings on the raw export
    print(cpu_facts())
    print(f"start: {load_average()}")
    dataset_dir = shared_dataset()
    config = Config()
    with tempfile.TemporaryDirectory(prefix="egr-quantize-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = tmp / "fp32"
        shutil.copytree(args.model, model_dir)  # a snapshot: a re-train may rewrite the shipped one
        recognizer = Recognizer.load(model_dir, config)
        size, n_labels, threshold = recognizer.image_size, len(recognizer.labels), recognizer.threshold
        n_views = len(recognizer.views)
        recorded = recognizer.metadata.get("metrics", {})
        print(
            f"model {args.model} v{recognizer.version}, input {size} px, {n_views} views a photo, "
            f"decoded to {recognizer.decode_side} px, threshold {threshold} ({recognizer.abstain_rule})"
        )

        dataset = Dataset.open(dataset_dir, config)
        held_out = [
            r
            for r in select_records(model_dir, dataset, "val")
            if r.label in recognizer.labels or r.label == ABSTAIN_LABEL
        ]
        if args.limit:
            held_out = sorted(held_out, key=lambda r: r.sha256)[: args.limit]
        index = {label: i for i, label in enumerate(recognizer.labels)}
        targets = np.array([index.get(r.label, n_labels) for r in held_out])
        held_out_images = [recognizer.decode(dataset.abspath(r)) for r in held_out]
        static = [v for v in args.variants if v.startswith("int8-static")]
        calibration = None
        if static:
            train = sorted(select_records(model_dir, dataset, "train"), key=lambda r: r.sha256)
            step = max(1, len(train) // args.calibration)
            chosen = train[::step][: args.calibration]
            calibration = TrainingPhotos(recognizer, [recognizer.decode(dataset.abspath(r)) for r in chosen])
            print(f"calibration: {len(chosen)} training photos ({len(chosen) * n_views} views)")
        print(f"held out: {len(held_out)} photos ({int((targets < n_labels).sum())} in-domain)")

        fp32 = model_dir / "model.onnx"
        variants: dict[str, Path] = {"fp32": fp32}
        if "fp16" in args.variants:
            half = tmp / "fp16.onnx"
            onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(half))
            variants["fp16 weights"] = half
        if "int8-dynamic" in args.variants:
            dynamic = tmp / "int8-dynamic.onnx"
            quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QUInt8)
            variants["int8 dynamic"] = dynamic
        for key, name, reduce_range in (
            ("int8-static", "int8 static QDQ per-channel", False),
            ("int8-static-7bit", "int8 static QDQ per-channel 7-bit", True),
        ):
            if key in static:
                path = tmp / (name.replace(" ", "-") + ".onnx")
                quantize_static_qdq(fp32, path, calibration, reduce_range, tmp)
                variants[name] = path

        results = {name: probabilities(path, recognizer, held_out_images) for name, path in variants.items()}
        reference = metrics(results["fp32"], targets, recognizer, threshold)
        if recorded.get("accuracy") is not None:
            print(
                f"fp32 cross-check against the model's recorded metrics: top-1 {reference['top1']:.3f} vs "
                f"{recorded['accuracy']:.3f}, other abstained {reference['other_abstained']:.3f} vs "
                f"{recorded.get('other_abstained', float('nan')):.3f}, ECE {reference['ece']:.3f} vs {recorded.get('ece', float('nan')):.3f}"
            )
        fp32_decided = abstain_decisions(results["fp32"], n_labels, threshold, recognizer.abstain_rule)

        rng = np.random.default_rng(0)
        feeds = {b: rng.uniform(-1, 1, (b, n_views, 3, size, size)).astype(np.float32) for b in (1, 2)}
        speed_settings = [SessionSettings(intra=1), SessionSettings(intra=2, spinning=False)]
        sessions = {
            (name, s): open_session(path, s) for name, path in variants.items() for s in speed_settings
        }
        measures = {
            f"{name:34s} batch {b} [{s.label}]": (
                lambda key=(name, s), b=b: model_alone(sessions[key], feeds[b], args.seconds)
            )
            for (name, s) in sessions
            for b in (1, 2)
        }
        samples = interleaved(measures, args.rounds)
        for s in speed_settings:
            for b in (1, 2):
                subset = {k: v for k, v in samples.items() if k.endswith(f"batch {b} [{s.label}]")}
                print_table(
                    f"speed, model alone, {n_views} views a photo, {b} photo(s) a run [{s.label}]",
                    subset,
                    next(iter(subset)),
                )
        speedups = {
            name: float(
                np.median(
                    [
                        run.photos_per_s / base.photos_per_s
                        for s in speed_settings
                        for b in (1, 2)
                        for run, base in zip(
                            samples[f"{name:34s} batch {b} [{s.label}]"],
                            samples[f"{'fp32':34s} batch {b} [{s.label}]"],
                            strict=True,
                        )
                    ]
                )
            )
            for name in variants
        }
        one_photo_ms = {
            name: median(1000 / run.photos_per_s for run in samples[f"{name:34s} batch 1 [intra=2 spin=off]"])
            for name in variants
        }

        print(
            f"\naccuracy on the held-out split, and speed (median ratio to fp32 over every round; "
            f"ms: one photo, {n_views} views, intra=2)   ({load_average()})"
        )
        print(
            f"{'variant':34s} {'MB':>5s} {'ms':>6s} {'speed':>6s} {'top-1':>6s} {'w/ abst.':>8s} {'answered':>8s} "
            f"{'other abst.':>11s} {'ECE':>6s} {'set cov.':>8s} {'set size':>8s} {'decision != fp32':>16s} "
            f"{'max |dp|':>8s}  verdict"
        )
        for name, path in variants.items():
            m = metrics(results[name], targets, recognizer, threshold)
            changed = float(
                (
                    abstain_decisions(results[name], n_labels, threshold, recognizer.abstain_rule)
                    != fp32_decided
                ).mean()
            )
            delta = float(np.abs(results[name] - results["fp32"]).max())
            keeps = all(
                abs(m[k] - reference[k]) <= SHIP_TOLERANCE for k in ("top1", "other_abstained", "ece")
            )
            needed = 1.0 if name.startswith("fp16") else SHIP_SPEEDUP
            verdict = (
                "reference"
                if name == "fp32"
                else ("SHIP" if keeps and speedups[name] >= needed else "no: ")
                + ("" if speedups[name] >= needed else f"{speedups[name]:.2f}x < {needed}x ")
                + ("" if keeps else "metrics moved > 1 point")
            )
            print(
                f"{name:34s} {path.stat().st_size / 1e6:5.1f} {one_photo_ms[name]:6.1f} {speedups[name]:5.2f}x "
                f"{m['top1']:6.3f} {m['with_abstention']:8.3f} {m['coverage']:8.3f} {m['other_abstained']:11.3f} "
                f"{m['ece']:6.3f} {m['set_coverage']:8.3f} {m['set_size']:8.2f} {changed:16.3f} {delta:8.4f}  {verdict}"
            )
        print(f"end: {load_average()}")


if __name__ == "__main__":
    main()
