"""The 'not a photograph' check: drawings, flat-colour graphics and stamps are flagged, photos are not.

Every picture is generated here (no ../shared data): a flat-colour cartoon, a stamp with a
perforated edge against a dark backdrop, and photo-like pictures (shading, texture, camera
noise), one of them a studio shot on a plain backdrop, which is what this data is full of.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from ethnic_group_recognizer import clean
from ethnic_group_recognizer.clean.checks import not_photo as not_photo_check
from ethnic_group_recognizer.config import Config


def _jpeg(image: Image.Image, quality: int = 85) -> Image.Image:
    """The picture as a web JPEG would show it (ringing, chroma subsampling)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def photo_like(seed: int, size: tuple[int, int] = (320, 400), backdrop: tuple | None = None) -> Image.Image:
    """Shaded shapes, blurred like a lens, with camera noise; optionally a studio backdrop round it."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    shading = [120 + 60 * np.sin(3 * x + c + rng.uniform(0, 6)) + 40 * np.cos(4 * y + c) for c in range(3)]
    image = Image.fromarray(np.clip(np.stack(shading, axis=-1), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        cx, cy, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(15, 60))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(30, 230, 3)))
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(3)), dtype=float)
    pixels += rng.normal(0, 8, pixels.shape)
    if backdrop is not None:
        subject = np.zeros((height, width), bool)
        subject[height // 6 : -height // 10, width // 4 : -width // 4] = True
        wall = np.array(backdrop, float) + rng.normal(0, 2, pixels.shape)
        pixels = np.where(subject[..., None], pixels, wall)
    return _jpeg(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))


def cartoon(seed: int, size: tuple[int, int] = (400, 320), quality: int = 85) -> Image.Image:
    """A flat-colour cartoon: sky, hills, sun and a figure in costume, with black outlines."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.new("RGB", size, (135, 200, 240))
    draw = ImageDraw.Draw(image)
    line = {"outline": (0, 0, 0), "width": 2}
    draw.ellipse([width * 0.75, height * 0.08, width * 0.9, height * 0.27], fill=(255, 210, 60), **line)
    hills = [
        (0, height * 0.7),
        (width * 0.3, height * 0.5),
        (width * 0.6, height * 0.68),
        (width, height * 0.55),
    ]
    draw.polygon([*hills, (width, height), (0, height)], fill=(110, 180, 90), **line)
    cx = width * (0.35 + 0.1 * rng.random())
    robe = [
        (cx - 45, height * 0.92),
        (cx + 45, height * 0.92),
        (cx + 28, height * 0.45),
        (cx - 28, height * 0.45),
    ]
    draw.polygon(robe, fill=(200, 40, 50), **line)
    draw.rectangle([cx - 30, height * 0.62, cx + 30, height * 0.68], fill=(240, 190, 40), **line)
    draw.ellipse([cx - 24, height * 0.22, cx + 24, height * 0.45], fill=(245, 205, 170), **line)
    draw.polygon(
        [(cx - 30, height * 0.25), (cx + 30, height * 0.25), (cx, height * 0.08)], fill=(60, 60, 170), **line
    )
    return _jpeg(image, quality)


def stamp(seed: int, size: tuple[int, int] = (300, 380), pitch: int = 16, radius: int = 5) -> Image.Image:
    """A postage stamp on a dark backdrop: paper with a tooth every ``pitch`` px, a photo printed on it."""
    width, height = size
    inset = max(6, width // 20)
    dark = (25, 25, 25)
    image = Image.new("RGB", size, dark)
    draw = ImageDraw.Draw(image)
    draw.rectangle([inset, inset, width - inset, height - inset], fill=(246, 244, 238))
    for x in range(inset, width - inset + 1, pitch):
        for y in (inset, height - inset):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=dark)
    for y in range(inset, height - inset + 1, pitch):
        for x in (inset, width - inset):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=dark)
    margin = inset + 2 * radius + 4
    image.paste(photo_like(seed, (width - 2 * margin, height - 2 * margin)), (margin, margin))
    return _jpeg(image)


def reasons(image: Image.Image, drawing: float | None = None) -> list[str]:
    return [text for _, text in clean.not_photo_evidence(clean.picture_stats(image), drawing)]


@pytest.mark.parametrize("quality", [95, 85, 70])
def test_a_flat_colour_cartoon_is_flagged(quality: int) -> None:
    found = reasons(cartoon(seed=quality, quality=quality))
    assert len(found) == 1 and found[0].startswith("flat-colour graphic"), found


