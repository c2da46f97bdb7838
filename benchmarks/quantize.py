"""Do fp16 weights or int8 quantisation of the shipped model keep its accuracy, and are they faster?

    .venv/bin/python benchmarks/quantize.py [--calibration 128] [--rounds 5]

Variants of ``model.onnx`` (the shipped model, copied first so a re-train underneath changes nothing):

- fp16 weights (onnxruntime's float16 converter, inputs and outputs kept fp32);
- int8 dynamic (weights only, activations quantised at run time);
- int8 static, QDQ, per-channel weights, calibrated (MinMax) on training photos of the model's own
  split through the model's own preprocessing (``backbone.preprocess``, both TTA views), on the
  backbone only: the head after the last convolution (GeM pooling, L2 norm, the linear layer,
  temperature, softmax) stays fp32. Twice: 8-bit weights, and ``reduce_range`` (7-bit weights),
  which onnxruntime recommends on x86 CPUs without VNNI, where u8 x s8 products can saturate.

Accuracy: every variant runs on the same decoded held-out photos (the model's recorded split of
../shared/data); top-1, other cultures abstained, correct-with-abstention and ECE are computed as
``evaluate.evaluate`` computes them (fp32 is checked against the model's recorded metrics), plus how
often a variant's decision differs from fp32's. Speed: the model alone on pre-made input, both TTA
views in one run, interleaved rounds, as a ratio to fp32 in the same round. Ship rule (issue 15):
int8 only if >= 1.5x faster with top-1 and calibration unchanged within a point.
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
from throughput import (
    SessionSettings,
    cpu_facts,
    interleaved,
    load_average,
    model_alone,
    open_session,
    print_table,
)

from ethnic_group_recognizer.backbone import preprocess
from ethnic_group_recognizer.calibrate import abstain_decisions
from ethnic_group_recognizer.config import ABSTAIN_LABEL, DEFAULT_MODEL_DIR, Config
from ethnic_group_recognizer.dataset import Dataset
from ethnic_group_recognizer.evaluate import expected_calibration_error, select_records
from ethnic_group_recognizer.images import load_image
from ethnic_group_recognizer.model import Recognizer

SHIP_SPEEDUP = 1.5
SHIP_TOLERANCE = 0.01  # "within a point"


def both_views(paths: list[Path], size: int, config: Config) -> np.ndarray:
    """(2N, 3, S, S): each photo and its mirror, as the model sees them with TTA."""
    views = []
    for path in paths:
        image = load_image(path, config)
        views += [preprocess(image, size), preprocess(image, size, mirror=True)]
    return np.stack(views)


class TrainingPhotos(CalibrationDataReader):
    """Calibration batches of training-split views, fed to onnxruntime's calibrator."""

    def __init__(self, views: np.ndarray, batch: int = 8):
        self.views, self.batch, self.start = views, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.views):
            return None
        chunk = self.views[self.start : self.start + self.batch]
        self.start += self.batch
        return {"pixels": chunk}

    def rewind(self) -> None:
        self.start = 0


def head_nodes(model_path: Path) -> list[str]:
    """Names of the nodes after the last Conv: GeM pooling and the classifier head stay fp32."""
    nodes = onnx.load(str(model_path)).graph.node
    last_conv = max(i for i, node in enumerate(nodes) if node.op_type == "Conv")
    return [node.name for node in nodes[last_conv + 1 :]]


