"""How close can batch prediction get to what the model itself allows? Numbers only, never a test.

    .venv/bin/python benchmarks/throughput.py [--rounds 5] [--quick] [--skip-pipeline]

On the shipped model (copied to a temp dir first, so a re-train underneath changes nothing):

1. the physical limit: multiply-accumulates per view, counted from the ONNX graph (Conv, Gemm,
   MatMul, from shapes inferred by ``onnx.shape_inference`` on the graph onnxruntime's basic
   optimiser leaves, where the export's computed ``Pad`` subgraphs are folded into the convs);
2. the model alone on pre-made input, TTA included (both views of a photo in ONE ``session.run``),
   at 1, 2, 4 and 8 photos a run, and each onnxruntime session option changed one at a time;
3. decode costs of one photo (640x480, and 4032x3024 at full size and in JPEG draft mode);
4. a pipeline prototype (here, not in ``src``): decode + resize + normalise in a small thread
   pool (Pillow and numpy release the GIL) overlapped with inference in the main thread, a window
   of a few photos in flight bounding memory, JPEG draft mode for big JPEGs; on 480 generated
   640x480 JPEGs and 24 generated 4032x3024 JPEGs (cached in the temp dir), as a ratio to the
   model-alone rate measured in the same round, with the peak RSS of each run.

The machine is shared: every figure is a median over ``--rounds`` interleaved rounds (configurations
in a shuffled order each round), ratios are taken within a round, the load average is printed, and
so is the CPU time the process used per photo (what a photo costs, whatever the load).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFilter, ImageOps

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "src" / "ethnic_group_recognizer" / "default_model"
CACHE = Path(tempfile.gettempdir()) / "egr-throughput-photos-v1"
LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# -- machine facts ---------------------------------------------------------------------------------
def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def cpu_facts() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line), "?")
    mhz = next((line.split(":", 1)[1].strip() for line in text.splitlines() if "cpu MHz" in line), "?")
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    present = [flag for flag in wanted if flag in flags]
    return f"CPU {model} @ {mhz} MHz, {os.cpu_count()} cores, ISA: {' '.join(present) or 'none of ' + str(wanted)}"


def peak_gflops() -> float | None:
    """Rough fp32 peak: cores x clock x 32 FLOP a cycle (two 8-wide FMA units, AVX2 without AVX-512)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    return (os.cpu_count() or 1) * max(mhz) * 32 / 1000 if mhz else None


