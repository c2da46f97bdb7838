"""``egr collect``: the downloader against a real HTTP server on 127.0.0.1, the DuckDuckGo adapter
on recorded responses, and whole runs (provenance, de-duplication, resuming) from a URL list."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ethnic_group_recognizer.cli import app
from ethnic_group_recognizer.collect import (
    CollectError,
    CollectOptions,
    Downloader,
    DuckDuckGoSource,
    FolderSource,
    HostRateLimiter,
    UrlListSource,
    collect,
    parse_ddgs_images,
    prepare_image,
)
from ethnic_group_recognizer.dataset import Dataset
from ethnic_group_recognizer.images import ImageError, sha256_bytes

DATA = Path(__file__).parent / "data"


def photo(seed: int, size: tuple[int, int] = (200, 160), fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


JPEG = photo(1)
PNG = photo(2, fmt="PNG")
WEBP = photo(3, fmt="WEBP")
HTML = b"<!DOCTYPE html><html><body>Sorry, this image is not available.</body></html>"


class Handler(BaseHTTPRequestHandler):
    """Routes for every way a download can go wrong; counts hits per path."""

    hits: Counter = Counter()
    times: list[float] = []
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        """Keep test output clean."""

    def send(
        self, status: int, body: bytes, content_type: str = "image/jpeg", length: int | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?")[0]
        with self.lock:
            self.hits[path] += 1
            self.times.append(time.monotonic())
            hit = self.hits[path]
        if path.startswith("/img/"):  # /img/<seed>.jpg: a distinct photo per seed
            self.send(200, photo(int(path[5:].split(".")[0])))
        elif path == "/ok.jpg":
            self.send(200, JPEG)
        elif path == "/ok.png":
            self.send(200, PNG, "image/png")
        elif path == "/image-as-text":
            self.send(200, WEBP, "text/plain")  # wrong header, real image: content decides
        elif path == "/html.jpg":
            self.send(200, HTML, "image/jpeg")  # HTML pretending to be an image
        elif path == "/missing.jpg":
            self.send(404, b"not found", "text/plain")
        elif path == "/error.jpg":
            self.send(500, b"boom", "text/plain")
        elif path == "/flaky.jpg":
            self.send(503, b"busy", "text/plain") if hit == 1 else self.send(200, photo(7))
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/ok.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/slow.jpg":
            time.sleep(1.5)
            self.send(200, JPEG)
        elif path == "/drip.jpg":  # headers at once, then a byte at a time: read timeouts never fire
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(JPEG)))
            self.end_headers()
            try:
                for index in range(len(JPEG)):
                    self.wfile.write(JPEG[index : index + 1])
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif path == "/truncated.jpg":  # the connection closes early
            self.send(200, JPEG[: len(JPEG) // 2], length=len(JPEG))
        elif path == "/cut.jpg":  # a complete response of an incomplete file
            self.send(200, JPEG[: len(JPEG) // 2])
        elif path == "/huge.jpg":
            self.send(200, b"\xff\xd8\xff" + b"\0" * 300_000)
        elif path == "/huge-chunked.jpg":  # no Content-Length: the cap must hold while streaming
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"\xff\xd8\xff" + b"\0" * 9_997)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
        elif path == "/tiny.png":
            self.send(200, photo(9, size=(40, 40), fmt="PNG"), "image/png")
        elif path == "/same-a.jpg" or path == "/same-b.jpg":
            self.send(200, photo(11))
        else:
            self.send(404, b"no such route", "text/plain")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def reset_counts() -> None:
    Handler.hits.clear()
    Handler.times.clear()


def downloader(**kwargs) -> Downloader:
    options = dict(
        timeout=0.5, total_timeout=1.0, retries=2, backoff=0.01, per_host_per_second=0, max_bytes=100_000
    )
    options.update(kwargs)
    return Downloader(**options)


@pytest.mark.parametrize(
    ("route", "kind"),
    [("/ok.jpg", "JPEG"), ("/ok.png", "PNG"), ("/image-as-text", "WEBP"), ("/redirect", "PNG")],
)
def test_good_downloads_are_judged_by_content(server: str, route: str, kind: str) -> None:
    with downloader() as client:
        fetched = client.fetch(server + route)
    assert fetched.error is None and fetched.data
    prepared = prepare_image(fetched.data)
    assert prepared.source_format == kind
    assert prepared.jpeg.startswith(b"\xff\xd8\xff")  # always re-encoded to JPEG
    assert Image.open(io.BytesIO(prepared.jpeg)).size == (200, 160)
    if route == "/redirect":
        assert fetched.final_url == server + "/ok.png"


@pytest.mark.parametrize(
    ("route", "error", "transient", "hits"),
    [
        ("/missing.jpg", "HTTP 404", False, 1),
        ("/error.jpg", "HTTP 500", True, 3),  # 1 try + 2 retries
        ("/slow.jpg", "timed out", True, 3),
        ("/drip.jpg", "too slow", True, 3),
        ("/truncated.jpg", "", True, 3),
        ("/huge.jpg", "too large", False, 1),
        ("/huge-chunked.jpg", "too large", False, 1),
        ("/loop", "too many redirects", False, None),
    ],
)
def test_failed_downloads_say_why_and_retry_only_what_may_pass(
    server: str, route: str, error: str, transient: bool, hits: int | None
) -> None:
    # The dripping server must trip the whole-download deadline, not a read timeout (a busy
    # machine can pause a thread for longer than 0.5 s between two bytes).
    with downloader(timeout=5.0 if route == "/drip.jpg" else 0.5) as client:
        fetched = client.fetch(server + route)
    assert fetched.data is None
    assert error in fetched.error
    assert fetched.transient is transient
    if hits is not None:
        assert Handler.hits[route] == hits


def test_retry_with_backoff_recovers_from_a_busy_server(server: str) -> None:
    waits: list[float] = []
    with downloader(backoff=0.2, sleep=waits.append) as client:
        fetched = client.fetch(server + "/flaky.jpg")
    assert fetched.error is None and fetched.attempts == 2
    assert len(waits) == 1 and 0.2 <= waits[0] <= 0.25  # backoff * 2**0, plus up to 25 % jitter


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("/html.jpg", "not an image: the content is HTML"),
        ("/cut.jpg", "truncated"),
        ("/tiny.png", "too small"),
    ],
)
def test_bad_content_is_refused_after_download(server: str, route: str, message: str) -> None:
    with downloader() as client:
        fetched = client.fetch(server + route)
    assert fetched.data is not None
    with pytest.raises(ImageError, match=message):
        prepare_image(fetched.data)


def test_large_images_are_scaled_down_and_metadata_dropped() -> None:
    image = Image.new("RGB", (3000, 1000), (120, 50, 20))
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = "secret description"
    image.save(buffer, "JPEG", exif=exif)
    prepared = prepare_image(buffer.getvalue(), max_side=1200)
    assert (prepared.width, prepared.height) == (1200, 400)
    assert prepared.original_size == (3000, 1000)
    assert b"secret description" not in prepared.jpeg


def test_per_host_rate_limit_spaces_requests(server: str) -> None:
    started = time.monotonic()
    with downloader(per_host_per_second=10) as client:
        threads = [threading.Thread(target=client.fetch, args=(f"{server}/img/{i}.jpg",)) for i in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # Five starts at 10 per second take at least 0.4 s, however the threads are scheduled; the
    # server's clock (which adds its own scheduling jitter) sees them spread out too.
    assert time.monotonic() - started >= 0.4
    assert len(Handler.times) == 5 and max(Handler.times) - min(Handler.times) >= 0.3


def test_rate_limiter_keeps_hosts_apart() -> None:
    limiter = HostRateLimiter(per_second=2)
    started = time.monotonic()
    limiter.wait("a.example")
    limiter.wait("b.example")  # another host: no wait
    assert time.monotonic() - started < 0.2
    limiter.wait("a.example")
    assert time.monotonic() - started >= 0.45


def test_unreachable_and_unsupported_urls() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    with downloader(retries=1) as client:
        refused = client.fetch(f"http://127.0.0.1:{port}/x.jpg")
        assert "connection failed" in refused.error and refused.transient and refused.attempts == 2
        assert "unsupported URL scheme" in client.fetch("ftp://example.org/x.jpg").error


# -- the DuckDuckGo adapter, on recorded responses ---------------------------------------------
def test_ddgs_engine_and_adapter_parse_a_recorded_ijs_response() -> None:
    """DuckDuckGo's own i.js JSON through ddgs's parser, then ours."""
    pytest.importorskip("ddgs", reason="the 'collect' extra (ddgs) is not installed")
    from dataclasses import asdict

    from ddgs.engines.duckduckgo_images import DuckduckgoImages

    raw = (DATA / "ddg_images_ijs.json").read_text(encoding="utf-8")
    items = [asdict(r) for r in DuckduckgoImages().extract_results(raw)]
    results = parse_ddgs_images(items)
    assert [r.image_url for r in results] == [
        "https://upload.example.org/wikipedia/commons/a/ab/Hani_women_in_Yuanyang.jpg",
        "https://images.example.com/photos/akha+headdress+silver.jpg",
        "http://travel.example.net/img/lisu-festival.png",
    ]
    first = results[0]
    assert first.page_url == "https://commons.example.org/wiki/File:Hani_women_in_Yuanyang.jpg"
    assert first.title == "Hani women in traditional dress & silver, Yuanyang"
    assert (first.width, first.height, first.engine, first.licence) == (1600, 1067, "duckduckgo", None)


def test_adapter_drops_unusable_results() -> None:
    items = json.loads((DATA / "ddg_images_results.json").read_text(encoding="utf-8"))
    results = parse_ddgs_images(items)
    urls = [r.image_url for r in results]
    assert urls == [
        "https://cdn.example.com/kazakh-wedding-dress.jpg",
        "https://photos.example.org/uzbek/atlas-silk.webp",
    ]
    assert results[1].width is None and results[1].page_url is None  # "n/a" size, non-http page


@pytest.mark.slow
def test_live_duckduckgo_search_when_a_network_is_present() -> None:
    pytest.importorskip("ddgs", reason="the 'collect' extra (ddgs) is not installed")
    try:
        socket.create_connection(("duckduckgo.com", 443), timeout=3).close()
    except OSError:
        pytest.skip("no network: the live DuckDuckGo search test runs only where duckduckgo.com is reachable")
    try:
        results = DuckDuckGoSource(timeout=10).search("Hani people", "Hani people traditional dress", 10)
    except CollectError as error:
        if "ratelimit" in str(error).lower():
            pytest.skip(f"DuckDuckGo rate-limited this machine: {error}")
        raise
    assert results and all(r.image_url.startswith("http") for r in results)


# -- whole runs --------------------------------------------------------------------------------
def url_list(tmp_path: Path, server: str, lines: list[str]) -> Path:
    path = tmp_path / "urls.txt"
    path.write_text("# test list\n" + "\n".join(line.replace("@", server) for line in lines) + "\n")
    return path


FAST = CollectOptions(per_class=10, workers=4, timeout=0.5, total_timeout=1.0, retries=1, backoff=0.01)


def test_collect_from_a_url_list_records_provenance_and_resumes(tmp_path: Path, server: str) -> None:
    urls = url_list(
        tmp_path,
        server,
        [
            "Hani people\t@/img/21.jpg",
            "Hani people\t@/img/22.jpg",
            "Hani people\t@/same-a.jpg",
            "Hani people\t@/same-b.jpg",  # same bytes under another URL: exact duplicate
            "Hani people\t@/html.jpg",
            "Hani people\t@/missing.jpg",
            "Kazakhs\t@/img/31.jpg",
            "Kazakhs\t@/same-a.jpg",  # already in the dataset under Hani: not stored twice
            "Kazakhs\t@/error.jpg",
        ],
    )
    out = tmp_path / "dataset"
    source = UrlListSource(urls)
    summaries = collect(["Hani people", "Kazakhs"], out, source, FAST, show_progress=False)
    assert (summaries["Hani people"].added, summaries["Hani people"].duplicates) == (3, 1)
    assert summaries["Hani people"].failed == 2
    assert (summaries["Kazakhs"].added, summaries["Kazakhs"].duplicates, summaries["Kazakhs"].failed) == (
        1,
        1,
        1,
    )

    dataset = Dataset.open(out)
    assert dataset.counts() == {"Hani people": 3, "Kazakhs": 1}
    record = next(r for r in dataset.records.values() if r.source == f"{server}/img/21.jpg")
    provenance = record.extra["provenance"]
    assert provenance["query"] == "{label}".format(label="Hani people")
    assert provenance["source_sha256"] == sha256_bytes(photo(21))
    assert provenance["sha256"] == record.sha256 and record.format == "JPEG"
    assert provenance["engine"] == "url-list" and provenance["collected_at"].endswith("Z")
    log = [json.loads(line) for line in (out / ".collect/log.jsonl").read_text().splitlines()]
    assert Counter(e["status"] for e in log) == {"ok": 4, "duplicate": 2, "failed": 3}

    # Second run: finished URLs are skipped; only the transient failure (HTTP 500) is tried again.
    Handler.hits.clear()
    summaries = collect(["Hani people", "Kazakhs"], out, source, FAST, show_progress=False)
    assert summaries["Hani people"].skipped == 6 and summaries["Hani people"].added == 0
    assert dict(Handler.hits) == {"/error.jpg": 2}
    assert Dataset.open(out).counts() == {"Hani people": 3, "Kazakhs": 1}


def test_collect_stops_at_per_class(tmp_path: Path, server: str) -> None:
    urls = url_list(tmp_path, server, [f"@/img/{100 + i}.jpg" for i in range(8)])
    options = CollectOptions(per_class=3, workers=2, timeout=0.5, retries=0)
    summaries = collect(
        ["Bai people"], tmp_path / "d", UrlListSource(urls, "Bai people"), options, show_progress=False
    )
    assert summaries["Bai people"].added == 3
    assert Dataset.open(tmp_path / "d").counts() == {"Bai people": 3}
    # A full class is not searched or downloaded again.
    Handler.hits.clear()
    collect(["Bai people"], tmp_path / "d", UrlListSource(urls, "Bai people"), options, show_progress=False)
    assert not Handler.hits


def test_folder_source_runs_the_same_checks(tmp_path: Path) -> None:
    (tmp_path / "src/Lisu people").mkdir(parents=True)
    (tmp_path / "src/Lisu people/a.png").write_bytes(photo(41, fmt="PNG"))
    (tmp_path / "src/Lisu people/b.jpg").write_bytes(HTML)
    summaries = collect(
        ["Lisu people"], tmp_path / "d", FolderSource(tmp_path / "src"), FAST, show_progress=False
    )
    assert (summaries["Lisu people"].added, summaries["Lisu people"].failed) == (1, 1)
    (record,) = Dataset.open(tmp_path / "d").records.values()
    assert record.path.endswith(".jpg") and record.extra["provenance"]["source_format"] == "PNG"


def test_url_list_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CollectError, match="URL list not found"):
        UrlListSource(tmp_path / "none.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("javascript:alert(1)\n")
    with pytest.raises(CollectError, match="entry 1 is not an http"):
        UrlListSource(bad)
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("link,label\nhttp://x/y.jpg,Bai people\n")
    with pytest.raises(CollectError, match="needs a 'url' column"):
        UrlListSource(csv_file)
    with pytest.raises(CollectError, match="not a usable label"):
        collect(["../up"], tmp_path / "d", FolderSource(tmp_path), show_progress=False)


def test_cli_collect_urls(tmp_path: Path, server: str) -> None:
    urls = tmp_path / "list.csv"
    urls.write_text(
        "url,label,page_url,licence\n"
        f"{server}/img/51.jpg,Qiang people,https://example.org/page,CC BY 4.0\n"
        f"{server}/missing.jpg,Qiang people,,\n"
    )
    out = tmp_path / "dataset"
    result = CliRunner().invoke(
        app,
        [
            "collect",
            "--urls",
            str(urls),
            "--out",
            str(out),
            "--per-class",
            "5",
            "--timeout",
            "0.5",
            "--retries",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Qiang people" in result.stdout
    (record,) = Dataset.open(out).usable()
    assert record.extra["provenance"]["licence"] == "CC BY 4.0"
    assert record.extra["provenance"]["page_url"] == "https://example.org/page"
