"""``egr site build``: the web app as a static site, calling an API or running the model in the browser.

The pages in ``web/`` are plain HTML/CSS/JS with no build step. Two kinds of site:

- ``--api-url URL``: only ``config.js`` differs from the copy the server serves; the pages call
  the API at URL, whose ``--cors-origins`` must allow the site's origin.
- ``--in-browser``: no server at all. The Recognize page is ``web/local/recognize.html``, which
  runs the model with onnxruntime-web in a Web Worker (``web/local/*.js``, doing exactly what
  :class:`~ethnic_group_recognizer.model.Recognizer` and ``explain.py`` do); the model, its
  labels, metadata and card, and the runtime (``vendor_ort``, from npm, never a CDN) are copied
  into the site. The other pages read the model's facts from static copies of the API's answers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ethnic_group_recognizer.config import PACKAGE_DIR, Config
from ethnic_group_recognizer.views import parse_views

WEB_DIR = PACKAGE_DIR / "web"
CONFIG_FILE = "config.js"
#: The in-browser page's sources inside ``web/``; left out of an ``--api-url`` site.
IN_BROWSER_DIR = "local"
#: Pages that need a server (``egr review`` edits a dataset folder); left out of an in-browser site.
SERVER_ONLY_DIRS = ("review",)
SITE_MANIFEST = "site.json"
#: The model directory's files the site ships (the model directory format's names).
MODEL_FILE, LABELS_FILE, METADATA_FILE, CARD_FILE = (
    "model.onnx",
    "labels.json",
    "metadata.json",
    "MODEL_CARD.md",
)
MODEL_DIR = "model"
RUNTIME_DIR = "ort"
#: The preprocessing the in-browser page implements (web/local/pillow.js, views.js); anything else
#: is refused. Besides these and ``image_size``, a format-2 model lists its ``views`` (views.py).
SUPPORTED_PREPROCESSING = {"resize": "squish", "scale": "(pixel - 127) / 128", "channels": "RGB"}
#: The model directory formats the page reads: 1 (one view a graph row, averaged by the page) and
#: 2 (``pixels`` [photos, V, 3, S, S], the views averaged inside the graph).
SUPPORTED_FORMATS = (1, 2)
#: fp16 weights are shipped only if no probe photo changes label and no probability moves more.
#: Tight on purpose: on the shipped model fp16 moves confidences by up to 0.0085, which flipped 2
#: of 20 benchmark photos lying within 0.004 of the threshold (docs/IN_BROWSER.md).
FP16_MAX_DIFFERENCE = 0.002
WEIGHT_CHOICES = ("auto", "fp16", "fp32")


def normalise_api_url(api_url: str) -> str:
    """``https://host[:port][/prefix]`` without a trailing slash; ValueError for anything else."""
    url = api_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--api-url must be an http:// or https:// URL with a host, got {api_url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"--api-url must not have a query or fragment, got {api_url!r}")
    return url


def config_js(api_url: str) -> str:
    """The ``config.js`` that points the pages at ``api_url`` ("" = the server serving the pages)."""
    return (
        "// Where the pages find the API; written by `egr site build`.\n"
        f"window.EGR_CONFIG = {{ apiBase: {json.dumps(api_url)} }};\n"
    )


#: Written into every site folder, so that a re-build may overwrite it and nothing else is.
SITE_MARKER = ".egr-site"