def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads (finer-grained than ``os.times``)."""
    return time.process_time()


def peak_rss_reset() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so each run reports its own peak; Linux only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb(field_name: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory in MB; getrusage's peak where /proc is absent."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the model -------------------------------------------------------------------------------------
def model_macs(model_path: Path, workdir: Path) -> tuple[int, dict[str, int]]:
    """Multiply-accumulates of one view (batch 1), by op type, from inferred shapes.

    The export computes its "same" padding with ConstantOfShape/Concat/Slice subgraphs that shape
    inference cannot see through, so the count reads the graph onnxruntime's basic (exact,
    layout-preserving) optimiser writes, where those are folded into the convs' pads.
    """
    import onnx
    from onnx import shape_inference

    folded = workdir / "basic-optimised.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    options.log_severity_level = 3
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(folded))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        shapes[info.name] = [
            d.dim_value if d.HasField("dim_value") else 0 for d in info.type.tensor_type.shape.dim
        ]
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    by_op: dict[str, int] = {}
    for node in model.graph.node:
        out = shapes.get(node.output[0], [])
        if node.op_type == "Conv":
            weight = shapes[node.input[1]]  # [Cout, Cin/group, kh, kw]
            macs = int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            first = shapes[node.input[0]]
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            inner = first[-2] if trans_a else first[-1]
            macs = int(np.prod(out)) * inner
        else:
            continue
        if not out or 0 in out:
            raise RuntimeError(f"shape inference left {node.op_type} {node.name} without a shape")
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    return sum(by_op.values()), by_op


@dataclass(frozen=True)
class SessionSettings:
    """One onnxruntime configuration; ``label`` says what differs from the baseline."""

    level: str = "all"
    intra: int = 2
    inter: int = 1
    spinning: bool = True
    arena: bool = True
    parallel: bool = False

    @property
    def label(self) -> str:
        parts = [f"opt={self.level}", f"intra={self.intra}"]
        if self.parallel or self.inter != 1:
            parts.append(f"{'parallel' if self.parallel else 'sequential'} inter={self.inter}")
        parts.append(f"spin={int(self.spinning)}")
        if not self.arena:
            parts.append("arena=off")
        return " ".join(parts)


def open_session(model_path: Path, settings: SessionSettings) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[settings.level]
    options.intra_op_num_threads = settings.intra
    options.inter_op_num_threads = settings.inter
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if settings.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.enable_cpu_mem_arena = settings.arena
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if settings.spinning else "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


@dataclass
class Sample:
    """One timed measurement: photos per wall second and CPU seconds per photo."""

    photos_per_s: float
    cpu_ms_per_photo: float
    peak_mb: float = 0.0
    #: The model alone's photos/s measured just before and just after this sample (their mean):
    #: a ratio to it holds when the load on a shared machine changes from one second to the next.
    reference_per_s: float = 0.0


def timed(work: Callable[[], int], min_seconds: float, min_calls: int = 3) -> Sample:
    """Call ``work`` (returns photos done) until ``min_seconds`` and ``min_calls`` are both reached."""
    photos, calls = 0, 0
    wall, cpu = time.perf_counter(), cpu_seconds()
    while calls < min_calls or time.perf_counter() - wall < min_seconds:
        photos += work()
        calls += 1
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return Sample(photos / wall, 1000 * cpu / photos)


def model_alone(session: ort.InferenceSession, feed: np.ndarray, min_seconds: float) -> Sample:
    """Photos/s of the model on a pre-made (2 * photos, 3, S, S) batch, both TTA views in one run."""
    session.run(["probabilities"], {"pixels": feed})  # warm: arena, prepacked weights
    photos = feed.shape[0] // 2
    return timed(lambda: (session.run(["probabilities"], {"pixels": feed}), photos)[1], min_seconds)


# -- photos ----------------------------------------------------------------------------------------
def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A picture that compresses and decodes like a photo: smooth colour fields, shapes, fine grain."""
    low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    scale = width / 640
    for _ in range(int(rng.integers(12, 30))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(10, 200) * scale), int(rng.integers(10, 200) * scale)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.5 * scale))
    grain = rng.normal(0, 6, (height, width, 1)).astype(np.int16)
    return Image.fromarray(np.clip(np.asarray(image, np.int16) + grain, 0, 255).astype(np.uint8))


def generated_photos(count: int, width: int, height: int, quality: int = 90) -> list[Path]:
    """``count`` JPEGs of ``width`` x ``height``, made once and cached under the temp dir."""
    folder = CACHE / f"{width}x{height}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:04d}.jpg" for i in range(count)]
    rng = np.random.default_rng(width * 7 + height)
    for path in paths:
        if not path.exists():
            partial = path.with_suffix(".part")
            photo_like(rng, width, height).save(partial, format="JPEG", quality=quality)
            partial.rename(path)
    return paths


def decode_views(path: Path, size: int, draft_side: int | None) -> np.ndarray:
    """Both TTA views of one photo, (2, 3, S, S) float32, exactly as ``backbone.preprocess`` makes them.

    ``draft_side``: let libjpeg decode a big JPEG with DCT scaling (1/2, 1/4, 1/8) to no less than
    this many pixels a side; None decodes at full size.
    """
    with Image.open(path) as opened:
        if draft_side and opened.format == "JPEG":
            opened.draft("RGB", (draft_side, draft_side))
        upright = ImageOps.exif_transpose(opened)
        rgb = upright.convert("RGB")
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
    del rgb, upright
    chw = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)
    views = np.empty((2, 3, size, size), np.float32)
    np.subtract(chw, 127.0, out=views[0])
    views[0] /= 128.0
    views[1] = views[0][:, :, ::-1]  # the mirrored view: the same pixels, columns reversed
    return views


def check_decode_matches_product(path: Path, size: int) -> str:
    """The prototype's views equal the product's ``backbone.preprocess`` output (when importable)."""
    try:
        from ethnic_group_recognizer.backbone import preprocess
    except Exception as error:  # noqa: BLE001 - src is being refactored; say so and go on
        return f"not checked against backbone.preprocess ({type(error).__name__}: {error})"
    views = decode_views(path, size, None)
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    expected = np.stack([preprocess(rgb, size), preprocess(rgb, size, mirror=True)])
    difference = float(np.abs(views - expected).max())
    return f"prototype views vs backbone.preprocess: max abs difference {difference:g}"