def test_a_cartoon_on_white_paper_is_flagged() -> None:
    """The backdrop (the paper) is left out, so a small figure is judged by its own fills."""
    image = Image.new("RGB", (300, 400), (255, 255, 255))
    image.paste(cartoon(seed=3, size=(180, 240)), (60, 80))
    stats = clean.picture_stats(_jpeg(image))
    assert stats.plain_border == 1.0 and stats.subject < 0.5
    assert [t for _, t in clean.not_photo_evidence(stats)][0].startswith("flat-colour graphic")


@pytest.mark.parametrize(
    ("size", "pitch", "radius"), [((300, 380), 16, 5), ((150, 190), 8, 3), ((640, 800), 32, 10)]
)
def test_a_perforated_stamp_is_flagged(size: tuple[int, int], pitch: int, radius: int) -> None:
    image = stamp(seed=pitch, size=size, pitch=pitch, radius=radius)
    stats = clean.picture_stats(image)
    assert stats.perforation is not None
    sides, spacing = stats.perforation
    scale = min(1.0, clean.PICTURE_SIDE / max(size))  # measured at PICTURE_SIDE at most
    assert sides == 4 and spacing == pytest.approx(pitch * scale, rel=0.1)
    (score, text), *_ = clean.not_photo_evidence(stats)
    assert score == 0.8 and text.startswith("perforated edge like a postage stamp (4 sides")


@pytest.mark.parametrize("backdrop", [None, (250, 250, 250), (20, 20, 20)])
def test_photo_like_pictures_are_not_flagged(backdrop: tuple | None) -> None:
    image = photo_like(seed=7, backdrop=backdrop)
    stats = clean.picture_stats(image)
    assert stats.flat < 0.3 and stats.perforation is None
    assert reasons(image) == []
    assert reasons(image, drawing=0.001) == []  # a photo the backbone does not take for a drawing


def test_the_paper_without_teeth_is_no_stamp() -> None:
    """The same stamp with a straight edge: a framed print, not a perforation."""
    image = stamp(seed=1, radius=0)
    assert clean.picture_stats(image).perforation is None


def test_the_drawing_score_needs_less_on_a_plain_border() -> None:
    busy = clean.PictureStats(plain_border=0.0, subject=1.0, flat=0.1, colours=0.2)
    plain = clean.PictureStats(plain_border=1.0, subject=0.4, flat=0.1, colours=0.2)
    assert clean.not_photo_evidence(busy, drawing=0.05) == []
    assert clean.not_photo_evidence(plain, drawing=0.005) == []
    [(score, text)] = clean.not_photo_evidence(plain, drawing=0.05)
    assert (
        0.5 <= score <= 0.8 and text == "the backbone sees a drawing ('comic book' 5.0%, plain border 100%)"
    )
    [(strong, _)] = clean.not_photo_evidence(busy, drawing=0.9)
    [(weak, _)] = clean.not_photo_evidence(busy, drawing=0.12)
    assert strong == pytest.approx(0.5 + 0.3 * np.log10(0.9 / 0.1)) and 0.5 <= weak < strong


def _dataset(root: Path) -> Path:
    for index, label in enumerate(("Bai people", "Kazakhs")):
        (root / label).mkdir(parents=True)
        for i in range(6):
            photo_like(seed=100 * index + i).save(root / label / f"photo_{i}.jpg", quality=90)
    cartoon(seed=1).save(root / "Bai people/cartoon.jpg", quality=90)
    stamp(seed=2).save(root / "Kazakhs/stamp.jpg", quality=90)
    (root / "Bai people/stamp_copy.jpg").write_bytes((root / "Kazakhs/stamp.jpg").read_bytes())
    return root


def test_find_issues_flags_drawings_and_stamps_from_pixels_alone(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "dataset")
    report = clean.find_issues(root, clean.CleanOptions(embeddings=False), show_progress=False)
    flagged = {f.path: f for f in report.flags if "not_photo" in f.checks}
    assert set(flagged) == {"Bai people/cartoon.jpg", "Kazakhs/stamp.jpg", "Bai people/stamp_copy.jpg"}
    assert report.counts["not_photo"] == 3
    for flag in flagged.values():
        assert flag.reasons[-1].startswith("not a photograph? ") and flag.suggestion == "remove"
    assert "perforated edge" in flagged["Kazakhs/stamp.jpg"].reasons[-1]
    assert "only the pixel tests ran" in report.skipped["not_photo"]
    off = clean.find_issues(root, clean.CleanOptions(embeddings=False, not_photo=False), show_progress=False)
    assert not any("not_photo" in f.checks for f in off.flags) and off.skipped["not_photo"] == "turned off"


