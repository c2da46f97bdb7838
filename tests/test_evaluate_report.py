"""report.html of a small model of a user's own classes: honest top losses, a coverage curve, no empty rows.

The model is the tiny mean-colour graph of ``serve_fixtures.tiny_model`` (red, green and blue
photos score kimono, kilt and hanbok; a grey one scores none strongly), so which photos are
mistakes is known exactly; the images are generated here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lxml import html as lxml_html
from PIL import Image
from serve_fixtures import OWN_LABELS, tiny_model

from ethnic_group_recognizer.evaluate import evaluate

COLOURS = {"kimono": (1, 0, 0), "kilt": (0, 1, 0), "hanbok": (0, 0, 1)}
#: matplotlib's first line colour (C0, #1f77b4): the coverage curve is drawn in it.
CURVE_RGB = np.array([31, 119, 180])


def colour_photo(kind: str, shade: float) -> Image.Image:
    """A flat photo of ``kind``'s colour; a different ``shade`` (0-6) gives a different, confident score."""
    if kind == "grey":
        return Image.new("RGB", (48, 48), (128, 128, 128))
    red, green, blue = (int(v * (230 - 12 * shade)) for v in COLOURS[kind])
    return Image.new("RGB", (48, 48), (red, green, blue))


def make_dataset(
    root: Path, per_class: int = 4, mistakes: dict[str, str] | None = None, other: int = 0
) -> Path:
    """``per_class`` right photos per label, plus ``mistakes`` {file under a label folder: colour shown}."""
    for label in OWN_LABELS:
        (root / label).mkdir(parents=True, exist_ok=True)
        for shade in range(per_class):
            colour_photo(label, shade).save(root / label / f"{label}_{shade}.png")
    for index, (relative, kind) in enumerate((mistakes or {}).items()):
        colour_photo(kind, 0.5 + index).save(root / relative)  # not a copy of a right photo
    if other:
        (root / "other").mkdir(exist_ok=True)
        for shade in range(other):
            Image.new("RGB", (48, 48), (120 + 4 * shade,) * 3).save(root / "other" / f"grey_{shade}.png")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return as_one_view_a_row(directory)


def as_one_view_a_row(directory: Path) -> Path:
    """Mark the tiny graph (``pixels`` (N, 3, S, S)) as format 1, which it is, if it was written as a later one."""
    from dataclasses import replace

    from ethnic_group_recognizer.model_dir import read_model_dir, write_model_dir

    metadata = read_model_dir(directory).metadata
    if metadata.format_version != 1:
        write_model_dir(directory, replace(metadata, format_version=1))
    return directory


def report(model: Path, dataset: Path, out: Path) -> tuple[dict, lxml_html.HtmlElement]:
    metrics = evaluate(model, dataset, out, split="all")
    return metrics, lxml_html.fromstring((out / "report.html").read_text(encoding="utf-8"))


def shown_losses(page: lxml_html.HtmlElement) -> list[str]:
    """The dataset paths of the photos shown as top losses."""
    return [small.text_content() for small in page.xpath("//figure//figcaption/small")]


def section_text(page: lxml_html.HtmlElement, heading_start: str) -> str:
    """The text of the h2 that starts with ``heading_start`` and of what follows it up to the next h2."""
    for heading in page.iter("h2"):
        if heading.text_content().startswith(heading_start):
            parts, node = [heading.text_content()], heading.getnext()
            while node is not None and node.tag != "h2":
                parts.append(node.text_content())
                node = node.getnext()
            return " ".join(parts)
    raise AssertionError(f"no section {heading_start!r} in the report")


def test_no_mistakes_says_so_and_shows_no_correct_photo_as_a_loss(model, tmp_path):
    metrics, page = report(model, make_dataset(tmp_path / "ds"), tmp_path / "report")
    assert metrics["accuracy"] == 1.0, "the dataset was made to be recognised perfectly"
    assert shown_losses(page) == []
    assert "no mistakes" in section_text(page, "Top losses").lower()