# -- the pipeline prototype ------------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineSettings:
    batch: int = 2  # photos per session.run (2 views each)
    decode_threads: int = 1
    window: int = 6  # photos decoded or being decoded at once: the memory bound
    draft: float | None = 2.0  # draft to this multiple of the input side; None = full decode
    serial: bool = False  # decode a batch, then run it, in one thread (today's shape)
    session: SessionSettings = field(default_factory=SessionSettings)

    @property
    def label(self) -> str:
        draft = f"draft {self.draft:g}x" if self.draft else "full decode"
        if self.serial:
            return f"serial b={self.batch} {draft} [{self.session.label}]"
        return (
            f"b={self.batch} decode={self.decode_threads} window={self.window} {draft} [{self.session.label}]"
        )


def run_pipeline(
    session: ort.InferenceSession, paths: list[Path], settings: PipelineSettings, size: int
) -> np.ndarray:
    """Predict every photo; returns (N, K+1) TTA-averaged probabilities in input order."""
    draft_side = int(settings.draft * size) if settings.draft else None
    results: list[np.ndarray] = []

    def infer(views: list[np.ndarray]) -> None:
        probabilities = session.run(["probabilities"], {"pixels": np.concatenate(views)})[0]
        results.append(probabilities.reshape(len(views), 2, -1).mean(axis=1))

    if settings.serial:
        for start in range(0, len(paths), settings.batch):
            infer([decode_views(p, size, draft_side) for p in paths[start : start + settings.batch]])
        return np.concatenate(results)
    with ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode") as pool:
        queued = iter(paths)
        in_flight: deque = deque(
            pool.submit(decode_views, p, size, draft_side)
            for _, p in zip(range(settings.window), queued, strict=False)
        )
        ready: list[np.ndarray] = []
        while in_flight:
            ready.append(in_flight.popleft().result())
            following = next(queued, None)
            if following is not None:
                in_flight.append(pool.submit(decode_views, following, size, draft_side))
            if len(ready) == settings.batch or not in_flight:
                infer(ready)
                ready = []
    return np.concatenate(results)


# -- measurement rounds ----------------------------------------------------------------------------
def interleaved(
    measures: dict[str, Callable[[], Sample]], rounds: int, seed: int = 0
) -> dict[str, list[Sample]]:
    """Each measure once per round, in a shuffled order each round, so load drift hits all alike."""
    rng = random.Random(seed)
    samples: dict[str, list[Sample]] = {name: [] for name in measures}
    for _ in range(rounds):
        order = list(measures)
        rng.shuffle(order)
        for name in order:
            samples[name].append(measures[name]())
    return samples


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}" if len(values) > 1 else ""


def print_table(
    title: str,
    samples: dict[str, list[Sample]],
    reference: str,
    reference_samples: list[Sample] | None = None,
) -> None:
    """Median photos/s, range, CPU ms a photo and the median within-round ratio to ``reference``."""
    base = reference_samples or samples[reference]
    print(f"\n{title}   ({load_average()})")
    print(f"{'configuration':74s} {'photos/s':>9s} {'range':>11s} {'CPU ms/photo':>12s} {'ratio':>6s}")
    for name, runs in samples.items():
        ratio = median(
            s.photos_per_s / (s.reference_per_s or b.photos_per_s) for s, b in zip(runs, base, strict=True)
        )
        peak = f"  peak RSS {max(s.peak_mb for s in runs):.0f} MB" if runs[0].peak_mb else ""
        print(
            f"{name:74s} {median(s.photos_per_s for s in runs):9.1f} {spread([s.photos_per_s for s in runs]):>11s} "
            f"{median(s.cpu_ms_per_photo for s in runs):12.1f} {ratio:6.2f}{peak}"
        )
    paired = any(s.reference_per_s for runs in samples.values() for s in runs)
    how = (
        "to the mean of the model alone just before and just after each sample"
        if paired
        else "within each round"
    )
    print(f"(ratio: median over rounds, {how}: {reference})")


