"""Views of a photo (views.py), the prediction engine's pipeline (engine.py) and the multi-view graph.

The graph must compute what training calibrated on: the unit mean of the views' unit features,
then the head. These tests check it against numpy on a real trained model.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest
from conftest import pattern_image
from PIL import Image, ImageOps

from ethnic_group_recognizer.engine import grouped, prefetch
from ethnic_group_recognizer.images import ImageError
from ethnic_group_recognizer.views import (
    VIEW_SETS,
    View,
    decode_side,
    parse_views,
    pixel_box,
    render_views,
    view_set,
)


def _old_preprocess(image: Image.Image, size: int, mirror: bool) -> np.ndarray:
    """The preprocessing every format-1 model was trained with (resize, then mirror the image)."""
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    if mirror:
        resized = ImageOps.mirror(resized)
    return ((np.asarray(resized, dtype=np.float32) - 127.0) / 128.0).transpose(2, 0, 1)


def test_full_views_are_bit_identical_to_the_old_preprocessing():
    image = pattern_image("stripes", 1, size=203).resize((203, 150))
    views = render_views(image, VIEW_SETS["mirror"], 64)
    np.testing.assert_array_equal(views[0], _old_preprocess(image, 64, False))
    np.testing.assert_array_equal(views[1], _old_preprocess(image, 64, True))


def test_a_crop_view_is_the_rounded_box_cropped_then_resized():
    image = pattern_image("checker", 2, size=125).resize((125, 95))
    view = View((0.4, 0.0, 1.0, 0.6))
    box = pixel_box(view.box, 125, 95)
    assert box == (50, 0, 125, 57)  # 0.6 * 95 = 57.0
    expected = _old_preprocess(image.crop(box), 48, False)
    np.testing.assert_array_equal(render_views(image, (view,), 48)[0], expected)
    mirrored = render_views(image, (View(view.box, True),), 48)[0]
    np.testing.assert_array_equal(mirrored, expected[:, :, ::-1])


def test_pixel_boxes_round_half_to_even_like_python():
    # 0.2 * 5 = 1.0, 0.5 * 5 = 2.5 -> 2 (half to even), 0.5 * 7 = 3.5 -> 4
    assert pixel_box((0.2, 0.5, 0.5, 1.0), 5, 7) == (1, 4, 2, 7)


def test_view_sets_and_their_decode_side():
    assert len(view_set("crops")) == 7 and len(view_set("mirror")) == 2 and len(view_set("full")) == 1
    assert decode_side(view_set("crops"), 320) == 534  # the 60 % crops still downscale to 320 px
    assert decode_side(view_set("mirror"), 320) == 320
    with pytest.raises(ValueError, match="unknown view set"):
        view_set("everything")


@pytest.mark.parametrize(
    "data, message",
    [
        ("full", "a list"),
        ([], "a list"),
        ([{"box": [0, 0, 1]}], "4 numbers"),
        ([{"box": [0, 0, 1, "1"]}], "4 numbers"),
        ([{"box": [0.5, 0, 0.4, 1]}], "inside the photo"),
        ([{"box": [0, 0, 1.5, 1]}], "inside the photo"),
        ([{"box": [0, 0, 1, 1], "mirror": "yes"}], "true or false"),
        ([{"box": [0, 0, 1, 1], "crop": True}], "'box' and 'mirror'"),
        ([{"box": [0, 0, 1, 1]}] * 33, "1 to 32"),
    ],
)
def test_parse_views_refuses_bad_views(data, message):
    with pytest.raises(ValueError, match=message):
        parse_views(data)


def test_views_round_trip_through_json():
    views = view_set("crops")
    assert parse_views(json.loads(json.dumps([v.to_json() for v in views]))) == views
    assert [v.name for v in views[:3]] == ["full", "full-m", "0-0-0.6-0.6"]


# -- engine ----------------------------------------------------------------------------------
def test_prefetch_keeps_order_yields_expected_errors_and_bounds_the_window():
    running, most = 0, 0
    lock = threading.Lock()

    def work(item: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002)
        with lock:
            running -= 1
        if item % 5 == 3:
            raise ImageError(f"bad {item}")
        return item * 10

    started = []
    items = iter(range(20))

    def counted():
        for item in items:
            started.append(item)
            yield item

    seen = []
    for item, result in prefetch(counted(), work, (ImageError,), window=3, threads=2):
        # never more than the window submitted beyond what has been consumed
        assert len(started) - len(seen) <= 3
        seen.append(item)
        if item % 5 == 3:
            assert isinstance(result, ImageError) and str(result) == f"bad {item}"
        else:
            assert result == item * 10
    assert seen == list(range(20)) and most <= 2


def test_prefetch_raises_unexpected_errors_in_the_caller():
    def work(item: int) -> int:
        raise KeyError(item)

    with pytest.raises(KeyError):
        list(prefetch(range(3), work, (ImageError,)))


def test_grouped_counts_successes_only():
    pairs = [(0, 1), (1, ImageError("x")), (2, 3), (3, 4), (4, ImageError("y"))]
    groups = list(grouped(pairs, 2))
    assert [[i for i, _ in g] for g in groups] == [[0, 1, 2], [3, 4]]


# -- the multi-view model --------------------------------------------------------------------
def _head(model_path):
    import onnx
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model_path)).graph.initializer}
    return weights["head_weight"], weights["head_bias"], float(weights["head_inverse_temperature"])


def test_graph_computes_what_training_calibrated_on(trained_model, tmp_path):
    """Probabilities from the graph = softmax(head(unit mean of the views' unit embeddings)) / T."""
    from ethnic_group_recognizer.backbone import Embedder
    from ethnic_group_recognizer.model import Recognizer

    recognizer = Recognizer.load(trained_model)
    assert recognizer.model_dir.metadata.views_in_graph and len(recognizer.views) == 7
    paths = []
    for i, kind in enumerate(("stripes", "checker", "circles")):
        paths.append(tmp_path / f"{kind}.jpg")
        pattern_image(kind, 500 + i, size=180).resize((180, 130)).save(paths[-1])
    embedder = Embedder("lite0")
    vectors = embedder.embed_image_views([recognizer.decode(p) for p in paths], recognizer.views)
    per_view = vectors / np.linalg.norm(vectors, axis=2, keepdims=True)  # each view's own length
    mean = per_view.mean(axis=1)
    features = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    weight, bias, inverse_temperature = _head(trained_model / "model.onnx")
    logits = (features @ weight + bias) * inverse_temperature
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    actual = recognizer.probabilities([recognizer.decode(p) for p in paths])
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_predict_sources_matches_predict_images_and_keeps_errors_in_place(trained_model, tmp_path):
    from ethnic_group_recognizer.model import Recognizer

    recognizer = Recognizer.load(trained_model)
    good = [tmp_path / "a.jpg", tmp_path / "b.png"]
    pattern_image("circles", 7).save(good[0])
    pattern_image("stripes", 8).save(good[1])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    results = list(recognizer.predict_sources([good[0], broken, good[1]], batch_size=2))
    assert [source for source, _ in results] == [good[0], broken, good[1]]
    assert isinstance(results[1][1], ImageError)
    expected = recognizer.predict_images([recognizer.decode(p) for p in good])
    for (_, got), want in zip([results[0], results[2]], expected, strict=True):
        assert got.label == want.label and got.prediction_set == want.prediction_set
        assert got.confidence == pytest.approx(want.confidence, abs=1e-6)


def _format1_model(source, target):
    """A format-1 directory (before multi-view graphs): a 4-D graph, photo + mirror averaged outside."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shutil.copytree(source, target)
    meta = json.loads((target / "metadata.json").read_text())
    meta["format_version"] = 1
    meta["tta"] = True
    del meta["preprocessing"]["views"]
    (target / "metadata.json").write_text(json.dumps(meta))
    size, outputs = meta["preprocessing"]["image_size"], len(meta["training_counts"]) + 1
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(3, outputs)).astype(np.float32) * 20
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["embedding"]),
            helper.make_node("MatMul", ["embedding", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "format1",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", outputs]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3]),
        ],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), target / "model.onnx")
    return target, weight


def test_a_format1_model_still_averages_photo_and_mirror(trained_model, tmp_path):
    from ethnic_group_recognizer.model import Recognizer

    directory, weight = _format1_model(trained_model, tmp_path / "old")
    recognizer = Recognizer.load(directory)
    assert not recognizer.model_dir.metadata.views_in_graph
    assert recognizer.views == (View(), View(mirror=True))
    image = pattern_image("checker", 9).resize((170, 120))
    views = render_views(image, recognizer.views, recognizer.image_size)
    logits = views.mean(axis=(2, 3)) @ weight
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(recognizer.probabilities([image])[0], softmax.mean(axis=0), rtol=1e-5)
    # its metadata is written back as format 1, without views
    assert "views" not in recognizer.model_dir.metadata.to_json()["preprocessing"]


def test_a_large_batch_is_split_into_runs_of_at_most_16_views(trained_model):
    """Memory stays flat at any --batch-size: 5 photos x 7 views go in runs of 2 photos."""
    from ethnic_group_recognizer.model import Recognizer

    recognizer = Recognizer.load(trained_model)
    calls = []
    session_run = recognizer.session.run

    def counting(names, feeds):
        calls.append(feeds["pixels"].shape[:2])
        return session_run(names, feeds)

    images = [pattern_image(kind, 40 + i) for i, kind in enumerate(["stripes", "checker", "circles"] * 2)][:5]
    pixels = np.stack([recognizer.pixels(image) for image in images])
    recognizer.session.run = counting  # type: ignore[method-assign]
    together, _ = recognizer.run(pixels)
    assert calls == [(2, 7), (2, 7), (1, 7)]
    alone = np.concatenate([recognizer.run(pixels[i : i + 1])[0] for i in range(5)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
