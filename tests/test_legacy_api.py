"""The Gradio 3 ``/run/predict`` contract of the original Space, against a real ``egr serve``.

Expected answers come from the product's own :class:`Recognizer` on the same bytes, so the tests
are deterministic whatever the shipped model predicts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fixtures_static.servers import data_url, default_recognizer, egr_serve, photo_bytes, plain_bytes

from ethnic_group_recognizer.config import ABSTAIN_TEXT, LABELS
from ethnic_group_recognizer.model import Prediction, Recognizer
from ethnic_group_recognizer.serve.errors import APIError
from ethnic_group_recognizer.serve.legacy import label_payload, parse_legacy_body
from ethnic_group_recognizer.serve.payload import body_limit as max_body_bytes

ALLOWED_ORIGIN = "http://allowed.example:5173"
MAX_UPLOAD_MB = 1  # a small limit keeps the oversized-upload tests light


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]


def assert_matches(body: dict, expected: Prediction, low_data: set[str]) -> None:
    """A Gradio 3 response that says exactly what the product says about the same bytes."""
    assert set(body) >= {"data", "is_generating", "duration", "average_duration"}
    assert body["is_generating"] is False
    assert body["duration"] >= 0 and body["average_duration"] >= 0
    assert len(body["data"]) == 1
    answer = body["data"][0]
    assert isinstance(answer["label"], str) and answer["label"]
    assert answer["label"] == expected.display_label
    assert answer["abstained"] is expected.abstained
    confidences = answer["confidences"]
    assert [c["label"] for c in confidences] == [label for label, _ in expected.ranked()]
    assert sorted(c["label"] for c in confidences) == sorted(LABELS)
    values = [c["confidence"] for c in confidences]
    assert values == sorted(values, reverse=True)
    for item in confidences:
        assert item["confidence"] == pytest.approx(expected.scores[item["label"]], abs=1e-5)
        assert item["low_data"] is (item["label"] in low_data)


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return default_recognizer()


@pytest.fixture(scope="module")
def server(recognizer: Recognizer) -> Iterator[str]:
    with egr_serve("--cors-origins", ALLOWED_ORIGIN, "--max-upload-mb", str(MAX_UPLOAD_MB)) as running:
        yield running.base


# -- pure parts of the contract ------------------------------------------------------------------


def test_abstention_is_a_readable_sentence_with_scores() -> None:
    scores = {label: (0.2 if label == "Kazakhs" else 0.05) for label in LABELS}
    payload = label_payload(Prediction(label=None, confidence=0.2, scores=scores), {"Mon people"})
    assert payload["label"] == ABSTAIN_TEXT
    assert payload["abstained"] is True and payload["low_data"] is False
    assert payload["confidences"][0] == {"label": "Kazakhs", "confidence": 0.2, "low_data": False}
    assert len(payload["confidences"]) == 12
    assert {c["label"] for c in payload["confidences"] if c["low_data"]} == {"Mon people"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "JSON"),
        (b'["data:image/png;base64,AAAA"]', '"data" list'),
        (b'{"data": "data:image/png;base64,AAAA"}', '"data" list'),
        (b'{"data": []}', "exactly one"),
        (b'{"data": ["data:image/png;base64,AA", "data:image/png;base64,AA"]}', "exactly one"),
        (b'{"data": [null]}', "data URL string"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, fragment: str) -> None:
    with pytest.raises(APIError) as caught:
        parse_legacy_body(body)
    assert caught.value.status == 422
    assert fragment in caught.value.message


def test_body_limit_leaves_room_for_the_base64_of_the_largest_image() -> None:
    limit = 3 * 1024 * 1024
    assert max_body_bytes(limit) >= len(data_url(b"\0" * limit, "image/png")) + 1000


# -- against the real server ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_legacy_route_answers_like_gradio3(server: str, recognizer: Recognizer, fmt: str, mime: str) -> None:
    image = photo_bytes(fmt)
    response = httpx.post(server + "/run/predict", json={"data": [data_url(image, mime)]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert_matches(response.json(), recognizer.predict(image), set(recognizer.low_data_labels()))


def test_abstaining_photo_gets_a_readable_label(server: str, recognizer: Recognizer) -> None:
    image = plain_bytes()
    expected = recognizer.predict(image)
    response = httpx.post(server + "/run/predict", json={"data": [data_url(image, "image/png")]}, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()["data"][0]
    assert isinstance(answer["label"], str) and answer["label"]
    assert answer["label"] == expected.display_label
    if expected.abstained:
        assert answer["label"] == recognizer.model_dir.metadata.card_or_default.none_of_these
        assert answer["abstained"] is True
        assert len(answer["confidences"]) == 12


@pytest.mark.parametrize("path", ["/api/predict", "/run/predict/", "/api/predict/"])
def test_every_gradio3_spelling_of_the_route(server: str, recognizer: Recognizer, path: str) -> None:
    image = photo_bytes("PNG", seed=1)
    response = httpx.post(server + path, json={"data": [data_url(image, "image/png")]}, timeout=30)
    assert response.status_code == 200, response.text
    assert_matches(response.json(), recognizer.predict(image), set(recognizer.low_data_labels()))


def test_gradio3_client_extras_and_text_plain_bodies(server: str, recognizer: Recognizer) -> None:
    """Gradio 3's JS client adds fn_index and session_hash; a bare fetch labels JSON text/plain."""
    image = photo_bytes("JPEG", seed=2)
    body = json.dumps({"data": [data_url(image, "image/jpeg")], "fn_index": 0, "session_hash": "abc123"})
    response = httpx.post(
        server + "/run/predict",
        content=body,
        headers={"Content-Type": "text/plain;charset=UTF-8"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert_matches(response.json(), recognizer.predict(image), set(recognizer.low_data_labels()))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 422),
        (b'{"data": []}', 422),
        (b'{"data": ["just some text"]}', 422),
        (b'{"data": ["data:image/png,raw-not-base64"]}', 422),
        (b'{"data": ["data:text/plain;base64,aGVsbG8gd29ybGQ="]}', 415),
        (b'{"data": ["data:application/pdf;base64,JVBERi0xLjQK"]}', 415),
        (b'{"data": ["data:image/png;base64,aGVsbG8gd29ybGQ="]}', 415),  # says PNG, is text
    ],
)
def test_bad_requests_get_the_right_4xx(server: str, body: bytes, status: int) -> None:
    response = httpx.post(server + "/run/predict", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, status)


