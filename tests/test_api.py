"""The REST API against a real uvicorn server on 127.0.0.1: every endpoint, every error, concurrency."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_fixtures import (  # noqa: F401 - fixtures
    OWN_LABELS,
    TEST_UPLOAD_LIMIT,
    LiveServer,
    encode,
    live_server,
    photo,
    recognizer,
    site_origin,
    tiny_model,
)

from ethnic_group_recognizer.config import LABELS
from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.serve.app import ServeSettings, create_app, parse_origins
from ethnic_group_recognizer.serve.core import API

PREDICT = "/api/v1/predict"


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=live_server.base, timeout=60) as http:
        yield http


def assert_error(response: httpx.Response, status: int, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["status"] == status
    assert body["error"]["code"] and body["error"]["message"]
    assert fragment.lower() in body["error"]["message"].lower()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header claims 900 megapixels: decoding it would exhaust memory."""
    small = encode(Image.new("L", (8, 8)), "PNG")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    patched = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    return small[:8] + patched + small[8 + 25 :]


# -- probes, metadata ---------------------------------------------------------------------------
def test_healthz_and_readyz(client: httpx.Client, recognizer: Recognizer) -> None:  # noqa: F811
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model"] == {"name": recognizer.name, "version": recognizer.version}


def test_labels_have_counts_low_data_flags_and_accuracy(client: httpx.Client, recognizer: Recognizer) -> None:  # noqa: F811
    body = client.get("/api/v1/labels").json()
    rows = {row["label"]: row for row in body["labels"]}
    assert list(rows) == list(LABELS)
    per_class = recognizer.metadata["metrics"]["per_class"]
    for label, row in rows.items():
        assert row["training_images"] == recognizer.training_counts[label]
        assert row["low_data"] == (label in recognizer.low_data_labels())
        if per_class[label]["support"]:
            assert row["accuracy"] == pytest.approx(per_class[label]["recall"])
        else:
            assert row["accuracy"] is None
    assert {"Akha people", "Chakma people", "Mon people"} <= {
        r["label"] for r in body["labels"] if r["low_data"]
    }
    assert body["abstain"]["label"] is None


def test_model_metadata_and_card(client: httpx.Client, recognizer: Recognizer) -> None:  # noqa: F811
    model = client.get("/api/v1/model").json()
    assert (model["name"], model["version"]) == (recognizer.name, recognizer.version)
    assert model["labels"] == recognizer.labels
    assert model["threshold"] == pytest.approx(recognizer.threshold)
    assert model["serving"]["max_upload_bytes"] == TEST_UPLOAD_LIMIT
    card = client.get("/api/v1/model-card")
    assert card.headers["content-type"].startswith("text/markdown")
    assert card.text.startswith("# Model card")


def test_openapi_docs(client: httpx.Client) -> None:
    page = client.get("/docs").text
    assert "swagger" in page.lower()
    assert "cdn" not in page and "https://" not in page, "the docs page must work offline"
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"][PREDICT]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)


