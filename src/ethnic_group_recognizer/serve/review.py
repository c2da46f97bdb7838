"""``egr review``: a local web page to go through the cleaner's queue, one click or key per image.

Why a separate small app: reviewing touches the dataset on disk, which the public serving app
must never do. Every change goes through :mod:`ethnic_group_recognizer.clean` (logged, undoable);
where each image stands is read back from the manifest, so the page and the files always agree.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field

from ethnic_group_recognizer import clean
from ethnic_group_recognizer.config import ABSTAIN_LABEL, LABELS
from ethnic_group_recognizer.dataset import Dataset
from ethnic_group_recognizer.images import ImageError, load_image
from ethnic_group_recognizer.serve.errors import APIError, install_error_handlers

WEB_DIR = Path(__file__).resolve().parent.parent / "web" / "review"
THUMB_SIDE = 360


class ActionRequest(BaseModel):
    """One reviewer decision: keep, remove or relabel ``paths`` (queue paths)."""

    action: str = Field(pattern="^(keep|remove|relabel|keep_one)$")
    paths: list[str] = Field(min_length=1, max_length=500)
    label: str | None = None  # relabel: the new label
    remove_paths: list[str] = Field(default_factory=list, max_length=500)  # keep_one: the rest of the group


class ReviewState:
    """The queue and the dataset behind the page; one lock, since actions move files."""

    def __init__(self, root: Path, queue: list[clean.Flag]):
        self.root = root
        self.queue = queue
        self.by_path = {flag.path: flag for flag in queue}
        self.lock = threading.Lock()

    def dataset(self) -> Dataset:
        return Dataset(self.root)

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
        labels = sorted(
            set(LABELS) | {ABSTAIN_LABEL} | {r.label for r in dataset.records.values()},
            key=lambda x: (x == ABSTAIN_LABEL, x),
        )
        return {
            "dataset": self.root.name,
            "labels": labels,
            "items": items,
            "left": left,
            "total": len(items),
            "undoable": sum(1 for e in clean.history(self.root) if e["kind"] != "undo" and not e["undone"]),
        }

    def apply(self, request: ActionRequest) -> None:
        with self.lock:
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
                    if not request.label:
                        raise APIError(422, "relabel needs a label")
                    for path in paths:
                        clean.relabel(self.root, path, request.label)
            except clean.CleanError as error:
                raise APIError(409, str(error)) from None

    def _current(self, dataset: Dataset, path: str) -> str:
        """The manifest path of a queued image now (a relabel moves it)."""
        flag = self.by_path.get(path)
        if flag is None:
            if path in dataset.records:
                return path
            raise APIError(404, f"not in the review queue: {path}")
        return clean.review_status(dataset, flag)[1]

    def undo(self) -> int:
        with self.lock:
            try:
                return len(clean.undo(self.root))
            except clean.CleanError as error:
                raise APIError(409, str(error)) from None


def create_review_app(dataset_dir: str | Path, queue: list[clean.Flag] | None = None) -> FastAPI:
    """The review app for one dataset; ``queue`` defaults to the one ``egr clean`` saved."""
    root = Path(dataset_dir)
    clean.recover(root)
    if queue is None:
        queue = clean.load_queue(root)
        if queue is None:
            raise FileNotFoundError(f"{root}: no review queue yet; run 'egr clean {root}' first")
    state = ReviewState(root, queue)
    app = FastAPI(title="egr review", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.state.review = state

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
        """An image by its manifest path (only paths in the manifest: nothing else on disk is served)."""
        dataset = state.dataset()
        try:
            file = clean.file_of(dataset, path)
        except clean.CleanError as error:
            raise APIError(404, str(error)) from None
        if not file.is_file():
            raise APIError(404, f"file missing on disk: {path}")
        headers = {"Cache-Control": "no-store"}
        if not thumb:
            return FileResponse(file, headers=headers)
        try:
            image = load_image(file)
        except ImageError:
            return Response(_placeholder(), media_type="image/png", headers=headers)
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        return Response(buffer.getvalue(), media_type="image/jpeg", headers=headers)

    app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="review-web")
    return app


def _placeholder() -> bytes:
    """A grey square for files that cannot be decoded (the card still shows why)."""
    buffer = io.BytesIO()
    Image.new("RGB", (THUMB_SIDE, THUMB_SIDE), (200, 200, 200)).save(buffer, "PNG")
    return buffer.getvalue()
