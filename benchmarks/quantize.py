"""Do fp16 weights or int8 quantisation of the shipped model keep its accuracy? Size, latency, metrics.

    .venv/bin/python benchmarks/quantize.py

Writes an fp16 copy of ``model.onnx`` (onnxruntime's float16 converter, inputs and outputs kept
fp32) and an int8 one (dynamic quantisation) into temporary model directories and evaluates all
three on the model's recorded held-out split of ../shared/data.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from _common import percentiles, shared_dataset
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import convert_float_to_float16
from PIL import Image

from ethnic_group_recognizer import Recognizer
from ethnic_group_recognizer.config import DEFAULT_MODEL_DIR
from ethnic_group_recognizer.evaluate import evaluate


def one_image_ms(directory: Path) -> float:
    recognizer = Recognizer.load(directory)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    samples = []
    for i in range(60):
        start = time.perf_counter()
        recognizer.predict_images([image])
        if i >= 10:
            samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)["p50"]


def main() -> None:
    dataset = shared_dataset()
    with tempfile.TemporaryDirectory() as tmp:
        quantized = Path(tmp) / "int8"
        shutil.copytree(DEFAULT_MODEL_DIR, quantized)
        quantize_dynamic(
            DEFAULT_MODEL_DIR / "model.onnx", quantized / "model.onnx", weight_type=QuantType.QUInt8
        )
        half = Path(tmp) / "fp16"
        shutil.copytree(DEFAULT_MODEL_DIR, half)
        model = convert_float_to_float16(onnx.load(DEFAULT_MODEL_DIR / "model.onnx"), keep_io_types=True)
        onnx.save(model, half / "model.onnx")
        for name, directory in (("fp32", DEFAULT_MODEL_DIR), ("fp16", half), ("int8 dynamic", quantized)):
            metrics = evaluate(directory, dataset, Path(tmp) / f"report-{name}", split="val")
            size = (directory / "model.onnx").stat().st_size / 1e6
            print(
                f"{name:13s} size {size:5.1f} MB  one image p50 {one_image_ms(directory):6.1f} ms  "
                f"accuracy {metrics['accuracy']:.3f}  other abstained {metrics['other_abstained']:.3f}  "
                f"with abstention {metrics['accuracy_with_abstention']:.3f}"
            )


if __name__ == "__main__":
    main()
