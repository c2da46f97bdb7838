"""The 'not a photograph' check: drawings, prints and stamps.

Pixel tests run on every usable image (a stamp's perforated edge, a flat-colour graphic); with
embeddings on, the backbone's own ImageNet classifier adds a drawing score ('comic book'). The
pixel part needs no model, so this check runs with ``--no-embeddings`` too and says which part
did not run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ethnic_group_recognizer.clean.checks.registry import register
from ethnic_group_recognizer.clean.context import CleanContext, CleanOptions
from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.dataset import STATUS_OK, Record

#: ImageNet-1k's "comic book": the class the backbone's own classifier gives drawn pictures.
DRAWING_CLASS = 917
#: Pictures are measured at this size (long side): resolution-independent, and fast to decode.
PICTURE_SIDE = 384
_BORDER_TOLERANCE = 24  # a border pixel this close (0-255, every channel) to its median is "plain"
_FLAT_RANGE = 3  # a pixel whose 3x3 neighbourhood spans at most this much brightness is flat
_PERFORATION_PEAK = 0.5  # share of a border row's variation in one period, per side


@dataclass
class PictureStats:
    """Pixel facts that tell a drawing, print or stamp from a photograph (see :func:`picture_stats`)."""

    plain_border: float  # share of the outermost pixels that have one colour (backdrop, paper)
    subject: float  # share of pixels not in the backdrop (the flat areas that reach the border)
    flat: float  # share of the subject in flat areas: fills, not texture or camera noise
    colours: float  # share of the subject covered by its 16 commonest colours (5 bits a channel)
    perforation: tuple[int, float] | None = None  # (sides, tooth spacing in px) of a stamp's edge


def _perforation(background: np.ndarray) -> tuple[int, float] | None:
    """(sides, tooth spacing in px) when the edge of ``background`` (True: the colour round the
    picture) is toothed evenly, like a stamp's; None otherwise.

    A stamp's perforation, seen against a backdrop, makes the rows just inside the edge
    alternate between backdrop and paper at one spacing; the Fourier spectrum of such a row has
    one strong peak. At least three sides must show it, with the same spacing (within 15 %).
    """
    spacings = []
    for mask in (background, background[::-1], background.T, background.T[::-1]):
        depth, length = mask.shape
        rows = mask[: max(4, depth // 8), int(length * 0.1) : int(length * 0.9)]  # corners round off
        frequencies = np.fft.rfftfreq(rows.shape[1])
        band = (frequencies >= 1 / 40) & (frequencies <= 1 / 5)  # a tooth every 5 to 40 px
        best_peak, best_spacing = 0.0, 0.0
        for row in rows:
            share = float(row.mean())
            if not band.any() or not 0.2 <= share <= 0.8:
                continue
            power = np.abs(np.fft.rfft(row - share)) ** 2
            k = int(np.argmax(np.where(band, power, 0.0)))
            peak = float(power[max(k - 1, 1) : k + 2].sum() / max(power[1:].sum(), 1e-12))
            if peak > best_peak:
                best_peak, best_spacing = peak, float(1 / frequencies[k])
        if best_peak >= _PERFORATION_PEAK:
            spacings.append(best_spacing)
    if len(spacings) < 3:
        return None
    middle = float(np.median(spacings))
    agree = [s for s in spacings if abs(s - middle) <= 0.15 * middle]
    return (len(agree), middle) if len(agree) >= 3 else None


def _spread3(pixels: np.ndarray) -> np.ndarray:
    """Per pixel, the largest max - min over its 3x3 neighbourhood in any channel (separable)."""
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    high = np.maximum(np.maximum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    high = np.maximum(np.maximum(high[:-2], high[1:-1]), high[2:])
    low = np.minimum(np.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    low = np.minimum(np.minimum(low[:-2], low[1:-1]), low[2:])
    return (high - low).max(axis=2)


def picture_stats(image: Image.Image) -> PictureStats:
    """Measure a picture (any size; it is scaled to :data:`PICTURE_SIDE` first).

    The backdrop (flat areas connected to the border: a studio wall, the sky, the paper) is
    left out, so that flatness and colours describe the subject: a drawing's fills are flat and
    few-coloured, a photographed subject has texture, shading and noise.
    """
    from scipy import ndimage

    image = image.convert("RGB")
    if max(image.size) > PICTURE_SIDE:
        image = image.copy()
        image.thumbnail((PICTURE_SIDE, PICTURE_SIDE), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.int16)
    frame = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    colour = np.median(frame, axis=0)
    off_border = np.abs(frame - colour).max(axis=1)
    plain = float((off_border <= _BORDER_TOLERANCE).mean())
    # Brightness only: JPEG blurs colour (chroma subsampling), which would make fills look textured.
    flat_mask = _spread3(np.asarray(image.convert("L"), np.int16)[..., None]) <= _FLAT_RANGE
    regions, _ = ndimage.label(flat_mask)
    touching = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    subject = ~np.isin(regions, touching[touching > 0])
    flat, colours = 0.0, 0.0
    if subject.sum() >= 0.05 * subject.size:  # an almost empty page says nothing
        flat = float(flat_mask[subject].mean())
        quantised = (pixels[..., 0] >> 3) * 1024 + (pixels[..., 1] >> 3) * 32 + (pixels[..., 2] >> 3)
        counts = np.bincount(quantised[subject], minlength=32768)
        colours = float(np.sort(counts)[-16:].sum() / subject.sum())
    perforation = None
    if (off_border <= 40).mean() >= 0.9:  # a backdrop all round: look for a toothed edge
        perforation = _perforation(np.abs(pixels - colour).max(axis=2) <= 60)
    return PictureStats(plain, float(subject.mean()), flat, colours, perforation)


def not_photo_evidence(
    stats: PictureStats, drawing: float | None = None, options: CleanOptions | None = None
) -> list[tuple[float, str]]:
    """Each reason to think a picture is no photograph, as (score 0-1, text a person can read).

    ``drawing`` is the backbone's ImageNet probability of 'comic book' (None: not known). It
    counts more when the picture sits on a plain border (paper, a blank backdrop): the bar is
    ``drawing_probability`` for a busy border, ``plain_border_decades`` powers of ten lower for
    a perfectly plain one.
    """
    options = options or CleanOptions()
    found: list[tuple[float, str]] = []
    if stats.perforation is not None:
        sides, spacing = stats.perforation
        found.append(
            (0.8, f"perforated edge like a postage stamp ({sides} sides, a tooth every {spacing:.0f} px)")
        )
    if stats.flat >= options.graphic_flat and stats.colours >= options.graphic_colours:
        found.append(
            (
                0.6,
                f"flat-colour graphic ({stats.flat:.0%} of the subject in flat areas, "
                f"16 colours cover {stats.colours:.0%})",
            )
        )
    if drawing is not None and drawing > 0:
        margin = (
            np.log10(drawing / options.drawing_probability)
            + options.plain_border_decades * stats.plain_border
        )
        if margin >= 0:
            plain = f", plain border {stats.plain_border:.0%}" if stats.plain_border >= 0.5 else ""
            found.append(
                (
                    0.5 + 0.3 * min(float(margin), 1.0),
                    f"the backbone sees a drawing ('comic book' {drawing:.1%}{plain})",
                )
            )
    return found


def _imagenet_head(backbone: str, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's own ImageNet-1k classifier (weight, bias), cached beside its ONNX export.

    It reads the mean-pooled features at the ImageNet input size (see :func:`_classifier_embedder`),
    so class probabilities come from cached embeddings without running the network again. torch
    reads the weights once.
    """
    from ethnic_group_recognizer import backbone as backbones

    spec = backbones.spec_for(backbone)
    version = backbones.weights_version(spec)
    path = config.cache_dir / "backbones" / f"{spec.name}-{version}-imagenet-head.npz"
    if not path.exists():
        import torch

        weights = getattr(importlib.import_module(spec.weights_package), spec.weights_class)
        state = torch.load(weights.get_model_file_path(), map_location="cpu", weights_only=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            weight=state["_fc.weight"].numpy().astype(np.float32),
            bias=state["_fc.bias"].numpy().astype(np.float32),
        )
        os.replace(tmp, path)
    with np.load(path) as data:
        return data["weight"], data["bias"]


