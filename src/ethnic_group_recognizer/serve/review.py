"""``egr review``: a local web page to go through the cleaner's queue, one click or key per image.

Why a separate small app: reviewing touches the dataset on disk, which the public serving app
must never do. Every change goes through :mod:`ethnic_group_recognizer.clean` (logged, undoable)
under the dataset's write lock; where each image stands is read back from the manifest, so the
page and the files always agree.

The page runs on the reviewer's machine, but any other page in their browser can send it
requests, so :class:`ReviewGuard` admits only requests addressed to the server's own address
(no DNS rebinding), from its own origin, and every state-changing one must carry the session
token embedded in the served page and a JSON body (no cross-site form posts).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field

from ethnic_group_recognizer import clean
from ethnic_group_recognizer.dataset import (
    STATUS_QUARANTINED,
    Dataset,
    DatasetError,
    LabelError,
    check_relative_path,
    is_inside,
    validate_label,
)
from ethnic_group_recognizer.images import ImageError, load_image
from ethnic_group_recognizer.locking import DatasetBusyError, dataset_lock
from ethnic_group_recognizer.serve.errors import APIError, install_error_handlers

WEB_DIR = Path(__file__).resolve().parent.parent / "web" / "review"
THUMB_SIDE = 360
#: Files up to this size are served as they are (``thumb=false``); larger ones are re-encoded.
MAX_RAW_BYTES = 50 * 1024 * 1024
#: Longest side of a re-encoded full-size view.
FULL_SIDE = 2048
#: How long an action waits for another egr command writing to the dataset.
LOCK_WAIT_S = 10.0
TOKEN_HEADER = "x-review-token"
TOKEN_PLACEHOLDER = "{{REVIEW_TOKEN}}"
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
#: The page is never framed by another site nor loads anything from elsewhere.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


class ActionRequest(BaseModel):
    """One reviewer decision: keep, remove or relabel ``paths`` (queue paths)."""

    action: str = Field(pattern="^(keep|remove|relabel|keep_one)$")
    paths: list[str] = Field(min_length=1, max_length=500)
    label: str | None = Field(default=None, max_length=1000)  # relabel: the new label
    remove_paths: list[str] = Field(default_factory=list, max_length=500)  # keep_one: the rest of the group


def allowed_hosts(server: tuple[str, int] | None) -> set[str]:
    """``Host`` values that name the address a connection came in on (loopback has its aliases)."""
    if not server or server[1] is None:
        return set()
    host, port = server
    # On loopback, the usual aliases (and 0.0.0.0, which a URL printed for --host 0.0.0.0 names):
    # none is a name an attacker's DNS controls, which is what rebinding needs.
    loopback = {"127.0.0.1", "localhost", "[::1]", "0.0.0.0", "[::]"}
    names = loopback if host in _LOOPBACK else {f"[{host}]" if ":" in host else host}
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:
        hosts |= names
    return hosts


class ReviewGuard:
    """ASGI middleware: right ``Host``, same ``Origin``, and token plus JSON on every state change."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self.problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, code, message = problem
        body = json.dumps({"error": {"status": status, "code": code, "message": message}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def problem(self, scope: Scope) -> tuple[int, str, str] | None:
        headers: dict[str, str] = {}
        for key, value in scope.get("headers", []):
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        hosts = allowed_hosts(scope.get("server"))
        host = headers.get("host", "").lower()
        if host not in hosts:
            expected = ", ".join(sorted(hosts)) or "the server's own address"
            return 403, "wrong_host", f"Host {host!r} is not this review server's address ({expected})"
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in {f"http://{h}" for h in hosts}:
            return 403, "cross_origin", f"requests from {origin!r} are refused: open the review page itself"
        if scope.get("method", "GET") in _SAFE_METHODS:
            return None
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return 403, "cross_origin", "cross-site requests are refused: open the review page itself"
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return 415, "unsupported_media_type", "the review API takes JSON bodies only (application/json)"
        if not secrets.compare_digest(headers.get(TOKEN_HEADER, "").encode(), self.token.encode()):
            return 403, "bad_token", "missing or wrong session token: reload the review page"
        return None


class ReviewState:
    """The queue and the dataset behind the page; actions take the dataset's write lock."""

    def __init__(self, root: Path, queue: list[clean.Flag]):
        self.root = root
        self.queue = queue
        self.by_path = {flag.path: flag for flag in queue}
        self.lock = threading.Lock()

    def dataset(self) -> Dataset:
        try:
            return Dataset(self.root)
        except DatasetError as error:
            raise APIError(409, str(error)) from None

    def items(self) -> dict:
        dataset = self.dataset()
        items, left = [], 0
        for rank, flag in enumerate(self.queue):
            status, current = clean.review_status(dataset, flag)
            left += status == "pending"
            group = []
            for path in flag.group:
                member = self.by_path.get(path)
                member_status = clean.review_status(dataset, member)[0] if member else "pending"
                group.append({"path": path, "status": member_status, "queued": member is not None})
            items.append(
                {
                    "rank": rank,
                    "path": flag.path,
                    "current": current,
                    "label": flag.label,
                    "reasons": flag.reasons,
                    "checks": flag.checks,
                    "score": round(flag.score, 4),
                    "suggestion": flag.suggestion,
                    "group": group,
                    "status": status,
                }
            )
        return {
            "dataset": self.root.name,
            "labels": dataset.labels(),
            "items": items,
            "left": left,
            "total": len(items),
            "undoable": sum(1 for e in clean.history(self.root) if e["kind"] != "undo" and not e["undone"]),
        }

    def apply(self, request: ActionRequest) -> None:
        with self.lock, _write_lock(self.root):
            dataset = self.dataset()
            paths = [self._current(dataset, p) for p in request.paths]
            try:
                if request.action == "keep":
                    clean.keep(self.root, paths)
                elif request.action == "keep_one":
                    others = [self._current(dataset, p) for p in request.remove_paths]
                    clean.keep(self.root, paths, remove_paths=others)
                elif request.action == "remove":
                    reasons = [r for p in request.paths if p in self.by_path for r in self.by_path[p].reasons]
                    clean.remove(self.root, paths, reasons=reasons)
                else:
                    label = self._relabel_target(dataset, request.label)
                    for path in paths:
                        clean.relabel(self.root, path, label)
            except clean.CleanError as error:
                raise APIError(409, str(error)) from None

    @staticmethod
    def _relabel_target(dataset: Dataset, label: str | None) -> str:
        """The page offers only the dataset's own labels; the API takes nothing else either."""
        if not label:
            raise APIError(422, "relabel needs a label")
        try:
            label = validate_label(label)
        except LabelError as error:
            raise APIError(422, str(error)) from None
        labels = dataset.labels()
        if label not in labels:
            raise APIError(422, f"{label!r} is not a label of this dataset ({', '.join(labels)})")
        return label

    def _current(self, dataset: Dataset, path: str) -> str:
        """The manifest path of a queued image now (a relabel moves it)."""
        flag = self.by_path.get(path)
        if flag is None:
            if path in dataset.records:
                return path
            raise APIError(404, f"not in the review queue: {path}")
        return clean.review_status(dataset, flag)[1]

    def undo(self) -> int:
        with self.lock, _write_lock(self.root):
            try:
                return len(clean.undo(self.root))
            except clean.CleanError as error:
                raise APIError(409, str(error)) from None


@contextlib.contextmanager
def _write_lock(root: Path) -> Iterator[None]:
    """The dataset's write lock; another egr command writing to the dataset makes this a 409."""
    try:
        with dataset_lock(root, wait_s=LOCK_WAIT_S):
            yield
    except DatasetBusyError as error:
        raise APIError(409, str(error)) from None


def image_file(dataset: Dataset, path: str) -> tuple[Path, bool]:
    """The file to show for a manifest path, and whether it may be sent as it is.

    Only a regular file inside the dataset folder (symlinks resolved) is sent byte for byte. A
    symlink that ``egr data import --link`` made is shown decoded and re-encoded, never as raw
    bytes; anything else outside the folder (a planted symlink, an absolute or ``..``
    quarantine path in the manifest) is refused.
    """
    record = dataset.records.get(path)
    if record is None:
        raise APIError(404, f"{path}: not in the dataset manifest")
    relative = record.path
    if record.status == STATUS_QUARANTINED:
        relative = (record.extra.get("quarantine") or {}).get("path")
    try:
        file = dataset.root / check_relative_path(relative)
    except DatasetError:
        raise APIError(403, f"{path}: the manifest names a file outside the dataset; not served") from None
    if not os.path.lexists(file):
        raise APIError(404, f"file missing on disk: {path}")
    raw = is_inside(dataset.root, file)
    if not raw and record.extra.get("link") != os.path.realpath(file):
        raise APIError(403, f"{path}: leads outside the dataset; not served")
    try:
        regular = stat.S_ISREG(os.stat(file).st_mode)
    except OSError:
        regular = False
    if not regular:
        raise APIError(403, f"{path}: not a regular file; not served")
    return file, raw


def _read_regular(file: Path) -> bytes | None:
    """The file's bytes if it is (still) a regular file within the size limit, opened without following a link."""
    fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RAW_BYTES:
            return None
        return handle.read(MAX_RAW_BYTES + 1)


def create_review_app(dataset_dir: str | Path, queue: list[clean.Flag] | None = None) -> FastAPI:
    """The review app for one dataset; ``queue`` defaults to the one ``egr clean`` saved."""
    root = Path(dataset_dir)
    clean.recover(root)
    if queue is None:
        queue = clean.load_queue(root)
        if queue is None:
            raise FileNotFoundError(f"{root}: no review queue yet; run 'egr clean {root}' first")
    state = ReviewState(root, queue)
    token = secrets.token_urlsafe(32)
    page = (WEB_DIR / "index.html").read_text(encoding="utf-8").replace(TOKEN_PLACEHOLDER, token)
    app = FastAPI(title="egr review", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.add_middleware(ReviewGuard, token=token)
    app.state.review = state
    app.state.token = token

    @app.get("/", response_class=HTMLResponse)
    @app.get("/index.html", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        """The page, with this session's token in it (a page on another origin cannot read it)."""
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/api/queue")
    def get_queue() -> dict:
        """Every queued image with its reasons and where it stands now, plus the counters."""
        return state.items()

    @app.post("/api/action")
    def post_action(request: ActionRequest) -> dict:
        state.apply(request)
        return state.items()

    @app.post("/api/undo")
    def post_undo() -> dict:
        if not state.undo():
            raise APIError(409, "nothing to undo")
        return state.items()

    @app.get("/api/image")
    def get_image(path: str, thumb: bool = True) -> Response:
        """An image by its manifest path; only files inside the dataset are ever sent as they are."""
        file, raw = image_file(state.dataset(), path)
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        if not thumb and raw:
            try:
                data = _read_regular(file)
            except OSError:
                raise APIError(403, f"{path}: not a regular file inside the dataset; not served") from None
            if data is not None:
                media_type = _MEDIA_TYPES.get(file.suffix.lower(), "application/octet-stream")
                return Response(data, media_type=media_type, headers=headers)
        try:
            image = load_image(file)
        except ImageError:
            return Response(_placeholder(), media_type="image/png", headers=headers)
        side = THUMB_SIDE if thumb else FULL_SIDE
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        return Response(buffer.getvalue(), media_type="image/jpeg", headers=headers)

    app.mount("/", StaticFiles(directory=WEB_DIR, html=False), name="review-web")
    return app


def _placeholder() -> bytes:
    """A grey square for files that cannot be decoded (the card still shows why)."""
    buffer = io.BytesIO()
    Image.new("RGB", (THUMB_SIDE, THUMB_SIDE), (200, 200, 200)).save(buffer, "PNG")
    return buffer.getvalue()