def _check_out(out: Path, web_dir: Path, force: bool = False) -> Path:
    """The output folder: new, empty, or a site built before; anything else only with ``force``.

    Everything in the folder is published, so a dataset or model folder given by mistake would
    publish its photos: it is refused.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out is a file, not a folder: {out}")
    if not (web_dir / "index.html").is_file():
        raise FileNotFoundError(f"web app not found at {web_dir} (broken installation?)")
    if out.is_dir() and not force and not (out / SITE_MARKER).is_file() and any(out.iterdir()):
        raise ValueError(
            f"--out {out} is not empty and not a site egr built; everything in it would be published "
            "(pass --force to write into it anyway)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / SITE_MARKER).write_text("built by egr site build; a re-build may overwrite this folder\n")
    return out.resolve()


def _target(out: Path, relative: str) -> Path:
    """``out/relative``, refusing anything (a symlinked folder, say) that would land outside ``out``."""
    target = out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.resolve().is_relative_to(out):
        raise ValueError(f"refusing to write outside --out: {target} leads to {target.resolve()}")
    if target.is_symlink():
        target.unlink()
    return target


def _write(out: Path, relative: str, data: str | bytes) -> Path:
    target = _target(out, relative)
    if isinstance(data, str):
        target.write_text(data, encoding="utf-8")
    else:
        target.write_bytes(data)
    return target


def _copy(out: Path, relative: str, source: Path) -> Path:
    target = _target(out, relative)
    shutil.copyfile(source, target)
    return target


def _web_files(web_dir: Path) -> list[tuple[str, Path]]:
    """(relative path, source) of the web app's files, without the in-browser page's sources."""
    files = []
    for source in sorted(web_dir.rglob("*")):
        relative = source.relative_to(web_dir)
        if not source.is_file() or source.name.startswith(".") or "__pycache__" in source.parts:
            continue
        if relative.parts[0] == IN_BROWSER_DIR or relative.parts[0] in SERVER_ONLY_DIRS:
            continue
        files.append((relative.as_posix(), source))
    return files


def build_site(api_url: str, out: str | Path, web_dir: Path = WEB_DIR, force: bool = False) -> list[Path]:
    """Copy the web app to ``out`` with ``config.js`` pointing at ``api_url``; returns the files written.

    Existing files of the same names are replaced; other files in ``out`` are left alone.
    """
    api = normalise_api_url(api_url)
    root = _check_out(Path(out), web_dir, force)
    written: list[Path] = []
    for relative, source in _web_files(web_dir):
        if relative == CONFIG_FILE:
            written.append(_write(root, relative, config_js(api)))
        else:
            written.append(_copy(root, relative, source))
    return written


# -- the in-browser site -------------------------------------------------------------------------
@dataclass
class InBrowserSite:
    """What ``build_in_browser_site`` wrote: the files and the facts the page shows."""

    files: list[Path]
    manifest: dict
    notes: list[str] = field(default_factory=list)

    @property
    def model_bytes(self) -> int:
        return int(self.manifest["model"]["file"]["bytes"])

    @property
    def runtime_bytes(self) -> int:
        return int(self.manifest["runtime"]["wasm"]["bytes"])


def _file_facts(path: Path, relative: str) -> dict:
    data = path.read_bytes()
    return {"path": relative, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def check_preprocessing(metadata: dict) -> None:
    """Refuse a model whose preprocessing the page does not implement (it would give other answers).

    Format 2 must list its views (``preprocessing.views``, checked as ``views.parse_views`` does:
    the page renders exactly those boxes and mirrors); format 1 must not (its views are the photo
    and, with ``tta``, its mirror).
    """
    version = metadata.get("format_version", 1)
    if version not in SUPPORTED_FORMATS:
        raise ValueError(
            f"the in-browser page reads model format versions {', '.join(map(str, SUPPORTED_FORMATS))}; "
            f"this model's is {version!r}"
        )
    steps = dict(metadata.get("preprocessing") or {})
    size = steps.pop("image_size", None)
    if not isinstance(size, int) or isinstance(size, bool) or not 32 <= size <= 2048:
        raise ValueError(f"the model's preprocessing has no usable image_size ({size!r})")
    if version >= 2:
        if "views" not in steps:
            raise ValueError("the model's preprocessing lists no views (format 2 needs preprocessing.views)")
        try:
            parse_views(steps.pop("views"))
        except ValueError as error:
            raise ValueError(f"the model's preprocessing.views: {error}") from None
    if steps != SUPPORTED_PREPROCESSING:
        raise ValueError(
            "the in-browser page implements only the squish resize with (pixel - 127) / 128 on RGB; "
            f"this model's preprocessing is {metadata.get('preprocessing')!r}"
        )


def probe_images(count: int = 24, seed: int = 0) -> list:
    """Deterministic, varied pictures (gradients, noise, stripes, blocks; several shapes) for checks."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        width, height = (int(v) for v in rng.integers(48, 720, 2))
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        kind = index % 4
        if kind == 0:
            pixels = np.stack([x / width * 255, y / height * 255, (x + y) % 97 * 2.6], -1)
        elif kind == 1:
            pixels = rng.integers(0, 256, (height, width, 3)).astype(np.float32)
        elif kind == 2:
            period = int(rng.integers(4, 40))
            colour = rng.integers(0, 256, 3)
            pixels = np.where(((x // period) % 2)[..., None] == 1, colour, 255 - colour).astype(np.float32)
        else:
            pixels = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((height // 8 + 1, width // 8 + 1, 1)))
            pixels = pixels[:height, :width].astype(np.float32)
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
    return images


def fp16_weights(source: Path, target: Path) -> int:
    """Store the float32 weights of ``source`` as float16, each cast back to float32 in the graph.

    Only the download halves: every operation still runs in float32 (onnxruntime folds the casts
    at load), so a browser needs no float16 kernels. A tensor that float16 cannot hold (a value
    beyond its range) stays float32. Returns how many tensors were converted.
    """
    import onnx  # build-time only; prediction never imports onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    inputs = {value.name for value in graph.input}
    kept, casts = [], []
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor) if tensor.data_type == TensorProto.FLOAT else None
        if array is None or array.size < 16 or tensor.name in inputs:
            kept.append(tensor)
            continue
        half = array.astype(np.float16)
        if not np.all(np.isfinite(half)):
            kept.append(tensor)
            continue
        kept.append(numpy_helper.from_array(half, f"{tensor.name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{tensor.name}__fp16"], [tensor.name], to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return len(casts)


def compare_models(reference, candidate, images: list) -> dict:
    """Labels kept and the largest probability change of ``candidate`` against ``reference``."""
    expected = reference.probabilities(images)
    actual = candidate.probabilities(images)
    same = sum(
        reference.decide(a).label == candidate.decide(b).label for a, b in zip(expected, actual, strict=True)
    )
    return {
        "photos": len(images),
        "labels_kept": int(same),
        "max_probability_difference": round(float(np.abs(expected - actual).max()), 6),
    }


def _choose_weights(recognizer, weights: str, work: Path) -> tuple[Path, str, dict | None, str]:
    """The model file to ship, its precision, the fp16 check and a sentence saying why."""
    from ethnic_group_recognizer.model import Recognizer

    source = recognizer.directory / MODEL_FILE
    if weights == "fp32":
        return source, "fp32", None, "fp32 weights (asked for)"
    half_dir = work / "fp16"
    half_dir.mkdir()
    for name in (LABELS_FILE, METADATA_FILE):
        shutil.copyfile(recognizer.directory / name, half_dir / name)
    fp16_weights(source, half_dir / MODEL_FILE)
    candidate = Recognizer(half_dir, Config(threads=1))
    check = compare_models(recognizer, candidate, probe_images())
    kept = (
        check["labels_kept"] == check["photos"] and check["max_probability_difference"] <= FP16_MAX_DIFFERENCE
    )
    if weights == "fp16" or kept:
        why = (
            f"fp16 weights: on {check['photos']} probe photos every label kept, probabilities within "
            f"{check['max_probability_difference']:.4f}"
            if kept
            else f"fp16 weights (asked for; on {check['photos']} probe photos {check['photos'] - check['labels_kept']} "
            f"labels changed and probabilities moved up to {check['max_probability_difference']:.4f})"
        )
        return half_dir / MODEL_FILE, "fp16", check, why
    return (
        source,
        "fp32",
        check,
        f"fp32 weights: fp16 changed {check['photos'] - check['labels_kept']} of {check['photos']} probe labels "
        f"and moved a probability by {check['max_probability_difference']:.4f} (at most "
        f"{FP16_MAX_DIFFERENCE} keeps photos near the threshold on the same side)",
    )


def api_documents(recognizer) -> dict[str, str]:
    """Static copies of the API's model routes, for the pages that read them (About)."""
    from ethnic_group_recognizer.serve.core import can_abstain, card_payload, labels_payload, model_card_text

    model = {
        **recognizer.metadata,
        "card": card_payload(recognizer),  # as the server's /api/v1/model gives it, card or not
        "can_abstain": can_abstain(recognizer),
        "labels": recognizer.labels,
        "low_data_labels": recognizer.low_data_labels(),
        "threshold": recognizer.threshold,
        "serving": {"mode": "in-browser"},
    }
    return {
        "api/labels.json": json.dumps(labels_payload(recognizer), indent=1),
        "api/model.json": json.dumps(model, indent=1),
        "api/model-card.md": model_card_text(recognizer),
        "api/examples.json": json.dumps({"examples": []}),
    }


def build_in_browser_site(
    out: str | Path,
    model: str | Path | None = None,
    weights: str = "auto",
    web_dir: Path = WEB_DIR,
    cache_dir: Path | None = None,
    force: bool = False,
) -> InBrowserSite:
    """Write the serverless site: web app, in-browser page, model, labels, metadata, card, runtime.

    ``weights``: ``auto`` ships fp16 weights when they keep every probe photo's label (checked here
    with onnxruntime), else fp32. Raises ValueError / FileNotFoundError for a bad model or
    folder, ``vendor_ort.RuntimeFetchError`` when the runtime cannot be fetched.
    """
    from ethnic_group_recognizer.model import LOW_DATA_IMAGES, Recognizer
    from ethnic_group_recognizer.serve.core import model_texts
    from ethnic_group_recognizer.vendor_ort import (
        INTEGRITY,
        LICENSE_FILE,
        LOADER_FILE,
        MODULE_FILE,
        PACKAGE,
        VERSION,
        WASM_FILE,
        ensure_runtime,
        license_text,
    )

    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    local = web_dir / IN_BROWSER_DIR
    if not (local / "recognize.html").is_file():
        raise FileNotFoundError(f"the in-browser page is not at {local} (broken installation?)")
    recognizer = Recognizer.load(model, Config(threads=1))
    check_preprocessing(recognizer.metadata)
    runtime = ensure_runtime(cache_dir)
    for source in (web_dir, recognizer.directory):
        if Path(out).resolve().is_relative_to(source.resolve()):
            raise ValueError(f"--out must not be inside {source}: the build reads from there")
    root = _check_out(Path(out), web_dir, force)
    config = Config()
    written: list[Path] = []
    for relative, source in _web_files(web_dir):
        if relative not in (CONFIG_FILE, "recognize.html") and relative.split("/")[0] not in SERVER_ONLY_DIRS:
            written.append(_copy(root, relative, source))
    written.append(_copy(root, CONFIG_FILE, local / CONFIG_FILE))
    written.append(_copy(root, "recognize.html", local / "recognize.html"))
    for source in sorted(local.iterdir()):
        if source.is_file() and source.suffix in (".js", ".css") and source.name != CONFIG_FILE:
            written.append(_copy(root, f"{IN_BROWSER_DIR}/{source.name}", source))
    for name in (MODULE_FILE, LOADER_FILE, WASM_FILE):
        written.append(_copy(root, f"{RUNTIME_DIR}/{name}", runtime.directory / name))
    written.append(_write(root, f"{RUNTIME_DIR}/{LICENSE_FILE}", license_text()))
    with tempfile.TemporaryDirectory(prefix="egr-site-") as tmp:
        model_file, precision, check, why = _choose_weights(recognizer, weights, Path(tmp))
        written.append(_copy(root, f"{MODEL_DIR}/{MODEL_FILE}", model_file))
    for name in (LABELS_FILE, METADATA_FILE):
        written.append(_copy(root, f"{MODEL_DIR}/{name}", recognizer.directory / name))
    documents = api_documents(recognizer)
    written.append(_write(root, f"{MODEL_DIR}/{CARD_FILE}", documents["api/model-card.md"]))
    written.extend(_write(root, relative, text) for relative, text in documents.items())
    manifest = {
        "mode": "in-browser",
        "model": {
            "name": recognizer.name,
            "version": recognizer.version,
            "labels": f"{MODEL_DIR}/{LABELS_FILE}",
            "metadata": f"{MODEL_DIR}/{METADATA_FILE}",
            "card": f"{MODEL_DIR}/{CARD_FILE}",
            "file": _file_facts(root / MODEL_DIR / MODEL_FILE, f"{MODEL_DIR}/{MODEL_FILE}"),
            "source_bytes": (recognizer.directory / MODEL_FILE).stat().st_size,
            "weights": precision,
            "weights_check": check,
            "threshold": recognizer.threshold,
            "tta": recognizer.tta,
            # The views the page renders (views.py); in the graph for format 2, averaged by the page for 1.
            "format_version": recognizer.model_dir.metadata.format_version,
            "views": [view.to_json() for view in recognizer.views],
            "image_size": recognizer.image_size,
        },
        "runtime": {
            "package": PACKAGE,
            "version": VERSION,
            "integrity": INTEGRITY,
            "directory": f"{RUNTIME_DIR}/",
            "module": f"{RUNTIME_DIR}/{MODULE_FILE}",
            "wasm": _file_facts(root / RUNTIME_DIR / WASM_FILE, f"{RUNTIME_DIR}/{WASM_FILE}"),
        },
        "low_data_below": LOW_DATA_IMAGES,
        "abstain_text": model_texts(recognizer).abstain_text,
        "explain_grid": _explain_constants()[0],
        "overlay_max_side": _explain_constants()[1],
        "limits": {"max_pixels": config.max_pixels, "min_side": config.min_side},
    }
    written.append(_write(root, SITE_MANIFEST, json.dumps(manifest, indent=1)))
    return InBrowserSite(written, manifest, [why])


def _explain_constants() -> tuple[int, int]:
    from ethnic_group_recognizer.explain import DEFAULT_GRID, OVERLAY_MAX_SIDE

    return DEFAULT_GRID, OVERLAY_MAX_SIDE
