"""Batch jobs (ethnic_group_recognizer.batch): Ray Data prediction and embedding on a real local Ray
(2 CPUs) over generated images, and the engine, input and URL checks that need no Ray."""

from __future__ import annotations

import http.server
import json
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import pattern_image
from PIL import Image
from typer.testing import CliRunner

from ethnic_group_recognizer.batch.inputs import Reader, expand_inputs
from ethnic_group_recognizer.cli import app
from ethnic_group_recognizer.config import Config
from ethnic_group_recognizer.images import ImageError, load_image, sha256_file
from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.predict import predict_paths

# Ray Data's own DataContext set-up warns about its deprecated settings; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

RAY_MISSING = "needs the ray extra: pip install '.[ray]'"
BAD_FILES = {"broken.jpg", "tiny.png", "not-really.png"}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: start-up takes seconds, so it is shared by the tests here."""
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    pytest.importorskip("pyarrow", reason=RAY_MISSING)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Ten generated photos (JPEG, PNG with alpha, nested) and three unusable files."""
    root = tmp_path_factory.mktemp("photos")
    (root / "nested").mkdir()
    for i, kind in enumerate(["stripes", "checker", "circles", "noise"] * 2):
        pattern_image(kind, seed=i).save(root / f"{kind}_{i}.jpg", quality=90)
    pattern_image("circles", seed=50).convert("RGBA").save(root / "nested" / "alpha.png")
    pattern_image("stripes", seed=51, size=300).save(root / "nested" / "big.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    Image.new("RGB", (8, 8)).save(root / "tiny.png")
    (root / "not-really.png").write_text("plain text")
    return root


def _rows(folder: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    return {row["path"]: row for row in pq.read_table(folder).to_pylist()}


def _serve(folder: Path):
    """A static file server on 127.0.0.1 for the URL inputs."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.slow
def test_ray_predictions_equal_the_local_engine_and_bad_files_are_rows(local_ray, photos, tmp_path):
    from ethnic_group_recognizer.batch.jobs import predict_to_parquet

    local = {
        r["path"]: r for r in predict_paths(Recognizer.load(), expand_inputs([photos]), show_progress=False)
    }
    out = tmp_path / "results"
    summary = predict_to_parquet([photos], out, batch_size=4, jsonl=True, show_progress=False)

    assert (summary.inputs, summary.processed, summary.errors) == (13, 13, 3)
    rows = _rows(out)
    assert set(rows) == set(local)
    for path, expected in local.items():
        row = rows[path]
        if "error" in expected:
            assert Path(path).name in BAD_FILES
            assert row["error"] == expected["error"] and row["label"] is None and row["scores"] is None
            continue
        assert row["error"] is None and row["label"] == expected["label"]
        assert row["confidence"] == pytest.approx(expected["confidence"], abs=1e-5)
        scores = json.loads(row["scores"])
        assert list(scores) == list(expected["scores"])
        assert np.allclose(list(scores.values()), list(expected["scores"].values()), atol=1e-5)
    # JSONL on request: exactly the `egr predict --jsonl` objects, errors as {"path", "error"}.
    lines = [json.loads(line) for line in (out / "_results.jsonl").read_text().splitlines()]
    assert {line["path"] for line in lines} == set(local)
    for line in lines:
        assert set(line) == set(local[line["path"]])


@pytest.mark.slow
def test_resume_skips_done_inputs_and_reads_lists_with_urls(local_ray, photos, tmp_path):
    server = _serve(photos)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    listing = tmp_path / "list.txt"
    copies = tmp_path / "copies"
    copies.mkdir()
    for name in ("stripes_0.jpg", "checker_1.jpg"):
        (copies / name).write_bytes((photos / name).read_bytes())
    listing.write_text(
        f"# photos to classify\ncopies/stripes_0.jpg\n{base}/circles_2.jpg\n{base}/missing.jpg\n"
    )
    out = tmp_path / "results"
    runner = CliRunner()
    try:
        first = runner.invoke(app, ["predict", str(listing), "--engine", "ray", "--out", str(out)])
        assert first.exit_code == 0, first.output
        rows = _rows(out)
        assert set(rows) == {str(copies / "stripes_0.jpg"), f"{base}/circles_2.jpg", f"{base}/missing.jpg"}
        assert rows[f"{base}/missing.jpg"]["error"] == "cannot fetch URL: HTTP 404"
        assert rows[f"{base}/circles_2.jpg"]["error"] is None
        # The same URL photo read from disk gets the same answer.
        local = next(predict_paths(Recognizer.load(), [photos / "circles_2.jpg"], show_progress=False))
        assert rows[f"{base}/circles_2.jpg"]["confidence"] == pytest.approx(local["confidence"], abs=1e-5)

        # Re-run with one more line and a folder: only the new inputs are processed.
        (copies / "stripes_0.jpg").unlink()  # were it read again, it would now become an error row
        with listing.open("a") as handle:
            handle.write("copies/checker_1.jpg\n")
        second = runner.invoke(app, ["predict", str(listing), "--engine", "ray", "--out", str(out)])
        assert second.exit_code == 0, second.output
        assert "predicted 1 of 4 inputs" in second.output and "3 already done" in second.output
    finally:
        server.shutdown()
    rows = _rows(out)
    assert len(rows) == 4 and rows[str(copies / "stripes_0.jpg")]["error"] is None
    assert rows[str(copies / "checker_1.jpg")]["error"] is None


@pytest.mark.slow
def test_embeddings_on_ray_seed_the_cache_so_training_reads_no_pixels(local_ray, photos, tmp_path):
    from ethnic_group_recognizer.backbone import Embedder, backbone_onnx
    from ethnic_group_recognizer.batch.embeddings import load_embedding_file, seed_embedding_cache
    from ethnic_group_recognizer.batch.jobs import embed_to_parquet

    on_ray = embed_to_parquet([photos], tmp_path / "ray.parquet", engine="ray", show_progress=False)
    here = embed_to_parquet([photos], tmp_path / "local.parquet", engine="local", show_progress=False)
    assert (on_ray.processed, on_ray.errors, here.errors) == (13, 3, 3)
    rows = _rows(tmp_path / "ray.parquet")
    assert {Path(p).name for p, row in rows.items() if row["error"]} == BAD_FILES
    good = sorted(p for p, row in rows.items() if row["error"] is None)
    assert all(rows[p]["sha256"] == sha256_file(p) for p in good)

    embedder = Embedder("lite0", Config())
    vectors = load_embedding_file(tmp_path / "ray.parquet")
    mirrored = load_embedding_file(tmp_path / "ray.parquet", mirror=True)
    images = [load_image(p) for p in good]
    expected = embedder.embed_images(images)
    got = np.stack([vectors[rows[p]["sha256"]] for p in good])
    assert got.shape == (10, 1280) and np.allclose(got, expected, atol=1e-4)
    expected_mirror = embedder.embed_images(images, mirror=True)
    assert np.allclose(np.stack([mirrored[rows[p]["sha256"]] for p in good]), expected_mirror, atol=1e-4)
    local_vectors = load_embedding_file(tmp_path / "local.parquet")
    assert all(np.allclose(local_vectors[k], v, atol=1e-4) for k, v in vectors.items())

    # Seed an empty cache; embedding then needs no file at all (the paths below do not exist).
    config = Config(cache_dir=tmp_path / "cache")
    assert seed_embedding_cache(tmp_path / "ray.parquet", "lite0", config) == {"plain": 10, "mirror": 10}
    cached = Embedder("lite0", config, onnx_path=backbone_onnx("lite0"))
    hashes = [rows[p]["sha256"] for p in good]
    gone = [tmp_path / "gone" / f"{i}.jpg" for i in range(len(good))]
    assert np.array_equal(cached.embed_files(gone, hashes, show_progress=False), got)
    with pytest.raises(ValueError, match="lite0 embeddings, not lite2"):
        seed_embedding_cache(tmp_path / "ray.parquet", "lite2", config)


def test_ray_engine_says_what_is_missing(photos, tmp_path, monkeypatch):
    runner = CliRunner()
    no_out = runner.invoke(app, ["predict", str(photos), "--engine", "ray"])
    assert no_out.exit_code == 2 and "--out" in no_out.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as on an install without the extra
    no_ray = runner.invoke(app, ["predict", str(photos), "--engine", "ray", "--out", str(tmp_path / "r")])
    assert no_ray.exit_code == 2
    assert "pip install '.[ray]'" in " ".join(no_ray.output.split())
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_ray_actors_receive_the_callers_config_and_threshold(local_ray, photos, tmp_path):
    """Actors use the caller's Config as given, not a rebuilt default: a stricter ``min_side``
    refuses the 160 px photos on the actors too, and ``threshold`` makes them abstain."""
    from ethnic_group_recognizer.batch.jobs import embed_to_parquet, predict_to_parquet

    strict = Config(min_side=200)  # only nested/big.jpg (300 px) is large enough
    small = str(photos / "stripes_0.jpg")
    big = str(photos / "nested" / "big.jpg")
    out = tmp_path / "predicted"
    summary = predict_to_parquet([photos], out, config=strict, threshold=1.0, show_progress=False)
    assert (summary.processed, summary.errors) == (13, 12)
    rows = _rows(out)
    assert rows[small]["error"] == "image too small: 160x160 (need 200 px a side)"
    assert rows[big]["error"] is None and rows[big]["label"] is None  # abstained: threshold 1.0
    assert json.loads((out / "_egr.json").read_text())["threshold"] == 1.0

    embedded = embed_to_parquet([photos], tmp_path / "emb", config=strict, show_progress=False)
    assert embedded.errors == 12
    rows = _rows(tmp_path / "emb")
    assert rows[small]["error"] == "image too small: 160x160 (need 200 px a side)"
    assert rows[big]["error"] is None and len(rows[big]["embedding"]) == 1280


@pytest.mark.slow
def test_embed_and_embed_import_commands(photos, tmp_path, monkeypatch):
    """``egr embed`` (local engine) then ``egr embed-import`` into an empty cache of this machine."""
    from ethnic_group_recognizer.backbone import backbone_onnx

    pytest.importorskip("pyarrow", reason=RAY_MISSING)
    runner = CliRunner()
    out = tmp_path / "EMB.parquet"
    result = runner.invoke(app, ["embed", str(photos), "--out", str(out), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "embedded 13 of 13 inputs (3 error rows)" in " ".join(result.output.split())
    # A machine that trains has the backbone exported: copy it, so the test exports nothing.
    exported = backbone_onnx("lite0")
    cache = tmp_path / "cache"
    (cache / "backbones").mkdir(parents=True)
    (cache / "backbones" / exported.name).write_bytes(exported.read_bytes())
    monkeypatch.setenv("EGR_CACHE_DIR", str(cache))
    imported = runner.invoke(app, ["embed-import", str(out)])
    assert imported.exit_code == 0, imported.output
    assert "cached 10 embeddings and 10 mirrored" in imported.output
    names = sorted(p.name for p in (cache / "embeddings").iterdir())
    # the full-photo view and its mirror, decoded as the Ray reader does (draft to the 320 px input)
    assert [name.split("-squish-")[1] for name in names] == ["full-d320.npz", "full-m-d320.npz"]


def test_engine_is_checked_in_one_place(photos, tmp_path):
    from ethnic_group_recognizer.batch.engine import ENGINES, parse_engine

    assert ENGINES == ("local", "ray") and parse_engine("ray") == "ray"
    with pytest.raises(ValueError, match="unknown engine 'spark': use 'local' or 'ray'"):
        parse_engine("spark")
    runner = CliRunner()
    for command in (["predict", str(photos)], ["embed", str(photos), "--out", str(tmp_path / "e")]):
        result = runner.invoke(app, [*command, "--engine", "spark"])
        assert result.exit_code == 2 and "unknown engine 'spark'" in result.output, result.output
    assert not (tmp_path / "e").exists()
    with_csv = runner.invoke(
        app, ["predict", str(photos), "--engine", "ray", "--out", str(tmp_path / "r"), "--csv", "x.csv"]
    )
    assert with_csv.exit_code == 2 and "--csv is for the local engine" in with_csv.output
    assert not (tmp_path / "r").exists()


def test_url_inputs_use_the_capped_reader_shared_with_collect(photos, tmp_path):
    """The batch Reader and collect's Downloader refuse the same bodies with the same words."""
    from ethnic_group_recognizer.collect import Downloader

    served = tmp_path / "served"
    served.mkdir()
    (served / "big.jpg").write_bytes((photos / "nested" / "big.jpg").read_bytes())
    (served / "empty.jpg").write_bytes(b"")
    server = _serve(served)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    size = (served / "big.jpg").stat().st_size
    reader = Reader(max_bytes=1000)
    try:
        with Downloader(max_bytes=1000, retries=0, per_host_per_second=0) as downloader:
            for name, words in (
                ("big.jpg", f"too large: {size:,} bytes (limit 1,000)"),
                ("empty.jpg", "empty response"),
            ):
                assert downloader.fetch(f"{base}/{name}").error == words
                with pytest.raises(ImageError) as refused:
                    reader.read(f"{base}/{name}", Config())
                assert str(refused.value) == f"cannot fetch URL: {words}"
        with pytest.raises(ImageError, match="cannot fetch URL: HTTP 404"):
            reader.read(f"{base}/missing.jpg", Config())
        image, digest = Reader().read(f"{base}/big.jpg", Config(), want_hash=True)
        assert image.size == (300, 300) and digest == sha256_file(served / "big.jpg")
    finally:
        reader.close()
        server.shutdown()


def test_expand_inputs_and_sources_see_the_same_paths(photos, tmp_path):
    from ethnic_group_recognizer.batch.inputs import expand_sources

    listing = tmp_path / "list.txt"
    listing.write_text("# a comment\n\nhttp://127.0.0.1:9/a.jpg\n" + f"{photos / 'tiny.png'}\n")
    paths = [str(p) for p in expand_inputs([photos])]
    assert len(paths) == 13 and paths == sorted(paths)
    assert expand_sources([photos, listing, photos / "tiny.png"]) == [*paths, "http://127.0.0.1:9/a.jpg"]
    assert expand_sources([str(photos / "*.jpg")]) == [str(p) for p in sorted(photos.glob("*.jpg"))]


def test_progress_counts_rows_not_tables(capsys):
    from ethnic_group_recognizer.progress import progress

    tables = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    assert list(progress(tables, "Rows", total=9, weight=len)) == tables
    err = capsys.readouterr().err
    assert "Rows" in err and "9/9" in err