class Sessions:
    """One open session per configuration, closed between sections so RSS figures stay honest."""

    def __init__(self, model_path: Path):
        self.model_path = model_path
        self.open: dict[SessionSettings, ort.InferenceSession] = {}

    def __call__(self, settings: SessionSettings) -> ort.InferenceSession:
        if settings not in self.open:
            self.open[settings] = open_session(self.model_path, settings)
        return self.open[settings]

    def close_all_but(self, keep: SessionSettings) -> None:
        self.open = {k: v for k, v in self.open.items() if k == keep}
        gc.collect()


def sweep_model_alone(
    sessions: Sessions, feeds: dict[int, np.ndarray], rounds: int, seconds: float, quick: bool
) -> tuple[int, SessionSettings, float]:
    """Batch sizes x thread settings, then the other options at the best batch; returns the best."""
    baseline = SessionSettings()
    thread_settings = [baseline, replace(baseline, spinning=False), replace(baseline, intra=1)]
    batches = (1, 2, 4) if quick else (1, 2, 4, 8)
    grid = {(b, s): f"batch {b} ({2 * b} views) [{s.label}]" for s in thread_settings for b in batches}
    measures = {
        name: (lambda b=b, s=s: model_alone(sessions(s), feeds[b], seconds)) for (b, s), name in grid.items()
    }
    samples = interleaved(measures, rounds)
    print_table(
        "model alone, TTA (2 views a photo in one run), batch size x threads", samples, grid[(1, baseline)]
    )
    best_batch, best = max(grid, key=lambda key: median(s.photos_per_s for s in samples[grid[key]]))
    if not quick:
        variants = [
            best,
            replace(best, level="basic"),
            replace(best, level="extended"),
            replace(best, arena=False),
            replace(best, spinning=not best.spinning),
            replace(best, parallel=True, inter=2, intra=1),
            replace(best, parallel=True, inter=2, intra=2),
        ]
        variants = list(dict.fromkeys(variants))
        names = {v: f"batch {best_batch} [{v.label}]" for v in variants}
        measures = {
            name: (lambda v=v: model_alone(sessions(v), feeds[best_batch], seconds))
            for v, name in names.items()
        }
        samples_options = interleaved(measures, rounds, seed=1)
        print_table("model alone, TTA, other session options at the best batch", samples_options, names[best])
        ratios = {
            v: median(
                s.photos_per_s / r.photos_per_s
                for s, r in zip(samples_options[names[v]], samples_options[names[best]], strict=True)
            )
            for v in variants
        }
        # Adopt another option only when it is clearly faster (noise on a shared machine is +-10 %),
        # and never the arena off: it multiplies peak RSS (see the memory table).
        adoptable = [v for v in variants if v.arena and ratios[v] >= 1.1]
        if adoptable:
            best = max(adoptable, key=ratios.__getitem__)
        rate = median(s.photos_per_s for s in samples_options[names[best]])
    else:
        rate = median(s.photos_per_s for s in samples[grid[(best_batch, best)]])
    return best_batch, best, rate


def decode_costs(small: list[Path], large: list[Path], size: int, rounds: int) -> None:
    """One thread, no inference: the prototype's decode at each draft scale, and the product's loader."""

    def prototype(paths: list[Path], draft: float | None) -> Callable[[], Sample]:
        side = int(draft * size) if draft else None
        return lambda: timed(lambda: sum(1 for p in paths if decode_views(p, size, side) is not None), 0.0, 1)

    measures = {
        "640x480, prototype (one resize, mirrored view by array flip)": prototype(small[:40], None),
        "4032x3024, prototype, full decode": prototype(large[:4], None),
        "4032x3024, prototype, draft to >= 2x the input side (1/4 scale here)": prototype(large[:4], 2.0),
        "4032x3024, prototype, draft to >= 1x the input side (1/8 scale here)": prototype(large[:4], 1.0),
    }
    for target in (None, size):
        for name, paths in (("640x480", small[:40]), ("4032x3024", large[:4])):
            measures[f"{name}, product load_image(target_side={target}) + 2x preprocess"] = product_decode(
                paths, size, target
            )
    samples = interleaved({k: v for k, v in measures.items() if v is not None}, rounds, seed=3)
    print(f"\ndecode + resize + both views, one thread, no inference   ({load_average()})")
    print(f"{'what':74s} {'ms a photo':>10s} {'CPU ms a photo':>15s}")
    for name, runs in samples.items():
        wall = median(1000 / s.photos_per_s for s in runs)
        print(f"{name:74s} {wall:10.1f} {median(s.cpu_ms_per_photo for s in runs):15.1f}")


