"""``egr review`` under attack (issue 11, items 7, 8, 9 and 13; issue 14's relabel rule).

A real uvicorn on 127.0.0.1 serves a real dataset in a temp folder; attacks come as plain HTTP
requests (httpx) and, for cross-site forms, from a page on another origin in headless Chromium.
"""

from __future__ import annotations

import http.server
import io
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import pattern_image
from fixtures_static.servers import serve_in_thread as running
from PIL import Image
from test_clean import make_planted

from ethnic_group_recognizer import clean
from ethnic_group_recognizer.dataset import STATUS_QUARANTINED, Dataset, import_images
from ethnic_group_recognizer.serve import review
from ethnic_group_recognizer.serve.review import create_review_app

SECRET = b"TOP SECRET: this file lies outside the dataset"
TIMEOUT_MS = 20_000


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    pattern_image("stripes", seed).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(SECRET)
    (folder / "photo.jpg").write_bytes(jpeg(5))
    return folder


@pytest.fixture
def dataset(tmp_path: Path, outside: Path) -> Path:
    """The planted dataset plus two symlinks out of it (one to a secret, one to a photo)."""
    root = make_planted(tmp_path / "dataset", per_class=4)
    (root / "Bai people/leak.jpg").symlink_to(outside / "secret.txt")
    (root / "Bai people/outside_photo.jpg").symlink_to(outside / "photo.jpg")
    report = clean.find_issues(root, clean.CleanOptions(embeddings=False), show_progress=False)
    clean.save_queue(root, report)
    return root


@pytest.fixture
def served(dataset: Path) -> Iterator[str]:
    with running(create_review_app(dataset)) as url:
        yield url


def token_of(client: httpx.Client) -> str:
    """The session token in the served page ('' if none: the tests that need one then fail)."""
    match = re.search(r'name="egr-review-token" content="([^"]+)"', client.get("/").text)
    return match.group(1) if match else ""


@pytest.fixture
def client(served: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served, timeout=30) as http:
        http.headers["X-Review-Token"] = token_of(http)
        yield http


# -- item 7: nothing outside the dataset is served ---------------------------------------------
@pytest.mark.parametrize("thumb", ["false", "true"])
def test_symlinks_out_of_the_dataset_are_not_served(client: httpx.Client, thumb: str) -> None:
    for path in ("Bai people/leak.jpg", "Bai people/outside_photo.jpg"):
        response = client.get("/api/image", params={"path": path, "thumb": thumb})
        assert response.status_code == 403, (path, response.status_code)
        assert SECRET not in response.content
        assert "outside the dataset" in response.json()["error"]["message"]


