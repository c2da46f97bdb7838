"""The Gradio UI (photo in, label with confidences out), standalone (``egr demo``) or in ``egr serve``.

Gradio is the optional ``demo`` extra, so it is imported only inside :func:`build_demo`.

Its one public endpoint, ``/predict``, answers what the original Space's Interface did: a Gradio
Label (``{"label", "confidences"}``), where an abstention is the model's readable "none of
these" text instead of a label, plus the ``prediction_set`` (labels, most likely first) that a
Label display ignores. The verdict, the prediction set in words and the optional heatmap come
from a second, private step, so API clients get the label and the set alone.

Privacy: Gradio's upload protocol writes each upload to its cache folder (``GRADIO_TEMP_DIR``).
The UI reads the file into memory and deletes it at once (:func:`discard_upload`), keeps the
decoded pixels only in the browser session's state (for the heatmap, at most
:data:`SESSION_SECONDS`) and draws the heatmap as an inline data URL, so nothing derived from a
photo stays on disk. The browser fetches its preview of the upload as soon as the upload ends,
before the model's call arrives; a preview fetched later would show blank, the answer unchanged.
A sweep removes any upload that never reached the model (uploaded, then abandoned).
"""

from __future__ import annotations

import contextlib
import html
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ethnic_group_recognizer.explain import DEFAULT_GRID, Explanation, png_data_url
from ethnic_group_recognizer.images import ImageError
from ethnic_group_recognizer.model import LOW_DATA_IMAGES, Prediction, Recognizer
from ethnic_group_recognizer.serve.core import (
    ModelTexts,
    explain_image,
    explanation_target,
    gradio3_payload,
    model_texts,
)
from ethnic_group_recognizer.serve.errors import DEFAULT_MAX_UPLOAD_BYTES, APIError

if TYPE_CHECKING:
    import gradio as gr

#: Classifies one decoded photo (``egr serve`` passes its batcher-aware helper).
PredictFn = Callable[[Image.Image], Awaitable[Prediction]]
#: Decodes an upload's bytes to an RGB image (``egr serve`` passes its killable decode workers).
DecodeFn = Callable[[bytes], Awaitable[Image.Image]]
#: Explains a prediction: ``await explain(image, label)`` (``egr serve`` holds an explanation slot).
ExplainFn = Callable[[Image.Image, str], Awaitable[Explanation]]
#: Runs a blocking function off the event loop: ``await offload(function, *args)``.
OffloadFn = Callable[..., Awaitable[Any]]

#: How long a session keeps its decoded photo for the heatmap; then Gradio drops it.
SESSION_SECONDS = 300
#: Every CACHE_SWEEP[0] s, delete cached uploads older than CACHE_SWEEP[1] s (abandoned uploads).
CACHE_SWEEP = (60, 120)
#: Seconds an upload stays on disk after the model read it: none, it is deleted at once.
UPLOAD_GRACE_SECONDS = 0.0
INSTALL_HINT = "pip install '.[demo]' in a clone of the repository"

# No telemetry and no run history (which would keep inputs in the browser or a Hub bucket):
# uploads are private, and the server may have no internet at all.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_RUN_HISTORY", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def gradio_available() -> bool:
    """Whether the optional ``demo`` extra (Gradio) is installed."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        return False
    return True


def read_upload(path: str | Path) -> bytes:
    """The bytes of an upload, read into memory (decoding happens there, never from disk)."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read the upload: {error.strerror or error}") from None


def discard_upload(path: str | Path, cache_dir: str | Path) -> None:
    """Delete an upload from Gradio's cache (and its hashed folder), so no photo stays on disk.

    Only files inside the cache folder are deleted, never a file a local user pointed at.
    """
    try:
        resolved, cache = Path(path).resolve(), Path(cache_dir).resolve()
    except OSError:
        return
    if resolved.is_relative_to(cache) and resolved != cache:
        resolved.unlink(missing_ok=True)
        if resolved.parent != cache:
            with contextlib.suppress(OSError):  # Gradio keeps each upload in its own hashed folder
                resolved.parent.rmdir()