class FakeEmbedder:
    """Embeddings chosen by file name: 'drawing' files point along the backbone's 'comic book' row."""

    backbone = "lite0"

    def __init__(self, comic_row: np.ndarray):
        self.comic_row = comic_row

    def embed_files(self, paths, hashes, show_progress=True):
        rng = np.random.default_rng(0)
        vectors = rng.normal(0, 0.1, (len(paths), self.comic_row.size)).astype(np.float32)
        for i, path in enumerate(paths):
            if "drawing" in Path(path).name:
                vectors[i] = 5.0 * self.comic_row / np.linalg.norm(self.comic_row)  # P ~ 98 %
        return vectors


def test_the_backbone_drawing_score_flags_what_it_takes_for_a_comic(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    weight, _ = clean._imagenet_head("lite0", Config())
    root = _dataset(tmp_path / "dataset")
    photo_like(seed=99).save(root / "Kazakhs/drawing.jpg", quality=90)  # pixels of a photo
    report = clean.find_issues(root, embedder=FakeEmbedder(weight[clean.DRAWING_CLASS]), show_progress=False)
    flags = {f.path: f for f in report.flags if "not_photo" in f.checks}
    assert "Kazakhs/drawing.jpg" in flags
    assert "the backbone sees a drawing ('comic book'" in flags["Kazakhs/drawing.jpg"].reasons[-1]
    assert not any(p.startswith(("Bai people/photo", "Kazakhs/photo")) for p in flags)
    assert "not_photo" not in report.skipped


def test_without_the_backbone_classifier_only_the_pixel_tests_run(tmp_path: Path, monkeypatch) -> None:
    def missing(backbone, config):
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(not_photo_check, "_imagenet_head", missing)
    root = _dataset(tmp_path / "dataset")
    report = clean.find_issues(root, embedder=FakeEmbedder(np.ones(1280, np.float32)), show_progress=False)
    assert "only the pixel tests ran" in report.skipped["not_photo"]
    assert {f.path for f in report.flags if "not_photo" in f.checks} == {
        "Bai people/cartoon.jpg",
        "Kazakhs/stamp.jpg",
        "Bai people/stamp_copy.jpg",
    }


def test_drawing_probability_is_the_backbone_classifiers_softmax(tmp_path: Path) -> None:
    """From the backbone's embeddings (whatever their pooling and size), the same P('comic book')
    as the full torch network on the image at its ImageNet size."""
    torch = pytest.importorskip("torch")
    from ethnic_group_recognizer.backbone import Embedder, load_torch_backbone, preprocess
    from ethnic_group_recognizer.images import load_image, sha256_file

    path = tmp_path / "cartoon.jpg"
    cartoon(seed=5).save(path, quality=90)
    embedder = Embedder("lite0", Config())
    vectors = embedder.embed_files([path], [sha256_file(path)], show_progress=False)
    report: dict = {}
    [probability] = clean._drawing_probabilities(
        embedder, [path], [sha256_file(path)], vectors, Config(), report, False
    )
    assert report == {}
    size = getattr(embedder.spec, "native_size", embedder.spec.image_size)
    network = load_torch_backbone("lite0").eval()
    with torch.no_grad():
        logits = network(torch.from_numpy(preprocess(load_image(path), size)[None]))
    expected = torch.softmax(logits, dim=1)[0, clean.DRAWING_CLASS].item()
    assert probability == pytest.approx(expected, rel=1e-3)


def test_a_single_class_still_gets_the_drawing_score(tmp_path: Path) -> None:
    """The model-based checks need two classes; the 'not a photograph' check does not."""
    pytest.importorskip("torch")
    weight, _ = clean._imagenet_head("lite0", Config())
    root = tmp_path / "dataset"
    (root / "Bai people").mkdir(parents=True)
    for i in range(3):
        photo_like(seed=i).save(root / f"Bai people/photo_{i}.jpg", quality=90)
    cartoon(seed=1).save(root / "Bai people/cartoon.jpg", quality=90)
    photo_like(seed=9).save(root / "Bai people/drawing.jpg", quality=90)
    report = clean.find_issues(root, embedder=FakeEmbedder(weight[clean.DRAWING_CLASS]), show_progress=False)
    assert "needs at least 2 classes" in report.skipped["mislabel"] and "not_photo" not in report.skipped
    assert {f.path for f in report.flags if "not_photo" in f.checks} == {
        "Bai people/cartoon.jpg",
        "Bai people/drawing.jpg",
    }