def test_corrupt_image_is_a_400(server: str) -> None:
    truncated = photo_bytes("PNG")[:300]
    response = httpx.post(server + "/run/predict", json={"data": [data_url(truncated, "image/png")]})
    assert_error(response, 400)


def test_oversized_data_url_is_a_413(server: str) -> None:
    too_big = b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_UPLOAD_MB * 2**20 + 1)
    response = httpx.post(
        server + "/run/predict", json={"data": [data_url(too_big, "image/png")]}, timeout=30
    )
    assert_error(response, 413)


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_refused_before_it_is_read(server: str, chunked: bool) -> None:
    """With a Content-Length the server refuses at once; without one it stops reading at the limit."""
    huge = b'{"data": ["data:image/png;base64,' + b"A" * (max_body_bytes(MAX_UPLOAD_MB * 2**20) + 10) + b'"]}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(huge), 256 * 1024):
            yield huge[start : start + 256 * 1024]

    content = chunks() if chunked else huge
    response = httpx.post(
        server + "/run/predict", content=content, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413)


def test_cors_preflight_for_the_page_origin_only(server: str) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    allowed = httpx.options(server + "/run/predict", headers={"Origin": ALLOWED_ORIGIN, **preflight})
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers.get("access-control-allow-origin") in (ALLOWED_ORIGIN, "*")
    assert "POST" in allowed.headers.get("access-control-allow-methods", "")
    other = httpx.options(
        server + "/run/predict", headers={"Origin": "http://elsewhere.example", **preflight}
    )
    assert other.headers.get("access-control-allow-origin") is None
    image = photo_bytes("PNG", seed=4)
    simple = httpx.post(
        server + "/api/predict",
        json={"data": [data_url(image, "image/png")]},
        headers={"Origin": ALLOWED_ORIGIN},
    )
    assert simple.status_code == 200
    assert simple.headers.get("access-control-allow-origin") in (ALLOWED_ORIGIN, "*")