def prediction_set_text(prediction: Prediction) -> str:
    """The prediction set in words: "One of: X or Y", what its coverage means; "" without a set."""
    members = list(prediction.prediction_set)
    if len(members) < 2 or prediction.coverage is None:
        return ""
    names = ", ".join(members[:-1]) + f" or {members[-1]}"
    lead = "Uncertain: one of" if len(members) > 4 else "One of"
    return (
        f"{lead}: {names}. Sets like this hold the right label for {prediction.coverage:.0%} of "
        "photos like the ones the model was calibrated on."
    )


def verdict_markdown(
    prediction: Prediction, counts: dict[str, int], threshold: float, abstain_text: str | None = None
) -> str:
    """The sentence under the label: the decision, the prediction set, a warning on little data."""
    if prediction.abstained:
        best, p = prediction.ranked()[0]
        headline = abstain_text or prediction.display_label
        return (
            f"**{headline}.** The closest label, {best} ({p:.0%}), is below the "
            f"{threshold:.0%} confidence needed to name it."
        )
    text = f"**{prediction.label}**, {prediction.confidence:.0%} confident."
    if words := prediction_set_text(prediction):
        text += f" {words}"
    n = counts.get(prediction.label or "", 0)
    if n < LOW_DATA_IMAGES:
        text += f" ⚠️ Low-data class: only {n} training images; treat this label with extra caution."
    return text


def low_data_markdown(recognizer: Recognizer) -> str:
    """The standing note that flags low-data classes wherever the UI shows labels."""
    low = recognizer.low_data_labels()
    if not low:
        return ""
    counts = recognizer.training_counts
    names = ", ".join(f"{label} ({counts[label]} images)" for label in low)
    return f"⚠️ **Low-data classes** (fewer than {LOW_DATA_IMAGES} training images): {names}."


def gradio_label(prediction: Prediction, abstain_text: str | None = None) -> dict:
    """Gradio's LabelData JSON, the abstain text as headline when the model abstains, plus the set.

    A plain gr.Label headlines the highest score, so the event sends this ready-made value
    (``postprocess=False``): "none of these" on top, every score still listed. It is the
    Gradio-3 payload of :func:`~ethnic_group_recognizer.serve.core.gradio3_payload`, cut to what
    the Label shows and the prediction set.
    """
    payload = gradio3_payload(prediction, abstain_text=abstain_text)
    return {
        "label": payload["label"],
        "confidences": [{"label": c["label"], "confidence": c["confidence"]} for c in payload["confidences"]],
        "prediction_set": payload["prediction_set"],
    }


def intro_markdown(texts: ModelTexts) -> str:
    """The UI's heading: the model's own title, what it does and its labels (their display names)."""
    names = ", ".join(texts.card.display_name(label) for label in texts.labels)
    otherwise = (
        f'otherwise "{texts.abstain_text}".'
        if texts.can_abstain
        else '**it cannot answer "none of these"** (trained without photos of other things).'
    )
    return (
        f"# {texts.title}\n{texts.summary}\n\n"
        f"Labels: {names}; {otherwise}\n\n"
        "It judges what the picture shows, not people: there is no face detection, and it cannot "
        "tell anyone's ethnicity. Photos are classified in memory and not kept."
    )


def upload_path(payload: Any) -> str | None:
    """The path of an upload as Gradio's FileData gives it, without opening the file."""
    return None if payload is None else getattr(payload, "path", None)


