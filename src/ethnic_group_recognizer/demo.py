"""The Gradio demo (image in, label with confidences out), standalone or mounted in ``egr serve``.

Gradio is the optional ``demo`` extra, so this module imports it only inside functions: the CLI
imports this module on every run to register ``egr demo``.

Its one public endpoint, ``/predict``, answers exactly what the original Space's Interface did:
a Gradio Label (``{"label", "confidences"}``), where an abstention is the readable sentence
"None of the 12 groups" instead of a group. Notes and the optional heatmap come from a second,
private step, so API clients get the label alone.

Privacy: Gradio's upload protocol writes each upload to its cache folder. The demo reads the
file into memory and deletes it :data:`UPLOAD_GRACE_SECONDS` later (the browser shows its
preview from that file), keeps the decoded pixels only in the browser session's state (for the
heatmap, at most :data:`SESSION_SECONDS`), and draws the heatmap as an inline data URL so
nothing derived from a photo is written to disk; a sweep removes any upload that never reached
the model (uploaded, then abandoned).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from PIL import Image

from ethnic_group_recognizer.config import ABSTAIN_TEXT, LABELS
from ethnic_group_recognizer.images import ImageError, load_image
from ethnic_group_recognizer.model import LOW_DATA_IMAGES, Prediction, Recognizer

if TYPE_CHECKING:  # the CLI imports this module on every run: Gradio and FastAPI load only when used
    import gradio as gr

#: An async function that classifies one decoded photo (the server passes its own shared helper).
PredictFn = Callable[[Image.Image], Awaitable[Prediction]]
#: Runs a blocking function off the event loop: ``await offload(function, *args)``.
OffloadFn = Callable[..., Awaitable[Any]]

DEMO_TITLE = "Ethnic Group Recognizer"
#: How long a session keeps its decoded photo for the heatmap; then Gradio drops it.
SESSION_SECONDS = 300
#: How long an upload stays in Gradio's cache after it is read: long enough for the browser to
#: load its preview from it, short enough that no photo lingers on disk.
UPLOAD_GRACE_SECONDS = 5.0
#: Every CACHE_SWEEP[0] s, delete cached uploads older than CACHE_SWEEP[1] s (abandoned uploads).
CACHE_SWEEP = (60, 120)
INSTALL_HINT = "pip install 'ethnic-group-recognizer[demo]'"

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


def explain_function() -> Callable[..., Any] | None:
    """``explain.explain`` (occlusion heatmap) when this install has it; the checkbox depends on it."""
    try:
        from ethnic_group_recognizer.explain import explain
    except ImportError:
        return None
    return explain


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


def verdict_markdown(prediction: Prediction, counts: dict[str, int], threshold: float) -> str:
    """The sentence under the label: the decision, and a warning when it rests on little data."""
    if prediction.abstained:
        best, p = prediction.ranked()[0]
        return (
            f"**{ABSTAIN_TEXT}.** The closest group, {best} ({p:.0%}), is below the "
            f"{threshold:.0%} confidence needed to name it."
        )
    text = f"**{prediction.label}**, {prediction.confidence:.0%} confident."
    n = counts.get(prediction.label or "", 0)
    if n < LOW_DATA_IMAGES:
        text += f" ⚠️ Low-data class: only {n} training images; treat this label with extra caution."
    return text


def low_data_markdown(recognizer: Recognizer) -> str:
    """The standing note that flags low-data classes wherever the demo shows labels."""
    low = recognizer.low_data_labels()
    if not low:
        return ""
    counts = recognizer.training_counts
    names = ", ".join(f"{label} ({counts[label]} images)" for label in low)
    return f"⚠️ **Low-data classes** (fewer than {LOW_DATA_IMAGES} training images): {names}."


def gradio_label(prediction: Prediction) -> dict:
    """Gradio's LabelData JSON, with the abstain sentence as the headline when the model abstains.

    A plain gr.Label headlines the highest score, so the event sends this ready-made value
    (``postprocess=False``): "None of the 12 groups" on top, the 12 scores still listed.
    """
    from ethnic_group_recognizer.serve.legacy import label_payload

    payload = label_payload(prediction)
    return {
        "label": payload["label"],
        "confidences": [{"label": c["label"], "confidence": c["confidence"]} for c in payload["confidences"]],
    }


def build_demo(
    recognizer: Recognizer | None = None,
    predict: PredictFn | None = None,
    *,
    offload: OffloadFn | None = None,
    max_upload_bytes: int | None = None,
    explain_grid: int | None = None,
) -> gr.Blocks:
    """Build the Blocks UI around ``recognizer`` (the shipped model when None).

    ``predict`` and ``offload`` let ``egr serve`` run the demo's model calls through its own
    batcher and thread pool, under the same limits as its API; standalone, they run in worker
    threads.
    """
    import anyio
    import gradio as gr

    from ethnic_group_recognizer.serve.errors import DEFAULT_MAX_UPLOAD_BYTES

    max_upload_bytes = max_upload_bytes or DEFAULT_MAX_UPLOAD_BYTES
    recognizer = recognizer or Recognizer.load()
    offload = offload or anyio.to_thread.run_sync
    if predict is None:

        async def predict(image: Image.Image) -> Prediction:
            return await offload(recognizer.predict, image)

    occlusion = explain_function()
    counts = recognizer.training_counts

    with gr.Blocks(title=DEMO_TITLE, delete_cache=CACHE_SWEEP) as demo:
        gr.Markdown(
            f"# {DEMO_TITLE}\n"
            "Recognises which of 12 groups' **visual culture** (traditional dress, adornment, crafts, "
            "festivals) a photograph shows, or says it shows none of them: "
            f"{', '.join(LABELS)}.\n\n"
            "It judges cultural material in the picture, not people: there is no face detection, and "
            "it cannot tell anyone's ethnicity. Photos are classified in memory and not kept."
        )
        with gr.Row():
            with gr.Column():
                photo = gr.Image(
                    type="filepath",
                    image_mode=None,  # hand over the upload itself; load_image normalises every mode
                    sources=["upload", "clipboard"],
                    label="Photo",
                )
                show_heatmap = gr.Checkbox(
                    value=False,
                    label="Show occlusion heatmap (which regions drove the label; slower)",
                    visible=occlusion is not None,
                )
            with gr.Column():
                label = gr.Label(label="Prediction")
                verdict = gr.Markdown()
                gr.Markdown(low_data_markdown(recognizer))
                heatmap = gr.HTML(visible=occlusion is not None)
        session = gr.State(time_to_live=SESSION_SECONDS)

        async def classify(path: str | None) -> tuple[dict, dict | None]:
            """The public endpoint: one photo in, the Label payload out (the session keeps the rest)."""
            if not path:
                return {}, None
            try:
                data = read_upload(path)
                asyncio.get_running_loop().call_later(
                    UPLOAD_GRACE_SECONDS, discard_upload, path, demo.GRADIO_CACHE
                )
                if len(data) > max_upload_bytes:
                    raise ImageError(f"image is {len(data):,} bytes; the limit is {max_upload_bytes:,}")
                image = load_image(data, recognizer.config)
            except ImageError as error:
                raise gr.Error(str(error)) from None
            del data
            prediction = await predict(image)
            return gradio_label(prediction), {"image": image, "prediction": prediction}

        async def describe(state: dict | None, want_heatmap: bool) -> tuple[str, str]:
            """UI-only step: the verdict sentence and, when asked, the heatmap as an inline image."""
            if not state:
                return "", ""
            text = verdict_markdown(state["prediction"], counts, recognizer.threshold)
            if not (want_heatmap and occlusion is not None):
                return text, ""
            from ethnic_group_recognizer.explain import png_data_url

            grid = (explain_grid,) if explain_grid else ()  # None: explain.py's default grid
            explanation = await offload(occlusion, recognizer, state["image"], *grid)
            caption = html.escape(f"Regions the score for {explanation.label} depends on (red: most).")
            picture = (
                f'<img alt="{caption}" style="max-width:100%" src="{png_data_url(explanation.overlay)}">'
            )
            return text, f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"

        photo.change(classify, [photo], [label, session], api_name="predict", postprocess=False).success(
            describe, [session, show_heatmap], [verdict, heatmap], api_visibility="private"
        )
        show_heatmap.change(describe, [session, show_heatmap], [verdict, heatmap], api_visibility="private")
    return demo


def register(app: typer.Typer) -> None:
    """Add ``egr demo`` to the CLI."""

    @app.command("demo")
    def demo_command(
        model: Annotated[
            Path | None, typer.Option("--model", "-m", help="Model directory (default: the shipped model).")
        ] = None,
        host: Annotated[
            str, typer.Option(help="Interface to listen on; 0.0.0.0 exposes it to the network.")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
        max_upload_mb: Annotated[
            float | None, typer.Option(help="Largest accepted photo in MiB (default: egr serve's limit).")
        ] = None,
    ) -> None:
        """Launch the Gradio demo (needs the optional 'demo' extra)."""
        if not gradio_available():
            typer.echo(f"error: the Gradio demo needs the optional extra: {INSTALL_HINT}", err=True)
            raise typer.Exit(2)
        from ethnic_group_recognizer.serve.errors import DEFAULT_MAX_UPLOAD_BYTES

        try:
            recognizer = Recognizer.load(model)
        except FileNotFoundError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        max_bytes = int(max_upload_mb * 2**20) if max_upload_mb else DEFAULT_MAX_UPLOAD_BYTES
        build_demo(recognizer, max_upload_bytes=max_bytes).launch(
            server_name=host, server_port=port, max_file_size=max_bytes, show_error=True, run_history=False
        )