def _classifier_embedder(embedder):
    """An embedder of the features the backbone's ImageNet classifier reads: mean-pooled, at the
    ImageNet input size. ``embedder`` itself when its features are those (or when it does not
    say: a custom embedder is taken at its word), else a sibling with that size and pooling."""
    spec = getattr(embedder, "spec", None)
    if spec is None:
        return embedder
    native = getattr(spec, "native_size", spec.image_size)
    if getattr(spec, "pooling", "mean") == "mean" and spec.image_size == native:
        return embedder
    from dataclasses import replace

    from ethnic_group_recognizer.backbone import Embedder

    config = replace(embedder.config, feature_size=native, feature_pooling="mean")
    return Embedder(embedder.backbone, config)


def _drawing_probabilities(
    embedder,
    paths: Sequence[Path],
    hashes: Sequence[str],
    vectors: np.ndarray,
    config: Config,
    report: dict,
    show_progress: bool,
) -> np.ndarray | None:
    """P('comic book') of each image under the backbone's ImageNet classifier (None: unavailable).

    ``vectors`` are ``embedder``'s embeddings of ``paths``; they are used as they are when they
    are the classifier's input, else the images are embedded once more (and cached) that way.
    """
    try:
        weight, bias = _imagenet_head(getattr(embedder, "backbone", config.backbone), config)
        reader = _classifier_embedder(embedder)
        if reader is not embedder:
            vectors = reader.embed_files(paths, hashes, show_progress=show_progress)
    except (
        ImportError,
        importlib.metadata.PackageNotFoundError,
        KeyError,
        OSError,
        ValueError,
        TypeError,
        RuntimeError,
    ) as error:
        report["not_photo"] = (
            f"the drawing score needs the backbone's ImageNet classifier ('train' extra): {error}; "
            "only the pixel tests ran"
        )
        return None
    if vectors.shape[1] != weight.shape[1]:
        report["not_photo"] = "the embeddings do not fit the backbone's classifier; only the pixel tests ran"
        return None
    from ethnic_group_recognizer.calibrate import softmax

    return softmax(vectors.astype(np.float64) @ weight.T + bias)[:, DRAWING_CLASS]