def quantize_static_qdq(
    fp32: Path, out: Path, calibration: np.ndarray, reduce_range: bool, work: Path
) -> None:
    prepared = work / "prepared.onnx"
    if not prepared.exists():
        quant_pre_process(str(fp32), str(prepared))  # shape inference + folding the export's Pad subgraphs
    quantize_static(
        str(prepared),
        str(out),
        TrainingPhotos(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=head_nodes(prepared),
        # No CalibMaxIntermediateOutputs: in onnxruntime 1.32 MinMax drops every full chunk of
        # outputs without merging its range (collect_data clears before computing). MinMax keeps
        # only per-tensor minima and maxima, so all 256 views fit in memory anyway.
    )


def probabilities(model: Path, views: np.ndarray, batch_photos: int = 8) -> np.ndarray:
    """(N, K+1) TTA-averaged probabilities for the (2N, ...) views."""
    session = open_session(model, SessionSettings(intra=2, spinning=False))
    rows = []
    for start in range(0, len(views), 2 * batch_photos):
        out = session.run(["probabilities"], {"pixels": views[start : start + 2 * batch_photos]})[0]
        rows.append(out.reshape(-1, 2, out.shape[1]).mean(axis=1))
    return np.concatenate(rows)


def metrics(probs: np.ndarray, targets: np.ndarray, n_labels: int, threshold: float) -> dict[str, float]:
    """The evaluate.evaluate figures that the ship rule looks at."""
    decided = abstain_decisions(probs, n_labels, threshold)
    top = probs[:, :n_labels].argmax(axis=1)
    confidence = probs[np.arange(len(top)), top]
    inside = targets < n_labels
    ece, _ = expected_calibration_error(confidence[inside], top[inside] == targets[inside])
    return {
        "top1": float((top[inside] == targets[inside]).mean()),
        "with_abstention": float((decided[inside] == targets[inside]).mean()),
        "coverage": float((decided[inside] >= 0).mean()),
        "other_abstained": float((decided[~inside] == -1).mean()) if (~inside).any() else float("nan"),
        "ece": float(ece),
        "mean_confidence": float(confidence[inside].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--calibration", type=int, default=128, help="training photos to calibrate on")
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
        recognizer = Recognizer.load(model_dir)
        size, n_labels, threshold = recognizer.image_size, len(recognizer.labels), recognizer.threshold
        recorded = recognizer.metadata.get("metrics", {})
        print(f"model {args.model} v{recognizer.version}, input {size} px, threshold {threshold}")

        dataset = Dataset.open(dataset_dir, config)
        train = sorted(select_records(model_dir, dataset, "train"), key=lambda r: r.sha256)
        step = max(1, len(train) // args.calibration)
        calibration_paths = [dataset.abspath(r) for r in train[::step][: args.calibration]]
        calibration = both_views(calibration_paths, size, config)
        held_out = [
            r
            for r in select_records(model_dir, dataset, "val")
            if r.label in recognizer.labels or r.label == ABSTAIN_LABEL
        ]
        index = {label: i for i, label in enumerate(recognizer.labels)}
        targets = np.array([index.get(r.label, n_labels) for r in held_out])
        held_out_views = both_views([dataset.abspath(r) for r in held_out], size, config)
        print(
            f"calibration: {len(calibration_paths)} training photos ({len(calibration)} views); "
            f"held out: {len(held_out)} photos ({int((targets < n_labels).sum())} in-domain)"
        )

        fp32 = model_dir / "model.onnx"
        variants: dict[str, Path] = {"fp32": fp32}
        half = tmp / "fp16.onnx"
        onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(half))
        variants["fp16 weights"] = half
        dynamic = tmp / "int8-dynamic.onnx"
        quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QUInt8)
        variants["int8 dynamic"] = dynamic
        for name, reduce_range in (
            ("int8 static QDQ per-channel", False),
            ("int8 static QDQ per-channel 7-bit", True),
        ):
            path = tmp / (name.replace(" ", "-") + ".onnx")
            quantize_static_qdq(fp32, path, calibration, reduce_range, tmp)
            variants[name] = path

        results = {name: probabilities(path, held_out_views) for name, path in variants.items()}
        reference = metrics(results["fp32"], targets, n_labels, threshold)
        if recorded.get("accuracy") is not None:
            print(
                f"fp32 cross-check against the model's recorded metrics: top-1 {reference['top1']:.3f} vs "
                f"{recorded['accuracy']:.3f}, other abstained {reference['other_abstained']:.3f} vs "
                f"{recorded.get('other_abstained', float('nan')):.3f}, ECE {reference['ece']:.3f} vs {recorded.get('ece', float('nan')):.3f}"
            )
        fp32_decided = abstain_decisions(results["fp32"], n_labels, threshold)

        rng = np.random.default_rng(0)
        feeds = {b: rng.uniform(-1, 1, (2 * b, 3, size, size)).astype(np.float32) for b in (1, 2)}
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
                print_table(f"speed, model alone, TTA, batch {b} [{s.label}]", subset, next(iter(subset)))
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

        print(
            f"\naccuracy on the held-out split, and speed (median ratio to fp32 over every round)   ({load_average()})"
        )
        print(
            f"{'variant':34s} {'MB':>5s} {'speed':>6s} {'top-1':>6s} {'w/ abst.':>8s} {'coverage':>8s} "
            f"{'other abst.':>11s} {'ECE':>6s} {'mean conf':>9s} {'decision != fp32':>16s} {'max |dp|':>8s}  verdict"
        )
        for name, path in variants.items():
            m = metrics(results[name], targets, n_labels, threshold)
            changed = float((abstain_decisions(results[name], n_labels, threshold) != fp32_decided).mean())
            delta = float(np.abs(results[name] - results["fp32"]).max())
            keeps = all(
                abs(m[k] - reference[k]) <= SHIP_TOLERANCE for k in ("top1", "other_abstained", "ece")
            )
            verdict = (
                "reference"
                if name == "fp32"
                else ("SHIP" if keeps and speedups[name] >= SHIP_SPEEDUP else "no: ")
                + ("" if speedups[name] >= SHIP_SPEEDUP else f"{speedups[name]:.2f}x < {SHIP_SPEEDUP}x ")
                + ("" if keeps else "metrics moved > 1 point")
            )
            print(
                f"{name:34s} {path.stat().st_size / 1e6:5.1f} {speedups[name]:5.2f}x {m['top1']:6.3f} "
                f"{m['with_abstention']:8.3f} {m['coverage']:8.3f} {m['other_abstained']:11.3f} {m['ece']:6.3f} "
                f"{m['mean_confidence']:9.3f} {changed:16.3f} {delta:8.4f}  {verdict}"
            )
        print(f"end: {load_average()}")


if __name__ == "__main__":
    main()