def product_decode(paths: list[Path], size: int, target: int | None) -> Callable[[], Sample] | None:
    """The product's safe loader (its checks included) and ``backbone.preprocess`` once per view."""
    try:
        from ethnic_group_recognizer.backbone import preprocess
        from ethnic_group_recognizer.images import load_image

        load_image(paths[0], target_side=target)
    except Exception as error:  # noqa: BLE001 - src is being refactored; say so and go on
        print(f"product loader not measured ({type(error).__name__}: {error})")
        return None

    def one(path: Path) -> np.ndarray:
        image = load_image(path, target_side=target)
        return np.stack([preprocess(image, size), preprocess(image, size, mirror=True)])

    return lambda: timed(lambda: sum(1 for p in paths if one(p) is not None), 0.0, 1)


def memory_child(spec: str) -> None:
    """Run one pipeline in this fresh process (one session) and print its peak RSS as JSON."""
    request = json.loads(spec)
    settings = PipelineSettings(
        batch=request["batch"],
        decode_threads=request["decode_threads"],
        window=request["window"],
        draft=request["draft"],
        serial=request["serial"],
        session=SessionSettings(**request["session"]),
    )
    paths = [Path(p) for p in request["paths"]]
    session = open_session(Path(request["model"]), settings.session)
    before = rss_mb("VmRSS")
    run_pipeline(session, paths, settings, request["size"])
    print(json.dumps({"before_mb": before, "peak_mb": rss_mb("VmHWM")}))


def memory_table(
    model_path: Path, paths: list[Path], size: int, best_batch: int, best: SessionSettings
) -> None:
    """Peak RSS of a whole process doing one folder: only one session open, nothing else resident."""
    import subprocess
    import sys

    spin_off = replace(best, spinning=False)
    configs = [
        PipelineSettings(batch=32, serial=True, draft=None, session=best),
        PipelineSettings(batch=8, serial=True, draft=None, session=best),
        PipelineSettings(batch=best_batch, decode_threads=2, window=6, draft=None, session=spin_off),
        PipelineSettings(batch=best_batch, decode_threads=1, window=6, draft=2.0, session=spin_off),
        PipelineSettings(batch=best_batch, decode_threads=2, window=6, draft=2.0, session=spin_off),
        PipelineSettings(
            batch=best_batch,
            decode_threads=2,
            window=6,
            draft=2.0,
            session=replace(spin_off, arena=not spin_off.arena),
        ),
        PipelineSettings(batch=8, decode_threads=2, window=12, draft=2.0, session=spin_off),
    ]
    print(f"\npeak RSS of a fresh process predicting {len(paths)} photos 4032x3024 (one session)")
    for config in configs:
        request = {
            "batch": config.batch,
            "decode_threads": config.decode_threads,
            "window": config.window,
            "draft": config.draft,
            "serial": config.serial,
            "session": config.session.__dict__,
            "paths": [str(p) for p in paths],
            "model": str(model_path),
            "size": size,
        }
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", json.dumps(request)],
            capture_output=True,
            text=True,
            check=True,
        )
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"  {config.label:72s} peak {figures['peak_mb']:6.0f} MB "
            f"(session loaded: {figures['before_mb']:.0f} MB)"
        )