# -- predictions --------------------------------------------------------------------------------
def check_prediction(body: dict, expected_probs: np.ndarray, recognizer: Recognizer) -> None:  # noqa: F811
    expected = recognizer.decide(expected_probs)
    assert body["label"] == expected.label
    assert body["abstained"] == expected.abstained
    assert body["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
    probabilities = [s["probability"] for s in body["scores"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sorted(s["label"] for s in body["scores"]) == sorted(LABELS)
    for score in body["scores"]:
        assert score["probability"] == pytest.approx(expected.scores[score["label"]], abs=1e-5)
        assert score["training_images"] == recognizer.training_counts[score["label"]]
        assert score["low_data"] == (score["label"] in recognizer.low_data_labels())
    assert body["model"] == {"name": recognizer.name, "version": recognizer.version}
    assert "explanation" not in body


def test_predict_multipart_matches_the_python_api(client: httpx.Client, recognizer: Recognizer) -> None:  # noqa: F811
    data = encode(photo(1), "JPEG", quality=90)
    response = client.post(PREDICT, files={"image": ("p.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    check_prediction(
        response.json(),
        recognizer.probabilities([Image.open(io.BytesIO(data)).convert("RGB")])[0],
        recognizer,
    )


def test_predict_json_data_url_gives_the_same_answer(client: httpx.Client) -> None:
    data = encode(photo(2), "PNG")
    multipart = client.post(PREDICT, files={"image": ("p.png", data, "image/png")}).json()
    as_json = client.post(PREDICT, json={"image": data_url(data)})
    assert as_json.status_code == 200, as_json.text
    assert as_json.json() == multipart


def test_abstention_is_null_label(client: httpx.Client, recognizer: Recognizer) -> None:  # noqa: F811
    """A grey square is none of the 12: the label is null (with a very high threshold, surely)."""
    app = create_app(
        ServeSettings(cors_origins=[]), recognizer=Recognizer.load(recognizer.directory, threshold=1.0)
    )
    server = LiveServer(app).start()
    try:
        data = encode(Image.new("RGB", (128, 128), (128, 128, 128)), "PNG")
        body = httpx.post(server.base + PREDICT, files={"image": ("g.png", data)}, timeout=60).json()
    finally:
        server.stop()
    assert body["label"] is None and body["abstained"] is True
    assert body["display_label"] == "None of the 12 groups"
    assert len(body["scores"]) == 12


def test_explanation_heatmap(client: httpx.Client, recognizer: Recognizer) -> None:  # noqa: F811
    data = encode(photo(3), "JPEG")
    body = client.post(PREDICT, params={"explain": "true"}, files={"image": ("p.jpg", data)}).json()
    explanation = body["explanation"]
    assert explanation["label"] == body["scores"][0]["label"]
    assert explanation["grid"] == 7 and np.asarray(explanation["heatmap"]).shape == (7, 7)
    prefix = "data:image/png;base64,"
    assert explanation["heatmap_png"].startswith(prefix)
    overlay = Image.open(io.BytesIO(base64.b64decode(explanation["heatmap_png"][len(prefix) :])))
    assert overlay.format == "PNG" and overlay.size == (320, 240)
    assert explanation["milliseconds"] > 0


# -- errors -------------------------------------------------------------------------------------
def test_413_too_large_multipart_and_json(client: httpx.Client) -> None:
    big = b"\xff\xd8\xff" + bytes(TEST_UPLOAD_LIMIT + 10)
    assert_error(client.post(PREDICT, files={"image": ("big.jpg", big)}), 413, "limit")
    assert_error(client.post(PREDICT, json={"image": data_url(big, "image/jpeg")}), 413, "limit")


def test_413_declared_body_refused_before_reading(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield bytes(100_000)

    response = client.post(
        PREDICT, content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert_error(response, 413)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"files": {"image": ("notes.txt", b"hello, not a photo", "text/plain")}}, "not an image"),
        ({"files": {"image": ("fake.jpg", b"%PDF-1.4 pretending", "image/jpeg")}}, "not an image"),
        ({"json": {"image": data_url(b"hello", "text/plain")}}, "not an image"),
        ({"content": b"\xff\xd8\xff raw", "headers": {"content-type": "image/jpeg"}}, "multipart/form-data"),
        ({"content": b"x"}, "multipart/form-data"),
    ],
)
def test_415_not_an_image(client: httpx.Client, kwargs: dict, fragment: str) -> None:
    assert_error(client.post(PREDICT, **kwargs), 415, fragment)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"json": {"photo": "data:image/png;base64,AAAA"}}, '"image"'),
        ({"json": ["data:image/png;base64,AAAA"]}, '"image"'),
        ({"json": {"image": 42}}, "data url"),
        ({"json": {"image": "data:image/png,rawbytes"}}, "base64"),
        ({"json": {"image": "data:image/png;base64,AAAAA"}}, "base64"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, "not valid json"),
        ({"files": {"picture": ("p.png", b"\x89PNG")}}, "no 'image' field"),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, "boundary"),
    ],
)
def test_422_malformed_requests(client: httpx.Client, kwargs: dict, fragment: str) -> None:
    assert_error(client.post(PREDICT, **kwargs), 422, fragment)


