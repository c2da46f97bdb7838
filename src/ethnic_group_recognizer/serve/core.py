"""What every serving surface shares: the recognizer dependency, off-loop work, decoding and the JSON.

The REST routes (``serve/routes/``), the Gradio-3 routes (``serve/legacy.py``) and the Gradio UI
(``serve/gradio/``) import this module and nothing of each other, so the package imports one
way: ``app`` -> routes / legacy / gradio -> ``core`` -> model, explain, decoding.

Two JSON builders live here and nowhere else: :func:`prediction_payload` (the REST answer, built
on :meth:`Prediction.to_dict`) and :func:`gradio3_payload` (the Gradio 3 Label shape of
``/run/predict`` and the Gradio UI). The words a person reads about the model (its title, its
"none of these" text, what it does) come from the model directory through :func:`model_texts`.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from PIL import Image

from ethnic_group_recognizer.card import (
    ModelCard,
    data_sources_markdown,
    failure_modes_markdown,
    what_it_does,
)
from ethnic_group_recognizer.explain import Explanation, explain
from ethnic_group_recognizer.model import LOW_DATA_IMAGES, Prediction, Recognizer
from ethnic_group_recognizer.serve.decode_worker import DecodePool, DecodeRefused
from ethnic_group_recognizer.serve.errors import APIError, check_upload
from ethnic_group_recognizer.serve.settings import ServeSettings

if TYPE_CHECKING:
    from ethnic_group_recognizer.serve.batching import MicroBatcher

T = TypeVar("T")
#: Where the REST API lives.
API = "/api/v1"
#: Occluded copies per model call in an explanation. onnxruntime's memory arena keeps the peak
#: of the largest batch it ever ran: 25 copies at 320 px kept about 300 MB more than 5 do, at
#: the same speed (docs/SERVING.md, "Limits and hardening").
EXPLAIN_BATCH = 5


# -- dependencies ------------------------------------------------------------------------------
def get_recognizer(request: Request) -> Recognizer:
    """The server's one :class:`Recognizer` (``create_app`` puts it on ``app.state``)."""
    return request.app.state.recognizer


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


RecognizerDep = Annotated[Recognizer, Depends(get_recognizer)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]


# -- work off the event loop ---------------------------------------------------------------------
async def run_blocking(app: FastAPI, function: Callable[..., T], *args: Any) -> T:
    """Run CPU-bound work (decoding, model calls) in the server's thread pool, off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(app.state.executor, functools.partial(function, *args))


async def predict_image(app: FastAPI, image: Image.Image) -> Prediction:
    """Classify one decoded image, batched with concurrent requests when batching is on."""
    recognizer: Recognizer = app.state.recognizer
    batcher: MicroBatcher | None = app.state.batcher
    if batcher is not None:
        return recognizer.decide(await batcher.submit(image))
    return (await run_blocking(app, recognizer.predict_images, [image]))[0]


async def decode_upload(app: FastAPI, data: bytes | bytearray) -> Image.Image:
    """Uploaded bytes to an RGB image through the decoding workers, or the right :class:`APIError`.

    413/400/415 as :func:`~ethnic_group_recognizer.serve.errors.check_upload`; 400 undecodable;
    503 with ``Retry-After`` when decoding passed its deadline (the worker was killed) or every
    decoder stayed busy.
    """
    settings: ServeSettings = app.state.settings
    check_upload(data, settings.max_upload_bytes)
    pool: DecodePool | None = getattr(app.state, "decoder", None)
    if pool is None:
        raise APIError(503, "the server is starting; try again shortly", headers={"Retry-After": "2"})
    try:
        width, height, pixels = await pool.decode(data)
    except DecodeRefused as refusal:
        if refusal.kind in ("image", "crashed"):
            raise APIError(400, refusal.message) from None
        retry = str(max(1, math.ceil(settings.decode_timeout_s)))
        raise APIError(
            503, refusal.message, headers={"Retry-After": retry}, code=f"decode_{refusal.kind}"
        ) from None
    return Image.frombytes("RGB", (width, height), pixels)


def explain_image(recognizer: Recognizer, image: Image.Image, grid: int, label: str | None) -> Explanation:
    """:func:`ethnic_group_recognizer.explain.explain` with the occluded copies run 5 at a time."""
    return explain(recognizer, image, grid, label, batch_size=EXPLAIN_BATCH)


def explanation_target(prediction: Prediction) -> str:
    """The label an explanation is about: the answer, or the closest label when it abstained."""
    return prediction.label or prediction.ranked()[0][0]


# -- what the model says about itself --------------------------------------------------------------
def model_card(recognizer: Recognizer) -> ModelCard:
    """The model directory's card; neutral words from its labels for a directory from before cards."""
    return recognizer.model_dir.metadata.card_or_default