def sweep_pipelines(
    sessions: Sessions,
    feeds: dict[int, np.ndarray],
    folders: dict[str, list[Path]],
    best_batch: int,
    best: SessionSettings,
    args: argparse.Namespace,
    size: int,
) -> dict[str, float]:
    """Pipeline variants beside the best model-alone configuration, folder by folder."""
    spin_off = replace(best, spinning=False)
    one = replace(best, intra=1, spinning=False)
    two = replace(best, intra=2, spinning=False)
    b = best_batch
    plans = {
        "640x480": [
            PipelineSettings(batch=8, serial=True, draft=None, session=best),
            PipelineSettings(batch=b, serial=True, session=best),
            PipelineSettings(batch=b, decode_threads=1, session=best),
            PipelineSettings(batch=b, decode_threads=1, session=spin_off),
            PipelineSettings(batch=b, decode_threads=1, session=two),
            PipelineSettings(batch=b, decode_threads=2, session=two),
            PipelineSettings(batch=b, decode_threads=1, session=one),
            PipelineSettings(batch=b, decode_threads=2, session=one),
            PipelineSettings(batch=1, decode_threads=1, session=spin_off),
            PipelineSettings(batch=2, decode_threads=1, session=spin_off),
            PipelineSettings(batch=4, decode_threads=1, session=spin_off),
            PipelineSettings(batch=b, decode_threads=1, window=3, session=spin_off),
            PipelineSettings(batch=b, decode_threads=1, window=12, session=spin_off),
        ],
        "4032x3024": [
            PipelineSettings(batch=8, serial=True, draft=None, session=best),
            PipelineSettings(batch=b, decode_threads=1, draft=None, session=spin_off),
            PipelineSettings(batch=b, decode_threads=1, draft=2.0, session=spin_off),
            PipelineSettings(batch=b, decode_threads=2, draft=2.0, session=spin_off),
            PipelineSettings(batch=b, decode_threads=2, draft=2.0, session=one),
            PipelineSettings(batch=b, decode_threads=1, draft=1.0, session=spin_off),
            PipelineSettings(batch=b, decode_threads=2, draft=1.0, session=spin_off),
        ],
    }
    best_ratio: dict[str, float] = {}
    for folder, paths in folders.items():
        configs = list(dict.fromkeys(plans[folder]))
        if args.quick:
            configs = configs[:6]
        sessions.close_all_but(best)
        reference = f"model alone b={best_batch} [{best.label}]"

        def alone() -> Sample:
            return model_alone(sessions(best), feeds[best_batch], args.seconds)

        measures: dict[str, Callable[[], Sample]] = {reference: alone}
        chunk = min(args.chunk, len(paths)) if folder == "640x480" else len(paths)
        for config in configs:
            sessions(config.session)
            measures[f"pipeline {config.label}"] = pipeline_measure(
                sessions, config, paths, chunk, size, alone
            )
        rss_before = rss_mb("VmRSS")
        samples = interleaved(measures, args.rounds, seed=2)
        print_table(f"pipeline prototype, {len(paths)} photos {folder}, {chunk} a sample", samples, reference)
        print(
            f"(peak RSS here: this process, every session of the table open ({rss_before:.0f} MB before it ran))"
        )
        ratios = {
            name: median(s.photos_per_s / s.reference_per_s for s in runs)
            for name, runs in samples.items()
            if name != reference
        }
        winner = max(ratios, key=ratios.__getitem__)
        print(
            f"highest ratio for {folder} (the maximum of noisy medians: optimistic): {winner} at {ratios[winner]:.2f}"
        )
        # The targets line reads one fixed configuration, the engine's candidate, not the maximum.
        candidate = (
            f"pipeline {PipelineSettings(batch=b, decode_threads=1, draft=2.0, session=spin_off).label}"
        )
        best_ratio[folder] = ratios[candidate]
        cpu_alone = median(s.cpu_ms_per_photo for s in samples[reference])
        cpu_candidate = median(s.cpu_ms_per_photo for s in samples[candidate])
        print(
            f"candidate for {folder}: {candidate} at {ratios[candidate]:.2f} measured; when CPU-bound it can "
            f"reach at most model CPU / pipeline CPU = {cpu_alone:.1f} / {cpu_candidate:.1f} ms = "
            f"{cpu_alone / cpu_candidate:.2f}"
        )
    return best_ratio