def test_422_bad_query_parameter(client: httpx.Client) -> None:
    data = encode(photo(4), "PNG")
    assert_error(client.post(PREDICT, params={"explain": "perhaps"}, files={"image": ("p.png", data)}), 422)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (encode(photo(5), "JPEG")[:2000], "truncated"),
        (encode(photo(5), "PNG")[:3000], "truncated"),
        (encode(Image.new("RGB", (12, 12)), "PNG"), "too small"),
        (b"", "empty"),
        (png_bomb(), "decompression bomb"),
    ],
    ids=["truncated-jpeg", "truncated-png", "tiny", "empty", "bomb"],
)
def test_400_undecodable_images(client: httpx.Client, payload: bytes, fragment: str) -> None:
    assert_error(client.post(PREDICT, files={"image": ("x.png", payload)}), 400, fragment)
    if payload:
        assert_error(client.post(PREDICT, json={"image": data_url(payload)}), 400, fragment)


def test_unknown_route_is_a_json_404(client: httpx.Client) -> None:
    assert_error(client.get("/api/v1/nothing-here"), 404)
    assert_error(client.get("/api/v1/predict"), 405)


def test_uploads_never_touch_the_disk(client: httpx.Client) -> None:
    """A 1.5 MB upload (over Starlette's 1 MB spool size) leaves the temporary folder empty."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 720, 3), dtype=np.uint8))
    data = encode(noise, "PNG")
    assert 1_100_000 < len(data) < TEST_UPLOAD_LIMIT
    before = tempfile.tempdir
    with tempfile.TemporaryDirectory() as spool:
        tempfile.tempdir = spool  # the server runs in this process: any spooled file would land here
        try:
            response = client.post(PREDICT, files={"image": ("noise.png", data, "image/png")})
            assert response.status_code == 200, response.text
            assert list(Path(spool).iterdir()) == []
        finally:
            tempfile.tempdir = before


# -- CORS, examples, static pages ---------------------------------------------------------------
def test_cors_allows_configured_origins_only(client: httpx.Client) -> None:
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    allowed = client.options(PREDICT, headers={"origin": "https://site.example", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://site.example"
    refused = client.options(PREDICT, headers={"origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers
    simple = client.get("/api/v1/labels", headers={"origin": "https://site.example"})
    assert simple.headers["access-control-allow-origin"] == "https://site.example"


def test_cors_origins_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGR_CORS_ORIGINS", "https://a.org, https://b.org/ ,")
    assert ServeSettings().cors_origins == ["https://a.org", "https://b.org"]
    assert parse_origins("*") == ["*"]
    with pytest.raises(ValueError, match="CORS origin"):
        ServeSettings(cors_origins=["a.org"])
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeSettings(max_batch_size=0)


def test_examples_gallery(client: httpx.Client) -> None:
    examples = client.get("/api/v1/examples").json()["examples"]
    assert [(e["label"], e["name"]) for e in examples] == [
        ("Bai people", "generated0.png"),
        ("Naga people", "generated1.png"),
        (None, "generated2.png"),
    ]
    image = client.get(examples[0]["url"])
    assert image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (320, 240)
    assert_error(client.get("/api/v1/examples/99"), 404)
    assert client.get("/api/v1/examples/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)


def test_web_app_is_served_at_root(client: httpx.Client) -> None:
    home = client.get("/")
    assert home.status_code == 200 and "text/html" in home.headers["content-type"]
    assert "does not tell anyone's ethnicity" in home.text
    for page in ("recognize.html", "about.html", "config.js", "style.css", "recognize.js", "markdown.js"):
        assert client.get(f"/{page}").status_code == 200, page
    assert 'apiBase: ""' in client.get("/config.js").text


def test_legacy_routes_share_the_server(client: httpx.Client) -> None:
    """create_app installs the Gradio-3-compatible route when its module is present."""
    pytest.importorskip("ethnic_group_recognizer.serve.legacy")
    response = client.post("/run/predict", json={"data": [data_url(encode(photo(6), "PNG"))]})
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["label"]


# -- concurrency --------------------------------------------------------------------------------
async def post_many(base: str, payloads: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        return await asyncio.gather(
            *(
                http.post(PREDICT, files={"image": (f"{i}.png", p, "image/png")})
                for i, p in enumerate(payloads)
            )
        )


def test_concurrent_requests_are_batched_and_correct(live_server: LiveServer, recognizer: Recognizer) -> None:  # noqa: F811
    payloads = [encode(photo(10 + i % 4), "PNG") for i in range(16)]
    expected = recognizer.probabilities([Image.open(io.BytesIO(p)).convert("RGB") for p in payloads])
    batcher = live_server.app.state.batcher
    batcher.batch_sizes.clear()
    responses = asyncio.run(post_many(live_server.base, payloads))
    assert [r.status_code for r in responses] == [200] * 16
    for response, probs in zip(responses, expected, strict=True):
        check_prediction(response.json(), probs, recognizer)
    assert sum(batcher.batch_sizes) == 16
    assert max(batcher.batch_sizes) > 1, "concurrent requests should have shared a model call"


def test_concurrency_without_batching(recognizer: Recognizer) -> None:  # noqa: F811
    app = create_app(ServeSettings(cors_origins=[], batching=False), recognizer=recognizer)
    assert app.state.batcher is None
    server = LiveServer(app).start()
    try:
        payloads = [encode(photo(20 + i), "PNG") for i in range(6)]
        responses = asyncio.run(post_many(server.base, payloads))
    finally:
        server.stop()
    expected = recognizer.probabilities([Image.open(io.BytesIO(p)).convert("RGB") for p in payloads])
    assert [r.status_code for r in responses] == [200] * 6
    for response, probs in zip(responses, expected, strict=True):
        check_prediction(response.json(), probs, recognizer)


# -- prediction sets, response models, a model's own words ----------------------------------------
def test_prediction_set_and_coverage_in_the_answer_and_the_schema(
    client: httpx.Client,
    recognizer: Recognizer,  # noqa: F811
) -> None:
    data = encode(photo(30), "PNG")
    body = client.post(PREDICT, files={"image": ("p.png", data, "image/png")}).json()
    expected = recognizer.decide(recognizer.probabilities([Image.open(io.BytesIO(data)).convert("RGB")])[0])
    assert body["prediction_set"] == expected.prediction_set
    assert body["coverage"] == expected.coverage
    assert set(body["prediction_set"]) <= set(recognizer.labels)
    if body["abstained"]:
        assert body["prediction_set"] == []
    spec = client.get("/openapi.json").json()
    answer = spec["paths"][PREDICT]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/PredictOut"}
    properties = spec["components"]["schemas"]["PredictOut"]["properties"]
    assert properties["prediction_set"]["type"] == "array"
    assert {"coverage", "label", "display_label", "scores", "model"} <= set(properties)
    legacy = client.post("/run/predict", json={"data": [data_url(data)]}).json()["data"][0]
    assert legacy["prediction_set"] == expected.prediction_set
    assert legacy["label"] == expected.display_label  # unchanged for old clients


def test_every_json_route_declares_and_enforces_a_response_model(live_server: LiveServer) -> None:  # noqa: F811
    """FastAPI checks an answer against ``response_model``; ``None`` would only document it."""
    from fastapi.routing import APIRoute

    unchecked = [
        route.path
        for route in live_server.app.routes
        if isinstance(route, APIRoute)
        and route.include_in_schema
        and route.path.startswith((API, "/healthz", "/readyz"))
        and route.response_model is None
        and route.path not in (f"{API}/model-card", f"{API}/examples/{{example_id}}")
    ]
    assert unchecked == []


@pytest.fixture(scope="module")
def own_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    directory = tiny_model(tmp_path_factory.mktemp("own") / "model")
    server = LiveServer(create_app(ServeSettings(cors_origins=[]), recognizer=Recognizer.load(directory)))
    yield server.start()
    server.stop()


def assert_no_shipped_words(text: str) -> None:
    lowered = text.lower()
    for word in (*LABELS, "None of the 12", "12 ethnic", "12 groups", "the 12", "ethnic group recognizer"):
        assert word.lower() not in lowered, f"{word!r} in {text[:300]!r}"


def test_a_users_model_speaks_for_itself(own_model_server: LiveServer) -> None:
    base = own_model_server.base
    spec = httpx.get(base + "/openapi.json", timeout=30).json()
    summaries = [op.get("summary", "") for path in spec["paths"].values() for op in path.values()]
    assert_no_shipped_words(
        " ".join([spec["info"]["title"], spec["info"]["summary"], spec["info"]["description"], *summaries])
    )
    assert "kimono" in spec["info"]["summary"] and "my costumes" in spec["info"]["title"]
    labels = httpx.get(base + "/api/v1/labels", timeout=30).json()
    assert [row["label"] for row in labels["labels"]] == list(OWN_LABELS)
    assert labels["abstain"] == {"label": None, "text": "None of these 3", "can_abstain": True}
    grey = encode(Image.new("RGB", (64, 64), (128, 128, 128)), "PNG")
    answer = httpx.post(base + PREDICT, files={"image": ("g.png", grey)}, timeout=60).json()
    assert answer["label"] is None and answer["display_label"] == "None of these 3"
    assert answer["prediction_set"] == [] and len(answer["scores"]) == 3
    red = encode(Image.new("RGB", (64, 64), (250, 10, 10)), "PNG")
    named = httpx.post(base + PREDICT, files={"image": ("r.png", red)}, timeout=60).json()
    assert named["label"] == "kimono" and named["prediction_set"][0] == "kimono"
    legacy = httpx.post(base + "/run/predict", json={"data": [data_url(grey)]}, timeout=60).json()
    assert legacy["data"][0]["label"] == "None of these 3"
    card = httpx.get(base + "/api/v1/model-card", timeout=30).text
    assert_no_shipped_words(card)
    assert "None of these 3" in card and "kimono" in card


def test_too_large_messages_speak_mib() -> None:
    """People read upload limits in MiB; the exact byte count stays for clients that want it."""
    from ethnic_group_recognizer.serve.errors import mib, too_large

    assert mib(10 * 2**20) == "10 MiB" and mib(19_361_543) == "18.5 MiB"
    message = too_large(19_361_543, 10 * 2**20)
    assert "18.5 MiB" in message and "10 MiB" in message and "19,361,543 bytes" in message


def test_bare_page_names_redirect_to_the_pages(client: httpx.Client) -> None:
    for name in ("about", "recognize"):
        moved = client.get(f"/{name}?target=https://example.com/", follow_redirects=False)
        assert moved.status_code == 308 and moved.headers["location"] == f"{name}.html", moved.headers
        page = client.get(f"/{name}", follow_redirects=True)
        assert (
            page.status_code == 200
            and "<html" in page.text.lower()
            and str(page.url).endswith(f"/{name}.html")
        )
    assert client.get("/index", follow_redirects=False).status_code == 404  # "/" is the index
    assert client.get("/no-such-page", follow_redirects=False).status_code == 404