def test_top_losses_are_the_mistakes_only(model, tmp_path):
    planted = {"kimono/looks_green.png": "kilt", "hanbok/looks_red.png": "kimono"}
    metrics, page = report(model, make_dataset(tmp_path / "ds", mistakes=planted), tmp_path / "report")
    assert metrics["images"] == 14
    assert sorted(shown_losses(page)) == sorted(planted)
    text = section_text(page, "Top losses")
    assert "most confidently wrong" in text and "2 of 14" in text and "no mistakes" not in text.lower()
    thumbnails = page.xpath("//figure/img/@src")
    assert len(thumbnails) == 2 and all(src.startswith("data:image/jpeg;base64,") for src in thumbnails)
    captions = [c.text_content() for c in page.xpath("//figure//figcaption")]
    assert any("true: kimono" in c and "predicted: kilt" in c for c in captions), captions


def test_other_photo_given_a_label_is_a_mistake_and_abstaining_on_other_is_not(model, tmp_path):
    planted = {"other/looks_blue.png": "hanbok"}
    dataset = make_dataset(tmp_path / "ds", mistakes={}, other=3)
    colour_photo("hanbok", 1.5).save(dataset / "other" / "looks_blue.png")
    _, page = report(model, dataset, tmp_path / "report")
    assert shown_losses(page) == list(planted)


def confusion_table(page: lxml_html.HtmlElement) -> tuple[list[str], list[str], list[list[int]]]:
    """(true labels, predicted labels, counts) of the report's confusion-matrix table."""
    tables = page.xpath('//table[@id="confusion"]')
    assert len(tables) == 1, "the report has no confusion-matrix table"
    table = tables[0]
    columns = [th.text_content() for th in table.xpath(".//th[@scope='col']")]
    rows = [th.text_content() for th in table.xpath(".//th[@scope='row']")]
    counts = [[int(td.text_content()) for td in tr.xpath("./td")] for tr in table.xpath(".//tr[td]")]
    return rows, columns, counts


def test_confusion_matrix_has_no_empty_other_row_or_column_without_other_photos(model, tmp_path):
    _, page = report(model, make_dataset(tmp_path / "ds"), tmp_path / "report")
    rows, columns, counts = confusion_table(page)
    assert rows == list(OWN_LABELS)
    assert columns == list(OWN_LABELS), "no photo was abstained on: no abstain column"
    assert counts == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]


def test_confusion_matrix_keeps_the_other_row_when_there_are_other_photos(model, tmp_path):
    _, page = report(model, make_dataset(tmp_path / "ds", other=3), tmp_path / "report")
    rows, columns, counts = confusion_table(page)
    assert rows == [*OWN_LABELS, "other"]
    assert len(columns) == 4 and columns[:3] == list(OWN_LABELS)
    assert counts[3] == [0, 0, 0, 3], "the grey photos are abstained on"


def curve_pixels(png: Path) -> int:
    """How many pixels of the plot are drawn in the curve's colour."""
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    return int((np.abs(pixels - CURVE_RGB).sum(axis=-1) < 40).sum())


def test_coverage_curve_is_drawn_for_a_small_model(model, tmp_path):
    metrics, page = report(model, make_dataset(tmp_path / "ds", per_class=3), tmp_path / "report")
    answered = {point["coverage"] for point in metrics["coverage_curve"] if point["coverage"] > 0}
    assert len(answered) >= 2, "thresholds at the photos' own scores give more than one point"
    assert curve_pixels(tmp_path / "report" / "coverage.png") > 200, "the coverage plot is empty"
    assert "operating points" in page.xpath('string(//p[@id="coverage-note"])')


def test_a_single_point_is_explained_in_words(model, tmp_path):
    dataset = tmp_path / "ds"
    (dataset / "kimono").mkdir(parents=True)
    colour_photo("kimono", 0).save(dataset / "kimono" / "only.png")
    _, page = report(model, dataset, tmp_path / "report")
    note = page.xpath('string(//p[@id="coverage-note"])')
    assert "one point" in note and "coverage 100%" in note, note
    assert curve_pixels(tmp_path / "report" / "coverage.png") > 10, "the single point is drawn"