def pipeline_measure(
    sessions: Sessions,
    settings: PipelineSettings,
    paths: list[Path],
    chunk: int,
    size: int,
    alone: Callable[[], Sample],
) -> Callable[[], Sample]:
    """One sample: the model alone, the pipeline over the next ``chunk`` photos, the model alone again."""
    offset = [0]

    def measure() -> Sample:
        session = sessions(settings.session)
        start = offset[0] % len(paths)
        part = (paths[start:] + paths[:start])[:chunk]
        offset[0] += chunk
        run_pipeline(session, part[: max(2 * settings.batch, 4)], settings, size)  # warm
        before = alone()
        peak_rss_reset()
        sample = timed(lambda: len(run_pipeline(session, part, settings, size)), 0.0, min_calls=1)
        sample.peak_mb = rss_mb("VmHWM")
        after = alone()
        sample.reference_per_s = (before.photos_per_s + after.photos_per_s) / 2
        return sample

    return measure


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=SHIPPED, help="model directory (default: the shipped one)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--seconds", type=float, default=1.5, help="minimum seconds of one model-alone sample"
    )
    parser.add_argument("--small", type=int, default=480, help="number of 640x480 photos")
    parser.add_argument("--large", type=int, default=24, help="number of 4032x3024 photos")
    parser.add_argument(
        "--chunk", type=int, default=48, help="640x480 photos a pipeline sample (rotating through the folder)"
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds, shorter samples, fewer variants")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    if args.quick:
        args.rounds, args.seconds = min(args.rounds, 3), min(args.seconds, 0.8)

    metadata = json.loads((args.model / "metadata.json").read_text(encoding="utf-8"))
    size = int(metadata["preprocessing"]["image_size"])
    tta = bool(metadata.get("tta", True))
    print(cpu_facts())
    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}, Pillow {Image.__version__}")
    print(f"model {args.model} v{metadata.get('version')}: input {size} px, TTA {'on' if tta else 'off'}")
    print(f"start: {load_average()}")
    if not tta:
        print("note: this model has TTA off; every figure below still runs 2 views a photo")
    with tempfile.TemporaryDirectory(prefix="egr-throughput-") as tmp:
        model_path = Path(tmp) / "model.onnx"
        shutil.copyfile(args.model / "model.onnx", model_path)  # a snapshot: a re-train may rewrite it
        macs, by_op = model_macs(model_path, Path(tmp))
        gflop_per_view = 2 * macs / 1e9
        detail = ", ".join(f"{op} {v / 1e9:.3f}" for op, v in by_op.items())
        print(
            f"physical: {macs / 1e9:.3f} GMAC = {gflop_per_view:.2f} GFLOP a view at {size} px ({detail} GMAC)"
        )

        rng = np.random.default_rng(0)
        feeds = {b: rng.uniform(-1, 1, (2 * b, 3, size, size)).astype(np.float32) for b in (1, 2, 4, 8)}
        sessions = Sessions(model_path)
        best_batch, best, rate = sweep_model_alone(sessions, feeds, args.rounds, args.seconds, args.quick)
        print(
            f"\nphysical: best model alone: batch {best_batch} [{best.label}] {rate:.1f} photos/s = "
            f"{2 * rate:.1f} views/s = {2 * rate * gflop_per_view:.1f} GFLOP/s reached ({load_average()})"
        )
        peak = peak_gflops()
        if peak:
            print(
                f"physical: this CPU's fp32 peak is about {peak:.0f} GFLOP/s (cores x clock x 32: two 8-wide "
                f"AVX2 FMAs a cycle); reached {2 * rate * gflop_per_view / peak:.0%} of it, i.e. a view "
                f"cannot take less than {1000 * gflop_per_view / peak:.1f} ms on all cores"
            )
        if args.skip_pipeline:
            return
        small = generated_photos(args.small, 640, 480)
        large = generated_photos(args.large, 4032, 3024)
        for name, paths in (("640x480", small), ("4032x3024", large)):
            megabytes = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
            print(f"photos: {len(paths)} x {name}, {megabytes:.2f} MB each, cached in {paths[0].parent}")
        print(check_decode_matches_product(small[0], size))
        decode_costs(small, large, size, args.rounds)
        memory_table(model_path, large, size, best_batch, best)
        ratios = sweep_pipelines(
            sessions, feeds, {"640x480": small, "4032x3024": large}, best_batch, best, args, size
        )
        print(
            f"\ntargets (candidate configuration): 640x480 pipeline / model alone = {ratios['640x480']:.2f} (target >= 0.85); "
            f"4032x3024 / 640x480 = {ratios['4032x3024'] / ratios['640x480']:.2f} (target >= 0.5)"
        )
        print(f"end: {load_average()}")


if __name__ == "__main__":
    main()