def build_demo(
    recognizer: Recognizer | None = None,
    predict: PredictFn | None = None,
    *,
    decode: DecodeFn | None = None,
    explain: ExplainFn | None = None,
    offload: OffloadFn | None = None,
    max_upload_bytes: int | None = None,
    explain_grid: int | None = None,
) -> gr.Blocks:
    """Build the Blocks UI around ``recognizer`` (the shipped model when None).

    ``predict``, ``decode`` and ``explain`` let ``egr serve`` run the UI's work through its own
    batcher, decode workers and explanation slots, under the same limits as its API (an
    :class:`APIError` becomes a ``gr.Error`` with the same message); standalone, they run in
    worker threads.
    """
    import anyio
    import gradio as gr

    max_upload_bytes = max_upload_bytes or DEFAULT_MAX_UPLOAD_BYTES
    recognizer = recognizer or Recognizer.load()
    offload = offload or anyio.to_thread.run_sync
    grid = explain_grid or DEFAULT_GRID
    texts = model_texts(recognizer)
    counts = recognizer.training_counts

    async def predict_standalone(image: Image.Image) -> Prediction:
        return (await offload(recognizer.predict_images, [image]))[0]

    async def decode_standalone(data: bytes) -> Image.Image:
        return await offload(recognizer.decode, data)  # draft mode, as the API decodes

    async def explain_standalone(image: Image.Image, label: str) -> Explanation:
        return await offload(explain_image, recognizer, image, grid, label)

    predict = predict or predict_standalone
    decode = decode or decode_standalone
    explain = explain or explain_standalone

    with gr.Blocks(title=texts.title, delete_cache=CACHE_SWEEP) as demo:
        gr.Markdown(intro_markdown(texts))
        with gr.Row():
            with gr.Column():
                photo = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Photo")
                # The stock preprocess opens every upload with Pillow in the server process before
                # the event runs (and a non-image then never reaches classify, which deletes it).
                # This one hands the upload's path over untouched: all decoding is ``decode``'s (in
                # egr serve, the killable workers). (A subclass would make Gradio write a .pyi
                # stub beside this module.)
                photo.preprocess = upload_path
                show_heatmap = gr.Checkbox(
                    value=False, label="Show occlusion heatmap (which regions drove the label; slower)"
                )
            with gr.Column():
                label = gr.Label(label="Prediction")
                verdict = gr.Markdown()
                gr.Markdown(low_data_markdown(recognizer))
                picture = gr.HTML()
        session = gr.State(time_to_live=SESSION_SECONDS)

        async def classify(path: str | None) -> tuple[dict, dict | None]:
            """The public endpoint: one photo in, the Label payload out (the session keeps the rest)."""
            if not path:
                return {}, None
            try:
                try:
                    data = read_upload(path)
                finally:
                    discard_upload(path, demo.GRADIO_CACHE)
                if len(data) > max_upload_bytes:
                    raise ImageError(f"image is {len(data):,} bytes; the limit is {max_upload_bytes:,} bytes")
                image = await decode(data)
                del data
                prediction = await predict(image)
            except (ImageError, APIError) as error:
                raise gr.Error(getattr(error, "message", None) or str(error)) from None
            return gradio_label(prediction, texts.abstain_text), {"image": image, "prediction": prediction}

        async def describe(state: dict | None, want_heatmap: bool) -> tuple[str, str]:
            """UI-only step: the verdict sentence and, when asked, the heatmap as an inline image."""
            if not state:
                return "", ""
            prediction: Prediction = state["prediction"]
            text = verdict_markdown(prediction, counts, recognizer.threshold, texts.abstain_text)
            if not want_heatmap:
                return text, ""
            try:
                explanation = await explain(state["image"], explanation_target(prediction))
            except APIError as error:
                raise gr.Error(error.message) from None
            caption = html.escape(f"Regions the score for {explanation.label} depends on (red: most).")
            image = f'<img alt="{caption}" style="max-width:100%" src="{png_data_url(explanation.overlay)}">'
            return text, f"<figure>{image}<figcaption>{caption}</figcaption></figure>"

        photo.change(classify, [photo], [label, session], api_name="predict", postprocess=False).success(
            describe, [session, show_heatmap], [verdict, picture], api_visibility="private"
        )
        show_heatmap.change(describe, [session, show_heatmap], [verdict, picture], api_visibility="private")
    return demo