def can_abstain(recognizer: Recognizer) -> bool:
    """Whether the model can answer "none of these": not when trained without ``other`` photos
    (its threshold is 0, so every photo gets one of its labels)."""
    return recognizer.threshold > 0


@dataclass(frozen=True)
class ModelTexts:
    """The words shown about a model: read from its directory, never the shipped model's constants."""

    title: str
    #: One sentence: what a photo is classified into.
    summary: str
    #: The answer when the photo shows none of the labels (a client needing a string, not null).
    abstain_text: str
    labels: tuple[str, ...]
    can_abstain: bool
    card: ModelCard


def model_texts(recognizer: Recognizer) -> ModelTexts:
    """Title, summary and "none of these" text of ``recognizer``'s model, from its own card."""
    card = model_card(recognizer)
    return ModelTexts(
        title=card.title,
        summary=card.description,
        abstain_text=card.none_of_these,
        labels=tuple(recognizer.labels),
        can_abstain=can_abstain(recognizer),
        card=card,
    )


def card_payload(recognizer: Recognizer) -> dict:
    """The card's public texts, as ``/api/v1/model`` gives them (the pages read these)."""
    card = model_card(recognizer)
    return {
        "title": card.title,
        "description": card.description,
        "none_of_these": card.none_of_these,
        "label_names": {label: card.display_name(label) for label in recognizer.labels},
        "intended_use": card.intended_use,
        "out_of_scope_use": card.out_of_scope_use,
        "data_sources": card.data_sources,
    }


def display_label(prediction: Prediction, texts: ModelTexts) -> str:
    """The label's display name (the card's ``label_names``), or the model's "none of these" text."""
    return texts.card.display_name(prediction.label) if prediction.label is not None else texts.abstain_text


# -- the JSON ----------------------------------------------------------------------------------------
def prediction_payload(prediction: Prediction, recognizer: Recognizer) -> dict:
    """The REST answer for one prediction: ``Prediction.to_dict()`` plus what a client shows.

    ``label`` is null when the photo shows none of the labels; ``prediction_set`` lists the
    labels that together hold the right one for ``coverage`` of photos (``[]`` when abstaining);
    the scores are ranked, each with its training images and low-data flag.
    """
    core = prediction.to_dict()
    counts = recognizer.training_counts
    low = set(recognizer.low_data_labels())
    return {
        "label": core["label"],
        "display_label": display_label(prediction, model_texts(recognizer)),
        "confidence": core["confidence"],
        "abstained": prediction.abstained,
        "low_data": prediction.label in low,
        "prediction_set": core["prediction_set"],
        "coverage": core["coverage"],
        "scores": [
            {
                "label": label,
                "probability": core["scores"][label],
                "training_images": counts.get(label, 0),
                "low_data": label in low,
            }
            for label, _ in prediction.ranked()
        ],
        "model": {"name": recognizer.name, "version": recognizer.version},
    }


def gradio3_payload(
    prediction: Prediction, low_data: frozenset[str] | set[str] = frozenset(), abstain_text: str | None = None
) -> dict:
    """Gradio's Label JSON for one prediction: a never-null ``label``, every score high to low.

    An abstention's label is ``abstain_text`` (the model's "none of these"; default
    ``Prediction.display_label``). ``abstained``, the ``low_data`` flags, ``prediction_set`` and
    ``coverage`` are additions a Gradio 3 client simply ignores.
    """
    core = prediction.to_dict()
    return {
        "label": prediction.label
        if prediction.label is not None
        else (abstain_text or prediction.display_label),
        "confidences": [
            {"label": label, "confidence": core["scores"][label], "low_data": label in low_data}
            for label, _ in prediction.ranked()
        ],
        "abstained": prediction.abstained,
        "low_data": prediction.label in low_data,
        "prediction_set": core["prediction_set"],
        "coverage": core["coverage"],
    }


