"""The Gradio side: the UI mounted in ``egr serve``, the Space-style ``app.py``, and life without it.

Modern clients are driven with the real ``gradio_client`` against real servers on 127.0.0.1;
those tests skip, saying why, when the optional ``demo`` extra is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fixtures_static.servers import (
    data_url,
    default_recognizer,
    egr_serve,
    free_port,
    photo_bytes,
    plain_bytes,
    run_server,
)
from serve_fixtures import OWN_LABELS, LiveServer, scan_bomb, tiny_model
from typer.testing import CliRunner

from ethnic_group_recognizer.cli import app as cli_app
from ethnic_group_recognizer.config import ABSTAIN_TEXT, LABELS
from ethnic_group_recognizer.model import LOW_DATA_IMAGES, Prediction, Recognizer
from ethnic_group_recognizer.serve.app import ServeSettings, create_app
from ethnic_group_recognizer.serve.gradio.ui import (
    UPLOAD_GRACE_SECONDS,
    discard_upload,
    gradio_label,
    read_upload,
    verdict_markdown,
)

REPO = Path(__file__).resolve().parents[1]
HAVE_DEMO_EXTRA = all(importlib.util.find_spec(name) for name in ("gradio", "gradio_client"))
needs_demo_extra = pytest.mark.skipif(
    not HAVE_DEMO_EXTRA,
    reason="the optional 'demo' extra (gradio, gradio_client) is not installed: pip install '.[demo]'",
)
#: Run in the server process before the CLI, so it behaves as an install without the extra.
HIDE_GRADIO = "import sys\nsys.modules['gradio'] = None\nsys.modules['gradio_client'] = None"


def scores(top: str, p: float) -> dict[str, float]:
    rest = (1 - p) / 22
    return {label: (p if label == top else rest) for label in LABELS}


def assert_label_result(result: object, expected: Prediction) -> None:
    """A Gradio Label value saying what the product says: never-null label, 12 scores, high to low."""
    assert isinstance(result, dict), result
    assert isinstance(result["label"], str) and result["label"]
    assert result["label"] == expected.display_label
    confidences = result["confidences"]
    assert [c["label"] for c in confidences] == [label for label, _ in expected.ranked()]
    for item in confidences:
        assert item["confidence"] == pytest.approx(expected.scores[item["label"]], abs=1e-5)


# -- pure parts ----------------------------------------------------------------------------------


def test_abstention_headline_keeps_the_scores() -> None:
    value = gradio_label(Prediction(label=None, confidence=0.3, scores=scores("Uzbeks", 0.3)))
    assert value["label"] == ABSTAIN_TEXT
    assert value["confidences"][0] == {"label": "Uzbeks", "confidence": 0.3}
    assert len(value["confidences"]) == 12
    # Gradio's LabelData (what a Label shows) plus the prediction set, empty when abstaining.
    assert set(value) == {"label", "confidences", "prediction_set"}
    assert value["prediction_set"] == []


def test_verdict_flags_low_data_labels() -> None:
    counts = {label: 100 for label in LABELS} | {"Mon people": LOW_DATA_IMAGES - 1}
    low = verdict_markdown(Prediction("Mon people", 0.8, scores("Mon people", 0.8)), counts, 0.4)
    assert "Low-data" in low and f"{LOW_DATA_IMAGES - 1} training images" in low
    plenty = verdict_markdown(Prediction("Uzbeks", 0.8, scores("Uzbeks", 0.8)), counts, 0.4)
    assert "Low-data" not in plenty
    none = verdict_markdown(Prediction(None, 0.3, scores("Uzbeks", 0.3)), counts, 0.4)
    assert none.startswith(f"**{ABSTAIN_TEXT}.**") and "Uzbeks" in none


def test_uploads_are_deleted_from_the_gradio_cache_only(tmp_path: Path) -> None:
    cache = tmp_path / "gradio-cache"
    upload = cache / "3f2a9c" / "photo.png"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"pixels")
    assert read_upload(upload) == b"pixels"
    discard_upload(upload, cache)
    assert not upload.exists() and not upload.parent.exists() and cache.is_dir()
    own_file = tmp_path / "mine.png"
    own_file.write_bytes(b"keep me")
    discard_upload(own_file, cache)
    assert own_file.exists()


def test_demo_command_is_registered() -> None:
    result = CliRunner().invoke(cli_app, ["demo", "--help"])
    assert result.exit_code == 0, result.output
    assert "--port" in result.output and "Gradio" in result.output


# -- real servers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return default_recognizer()


@pytest.fixture(scope="module")
def gradio_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gradio-cache")


@pytest.fixture(scope="module")
def served(recognizer: Recognizer, gradio_cache: Path) -> Iterator[str]:
    if not HAVE_DEMO_EXTRA:
        pytest.skip(
            "the optional 'demo' extra (gradio, gradio_client) is not installed: pip install '.[demo]'"
        )
    with egr_serve(env={"GRADIO_TEMP_DIR": str(gradio_cache)}) as server:
        yield server.base


@pytest.fixture(scope="module")
def client(served: str) -> Iterator[object]:
    from gradio_client import Client

    client = Client(served + "/gradio/", verbose=False)
    try:
        yield client
    finally:
        client.close()  # ends its heartbeat stream, so the server can stop at once


@needs_demo_extra
@pytest.mark.slow
def test_gradio_client_against_the_mounted_ui(
    client: object, recognizer: Recognizer, gradio_cache: Path, tmp_path: Path
) -> None:
    from gradio_client import handle_file

    photos = {"texture.jpg": photo_bytes("JPEG"), "plain.png": plain_bytes()}
    for name, data in photos.items():
        photo = tmp_path / name
        photo.write_bytes(data)
        result = client.predict(handle_file(str(photo)), api_name="/predict")  # type: ignore[attr-defined]
        expected = recognizer.predict(photo)
        assert_label_result(result, expected)
        assert result["prediction_set"] == expected.prediction_set  # type: ignore[index]
        if expected.abstained:
            # The model's own "none of these", from its card (the shipped model: "None of the 12 groups").
            none_of_these = recognizer.model_dir.metadata.card_or_default.none_of_these
            assert result["label"] == none_of_these  # type: ignore[index]
        # Gradio wrote the upload to its cache; the UI deleted it as soon as it read it.
        leftovers = [p for p in gradio_cache.rglob("*") if p.is_file()]
        assert leftovers == [], f"uploads left on disk after the answer: {leftovers}"
    assert UPLOAD_GRACE_SECONDS == 0


@needs_demo_extra
@pytest.mark.slow
def test_mounted_ui_shares_the_process_with_the_api(client: object, served: str) -> None:
    api = client.view_api(print_info=False, return_format="dict")  # type: ignore[attr-defined]
    assert list(api["named_endpoints"]) == ["/predict"]  # the UI-only steps stay private
    page = httpx.get(served + "/gradio/", timeout=30)
    assert page.status_code == 200 and "gradio" in page.text.lower()
    legacy = httpx.post(
        served + "/run/predict", json={"data": [data_url(plain_bytes(), "image/png")]}, timeout=30
    )
    assert legacy.status_code == 200


@needs_demo_extra
@pytest.mark.slow
def test_space_style_app_py(recognizer: Recognizer, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    port = free_port()
    env = {
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(tmp_path),
    }
    with run_server([sys.executable, str(REPO / "app.py")], f"http://127.0.0.1:{port}", "/", env) as server:
        photo = tmp_path / "texture.webp"
        photo.write_bytes(photo_bytes("WEBP", seed=5))
        result = Client(server.base + "/", verbose=False).predict(
            handle_file(str(photo)), api_name="/predict"
        )
    assert_label_result(result, recognizer.predict(photo))


@pytest.mark.slow
def test_server_without_the_extra_starts_and_says_where_the_ui_would_be(recognizer: Recognizer) -> None:
    with egr_serve(preamble=HIDE_GRADIO) as server:
        missing = httpx.get(server.base + "/gradio/", timeout=10)
        image = photo_bytes("PNG", seed=6)
        legacy = httpx.post(
            server.base + "/run/predict", json={"data": [data_url(image, "image/png")]}, timeout=30
        )
    assert missing.status_code == 404
    message = missing.json()["error"]["message"]
    assert "/gradio/" in message and "[demo]" in message
    assert legacy.status_code == 200
    assert legacy.json()["data"][0]["label"] == recognizer.predict(image).display_label
    assert "Gradio UI not mounted" in server.output and "/gradio/" in server.output


@needs_demo_extra
def test_a_users_model_titles_the_ui_in_its_own_words(tmp_path: Path) -> None:
    import gradio as gr

    from ethnic_group_recognizer.serve.gradio.ui import build_demo

    demo = build_demo(Recognizer.load(tiny_model(tmp_path / "model")))
    texts = " ".join(str(block.value) for block in demo.blocks.values() if isinstance(block, gr.Markdown))
    assert demo.title == "Recognizer: my costumes"
    assert all(label in texts for label in OWN_LABELS) and "None of these 3" in texts
    for word in (*LABELS, "12", "Ethnic Group Recognizer"):
        assert word not in texts + demo.title, word
    none = verdict_markdown(Prediction(None, 0.3, dict.fromkeys(OWN_LABELS, 0.3)), {}, 0.5, "None of these 3")
    assert none.startswith("**None of these 3.**")


def test_the_verdict_says_the_prediction_set() -> None:
    counts = dict.fromkeys(LABELS, 100)
    two = Prediction(
        "Kazakhs", 0.6, scores("Kazakhs", 0.6), prediction_set=["Kazakhs", "Tatar people"], coverage=0.9
    )
    text = verdict_markdown(two, counts, 0.4)
    assert "One of: Kazakhs or Tatar people" in text and "90%" in text
    one = Prediction("Kazakhs", 0.9, scores("Kazakhs", 0.9), prediction_set=["Kazakhs"], coverage=0.9)
    assert "One of" not in verdict_markdown(one, counts, 0.4)
    many = Prediction("Kazakhs", 0.5, scores("Kazakhs", 0.5), prediction_set=list(LABELS[:5]), coverage=0.9)
    assert "Uncertain: one of" in verdict_markdown(many, counts, 0.4)


@pytest.fixture(scope="module")
def strict_server(recognizer: Recognizer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The server in this process, with a short decode deadline, so the test can see its decoders."""
    if not HAVE_DEMO_EXTRA:
        pytest.skip(
            "the optional 'demo' extra (gradio, gradio_client) is not installed: pip install '.[demo]'"
        )
    settings = ServeSettings(cors_origins=[], decode_timeout_s=2.0, decode_workers=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("strict-gradio-cache")))
        server = LiveServer(create_app(settings, recognizer=recognizer)).start()
        server.gradio_cache = Path(os.environ["GRADIO_TEMP_DIR"])
        yield server
        server.stop()


@needs_demo_extra
@pytest.mark.slow
def test_the_mounted_ui_decodes_in_the_killable_workers(strict_server: LiveServer, tmp_path: Path) -> None:
    """A costly JPEG sent through the Gradio UI is stopped at the deadline like one sent to the API."""
    from gradio_client import Client, handle_file

    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(scan_bomb())  # about 13 s of CPU to decode
    text = tmp_path / "notes.png"
    text.write_bytes(b"this is not a photograph at all")
    decoder = strict_server.app.state.decoder
    killed_before = len(decoder.killed)
    client = Client(strict_server.base + "/gradio/", verbose=False)
    try:
        started = time.monotonic()
        with pytest.raises(Exception, match="longer than 2 s"):
            client.predict(handle_file(str(bomb)), api_name="/predict")
        assert time.monotonic() - started < 30
        assert len(decoder.killed) == killed_before + 1  # the worker was killed, not waited for
        with pytest.raises(Exception, match="not an image"):
            client.predict(handle_file(str(text)), api_name="/predict")
    finally:
        client.close()
    # Refused uploads are deleted as soon as they are read, like the others.
    assert [p for p in strict_server.gradio_cache.rglob("*") if p.is_file()] == []