def test_files_inside_are_served_as_they_are(client: httpx.Client, dataset: Path) -> None:
    response = client.get("/api/image", params={"path": "Kazakhs/circles_0.jpg", "thumb": "false"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == (dataset / "Kazakhs/circles_0.jpg").read_bytes()
    thumb = client.get("/api/image", params={"path": "Kazakhs/circles_0.jpg"})
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_quarantine_path_outside_the_dataset_is_refused(
    dataset: Path, outside: Path, served: str, client: httpx.Client, where: str
) -> None:
    manifest = Dataset(dataset)
    record = manifest.records["Bai people/stripes_1.jpg"]
    record.status = STATUS_QUARANTINED
    target = str(outside / "secret.txt") if where == "absolute" else "../outside/secret.txt"
    record.extra["quarantine"] = {"path": target, "time": 0.0, "reasons": []}
    manifest.save()
    for thumb in ("false", "true"):
        response = client.get("/api/image", params={"path": "Bai people/stripes_1.jpg", "thumb": thumb})
        assert response.status_code == 403 and SECRET not in response.content


def test_linked_imports_are_shown_but_never_sent_raw(tmp_path: Path) -> None:
    """``import --link`` keeps working: its symlinks lead out, so they are shown re-encoded only."""
    source = tmp_path / "source" / "kimono"
    source.mkdir(parents=True)
    (source / "a.jpg").write_bytes(jpeg(1))
    (source / "b.jpg").write_bytes(jpeg(2))
    root = tmp_path / "linked"
    import_images([tmp_path / "source"], root, link=True, show_progress=False)
    assert all(r.usable for r in Dataset.open(root).records.values())
    app = create_review_app(root, queue=[])
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        response = http.get("/api/image", params={"path": "kimono/a.jpg", "thumb": "false"})
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        assert response.content != (source / "a.jpg").read_bytes()
        assert Image.open(io.BytesIO(response.content)).size == Image.open(source / "a.jpg").size
        (root / "kimono/b.jpg").unlink()  # re-pointed by someone else: no longer what import made
        (root / "kimono/b.jpg").symlink_to(tmp_path / "elsewhere.jpg")
        (tmp_path / "elsewhere.jpg").write_bytes(jpeg(3))
        response = http.get("/api/image", params={"path": "kimono/b.jpg", "thumb": "false"})
        assert response.status_code == 403


# -- item 8: CSRF and DNS rebinding ------------------------------------------------------------
def test_host_origin_token_and_json_are_required(dataset: Path, served: str, client: httpx.Client) -> None:
    port = served.rsplit(":", 1)[1]
    token = client.headers["X-Review-Token"]
    assert len(token) >= 32, "the review page carries a session token"
    bare = {"X-Review-Token": ""}
    # DNS rebinding: a name that is not this server's address is refused, even for reads.
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1:1", f"127.0.0.2:{port}"):
        response = client.get("/api/queue", headers={"Host": host})
        assert response.status_code == 403 and response.json()["error"]["code"] == "wrong_host", host
    page = client.get("/", headers={"Host": f"localhost:{port}"})
    assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    # State changes need the token...
    assert client.post("/api/undo", json={}, headers=bare).status_code == 403
    assert client.post("/api/undo", json={}, headers={"X-Review-Token": token[::-1]}).status_code == 403
    # ...a JSON body...
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        response = client.post("/api/undo", content=b"{}", headers={"Content-Type": content_type})
        assert response.status_code == 415, content_type
    # ...and no foreign origin.
    for origin in ("http://evil.example", f"http://127.0.0.1:{int(port) + 1}", "null"):
        response = client.post("/api/undo", json={}, headers={"Origin": origin})
        assert response.status_code == 403 and response.json()["error"]["code"] == "cross_origin", origin
    # With all of it the request reaches the app (nothing to undo yet).
    response = client.post("/api/undo", json={}, headers={"Origin": served})
    assert response.status_code == 409
    # The token is per session: another app for the same dataset has another one.
    assert create_review_app(dataset, queue=[]).state.token != token


class _Attacker(http.server.BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: object) -> None:
        pass


def attacker_page(target: str) -> bytes:
    """Two auto-submitted cross-site forms: the undo that used to work, and a JSON-looking keep."""
    keep = '{"action":"keep","paths":["Kazakhs/tiny.jpg"],"x":"'
    return f"""<!doctype html><body>
<form id="undo" action="{target}/api/undo" method="post" enctype="text/plain" target="one">
  <input name="x" value="y"></form>
<form id="keep" action="{target}/api/action" method="post" enctype="text/plain" target="two">
  <input name='{keep}' value='"}}'></form>
<iframe name="one"></iframe><iframe name="two"></iframe>
<script>document.getElementById("undo").submit(); document.getElementById("keep").submit();</script>
</body>""".encode()


def test_cross_site_form_posts_change_nothing(
    browser, dataset: Path, served: str, client: httpx.Client
) -> None:
    response = client.post("/api/action", json={"action": "keep", "paths": ["Bai people/copy.jpg"]})
    assert response.status_code == 200
    records = Dataset(dataset).records
    assert records["Bai people/copy.jpg"].extra["review"]["decision"] == "keep"
    assert "review" not in records["Kazakhs/tiny.jpg"].extra
    handler = type("Page", (_Attacker,), {"page": attacker_page(served)})
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    page = browser.new_page()
    replies: list[int] = []
    page.on("response", lambda r: replies.append(r.status) if "/api/" in r.url else None)
    try:
        page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        deadline = time.monotonic() + 20
        while len(replies) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(100)
    finally:
        page.close()
        attacker.shutdown()
    assert sorted(replies) == [403, 403], replies  # both forms reached the server, both were refused
    records = Dataset(dataset).records
    assert records["Bai people/copy.jpg"].extra["review"]["decision"] == "keep"  # not undone
    assert "review" not in records["Kazakhs/tiny.jpg"].extra  # not kept


# -- item 13 and issue 14: relabel only to the dataset's own, valid labels --------------------
@pytest.mark.parametrize(
    ("label", "why"),
    [
        ("a/b", "path separator"),
        ("x\x00y", "control"),
        ("x" * 300, "characters long"),
        ("..", "starts with '.'"),
        ("Akha people", "not a label of this dataset"),
        ("   ", "must not be empty"),
    ],
)
def test_relabel_refuses_bad_and_foreign_labels(
    dataset: Path, client: httpx.Client, label: str, why: str
) -> None:
    before = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*"))
    response = client.post(
        "/api/action", json={"action": "relabel", "paths": ["Kazakhs/tiny.jpg"], "label": label}
    )
    assert response.status_code == 422, response.text
    assert why in response.json()["error"]["message"]
    assert sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*")) == before


def test_queue_offers_only_the_dataset_labels(client: httpx.Client) -> None:
    assert client.get("/api/queue").json()["labels"] == ["Bai people", "Hani people", "Kazakhs", "other"]


# -- item 9: actions hold the dataset's lock ---------------------------------------------------
def test_action_while_another_process_writes_is_a_clear_409(
    dataset: Path, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(review, "LOCK_WAIT_S", 0.5)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from ethnic_group_recognizer.locking import dataset_lock\n"
            "with dataset_lock(sys.argv[1]):\n"
            "    print('locked', flush=True)\n"
            "    sys.stdin.read()\n",
            str(dataset),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        response = client.post("/api/action", json={"action": "keep", "paths": ["Kazakhs/tiny.jpg"]})
        assert response.status_code == 409
        assert "another egr command is changing the dataset" in response.json()["error"]["message"]
        assert "review" not in Dataset(dataset).records["Kazakhs/tiny.jpg"].extra
    finally:
        holder.communicate("", timeout=30)
    response = client.post("/api/action", json={"action": "keep", "paths": ["Kazakhs/tiny.jpg"]})
    assert response.status_code == 200
    assert json.loads((dataset / "manifest.jsonl").read_text().splitlines()[0])  # still valid JSONL


SERVE = (
    "import socket, sys\n"
    "import uvicorn\n"
    "from ethnic_group_recognizer.serve.review import create_review_app\n"
    "app = create_review_app(sys.argv[1])\n"
    "sock = socket.socket()\n"
    "sock.bind(('127.0.0.1', 0))\n"
    "print(sock.getsockname()[1], flush=True)\n"
    "uvicorn.Server(uvicorn.Config(app, log_level='error')).run(sockets=[sock])\n"
)


def test_two_review_servers_on_one_dataset_keep_the_manifest_whole(dataset: Path) -> None:
    """The issue's case: two ``egr review`` processes acting at once on one dataset."""
    servers = [
        subprocess.Popen([sys.executable, "-c", SERVE, str(dataset)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        clients = []
        for server in servers:
            http = httpx.Client(base_url=f"http://127.0.0.1:{server.stdout.readline().strip()}", timeout=60)
            deadline = time.monotonic() + 60
            while True:
                try:
                    http.headers["X-Review-Token"] = token_of(http)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "review server did not start"
                    time.sleep(0.1)
            clients.append(http)
        paths = [flag.path for flag in clean.load_queue(dataset)]
        statuses: list[int] = []

        def keep_all(http: httpx.Client, mine: list[str]) -> None:
            for path in mine:
                statuses.append(
                    http.post("/api/action", json={"action": "keep", "paths": [path]}).status_code
                )

        threads = [threading.Thread(target=keep_all, args=(clients[n], paths[n::2])) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert statuses == [200] * len(paths)
        entries = [json.loads(line) for line in (dataset / "manifest.jsonl").read_text().splitlines()]
        kept = {e["path"] for e in entries if (e["extra"].get("review") or {}).get("decision") == "keep"}
        assert kept == set(paths), "a concurrent writer's keep was lost"
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