def labels_payload(recognizer: Recognizer) -> dict:
    """The model's labels with training counts, low-data flags and held-out metrics from its card."""
    metrics = recognizer.model_dir.metadata.metrics or {}
    per_class = metrics.get("per_class") or {}
    low = set(recognizer.low_data_labels())
    labels = []
    for label, count in recognizer.training_counts.items():
        scores = per_class.get(label) or {}
        support = scores.get("support")
        labels.append(
            {
                "label": label,
                "training_images": count,
                "low_data": label in low,
                # Per-class accuracy is the share of held-out photos of the class labelled correctly
                # (its recall); null where the held-out split has no photo of it.
                "accuracy": scores.get("recall") if support else None,
                "precision": scores.get("precision") if support else None,
                "f1": scores.get("f1") if support else None,
                "support": support,
            }
        )
    return {
        "labels": labels,
        "low_data_below": LOW_DATA_IMAGES,
        "abstain": {
            "label": None,
            "text": model_texts(recognizer).abstain_text,
            "can_abstain": can_abstain(recognizer),
        },
        "metrics_split": metrics.get("split"),
    }


def model_payload(recognizer: Recognizer, settings: ServeSettings) -> dict:
    """``/api/v1/model``: the metadata as stored, the labels and threshold, the card's texts, whether
    the model can say "none of these", and the serving limits."""
    return {
        **recognizer.metadata,
        "card": card_payload(recognizer),
        "can_abstain": can_abstain(recognizer),
        "labels": recognizer.labels,
        "low_data_labels": recognizer.low_data_labels(),
        "threshold": recognizer.threshold,
        "serving": {
            "batching": settings.batching,
            "max_batch_size": settings.max_batch_size,
            "batch_concurrency": settings.batch_concurrency,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_uploads": settings.max_uploads,
            "upload_wait_s": settings.upload_wait_s,
            "body_timeout_s": settings.body_timeout_s,
            "decode_timeout_s": settings.decode_timeout_s,
            "decode_workers": settings.decode_processes,
            "explain_slots": settings.explain_slots,
            "max_parts": settings.max_parts,
            "threads": settings.worker_threads,
            "onnx_threads": settings.onnx_threads or settings.worker_threads,
        },
    }


def model_card_text(recognizer: Recognizer) -> str:
    """MODEL_CARD.md of the model directory, or a minimal card generated from its metadata and card."""
    path = recognizer.model_dir.card_path
    if path.is_file():
        return path.read_text(encoding="utf-8")
    card = model_card(recognizer)
    low = set(recognizer.low_data_labels())
    rows = "\n".join(
        f"| {card.display_name(label)} | {count}{' **low data**' if label in low else ''} |"
        for label, count in recognizer.training_counts.items()
    )
    threshold = f"{recognizer.threshold:.3g}" + ("" if can_abstain(recognizer) else " (never abstains)")
    return (
        f"# Model card: {recognizer.name} ({recognizer.version})\n\n"
        "This model has no full model card (run `egr evaluate --update-model`).\n\n"
        f"## What it does\n{what_it_does(card, can_abstain(recognizer))}\n\n"
        f"## Intended use\n{card.intended_use}\n\n"
        f"## Out-of-scope use\n{card.out_of_scope_use}\n\n"
        f"## Model\n- Backbone: {recognizer.model_dir.metadata.backbone.name}\n"
        f"- Abstain threshold: {threshold}\n\n"
        f"## Training images\n| label | training images |\n| --- | --- |\n{rows}\n\n"
        f"## Data\n{data_sources_markdown(card)}\n\n"
        f"## Known failure modes\n{failure_modes_markdown(card)}\n"
    )