def _picture(path: Path, config: Config) -> Image.Image:
    """The picture, decoded at about :data:`PICTURE_SIDE` (JPEG draft mode: a fraction of the work)."""
    from ethnic_group_recognizer.images import load_image

    with Image.open(path) as image:
        image.draft("RGB", (2 * PICTURE_SIDE, 2 * PICTURE_SIDE))
        return load_image(image, config)


def _drawing_scores(context: CleanContext) -> dict[str, float]:
    """P('comic book') of each representative image by sha256 (empty: no embeddings or no classifier)."""
    embedded = context.embedded()
    if embedded is None:
        return {}
    n = len(embedded.representatives)
    probabilities = _drawing_probabilities(
        embedded.embedder,
        embedded.paths[:n],
        embedded.hashes[:n],
        embedded.vectors[:n],
        context.dataset.config,
        context.skipped,
        context.show_progress,
    )
    if probabilities is None:
        return {}
    return {r.sha256: float(p) for r, p in zip(embedded.representatives, probabilities, strict=True)}


@register("not_photo", option="not_photo", summary="a drawing, print or stamp rather than a photograph")
def not_photo(context: CleanContext) -> None:
    """Pixel tests on every usable image, plus the drawing score when there are embeddings."""
    from ethnic_group_recognizer.images import ImageError
    from ethnic_group_recognizer.progress import progress

    if context.options.embeddings:
        drawing = _drawing_scores(context)
    else:
        drawing = {}
        context.skip("not_photo", "embeddings turned off: only the pixel tests ran, not the drawing score")
    by_content: dict[str, list[Record]] = defaultdict(list)
    for record in context.records:
        if record.status == STATUS_OK:
            by_content[record.sha256].append(record)
    dataset = context.dataset
    for sha256, copies in progress(
        list(by_content.items()), "Looking for drawings", disable=not context.show_progress or not by_content
    ):
        try:
            stats = picture_stats(_picture(dataset.abspath(copies[0]), dataset.config))
        except (ImageError, OSError):
            continue  # the file checks report what cannot be read
        found = not_photo_evidence(stats, drawing.get(sha256), context.options)
        if not found:
            continue
        score = 1.0 - float(np.prod([1.0 - s for s, _ in found]))
        reason = "not a photograph? " + "; ".join(text for _, text in found)
        for record in copies:
            context.flag(record.path, "not_photo", score, reason, "remove")
