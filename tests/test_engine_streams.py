"""The engine's streams: several photos decoded and run at once, the same answers, in order."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import pattern_image

from ethnic_group_recognizer.config import MAX_STREAMS, Config
from ethnic_group_recognizer.engine import chunks
from ethnic_group_recognizer.images import ImageError


def test_chunks_cover_every_item_in_order():
    assert list(chunks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks([], 2)) == []
    with pytest.raises(ValueError, match="at least 1"):
        list(chunks(range(3), 0))


@pytest.mark.parametrize(
    ("threads", "streams", "cores", "engine_streams", "stream_threads"),
    [
        (0, 0, 2, 2, 1),  # the 2-core default: two one-thread streams
        (0, 0, 16, MAX_STREAMS, 16 // MAX_STREAMS),  # capped: each stream holds a photo's activations
        (0, 0, 1, 1, 1),
        (3, 0, 16, 1, 3),  # threads given: one stream with them, as before streams
        (4, 2, 16, 2, 2),
        (0, 1, 2, 1, 2),  # one stream asked for: the whole machine's threads in it
    ],
)
def test_streams_and_their_threads(monkeypatch, threads, streams, cores, engine_streams, stream_threads):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    config = Config(threads=threads, streams=streams)
    assert (config.engine_streams(), config.stream_threads()) == (engine_streams, stream_threads)


def test_streams_are_validated_once():
    with pytest.raises(ValueError, match="streams"):
        Config(streams=-1)


def _photos(tmp_path, count):
    paths = []
    for i in range(count):
        paths.append(tmp_path / f"{i}.jpg")
        pattern_image(("stripes", "checker", "circles")[i % 3], 60 + i).save(paths[-1])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    return [*paths[:2], broken, *paths[2:]]


def test_two_streams_give_the_one_stream_answers_in_order(trained_model, tmp_path):
    from ethnic_group_recognizer.model import Recognizer

    sources = _photos(tmp_path, 5)
    one = Recognizer.load(trained_model, Config(streams=1))
    two = Recognizer.load(trained_model, Config(streams=2, threads=2))
    seen: set[str] = set()
    decode = two.decode

    def watched(source):  # a spy: which threads decode (the real decoder runs)
        seen.add(threading.current_thread().name)
        return decode(source)

    expected = list(one.predict_probabilities(sources))
    got = list(two.predict_probabilities(sources, decode=watched))
    assert [s for s, _ in got] == sources == [s for s, _ in expected]
    assert isinstance(got[2][1], ImageError) and isinstance(expected[2][1], ImageError)
    for (_, a), (_, b) in zip(got, expected, strict=True):
        if not isinstance(a, BaseException):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert len({name for name in seen if name.startswith("egr-engine")}) == 2  # both streams worked
    assert two._stream_session is not None  # its own one-thread session
    assert two._stream_session.get_session_options().intra_op_num_threads == 1


def test_one_photo_keeps_the_full_session(trained_model, tmp_path):
    from ethnic_group_recognizer.model import Recognizer

    recognizer = Recognizer.load(trained_model, Config(streams=2, threads=2))
    path = _photos(tmp_path, 1)[0]
    [(source, row)] = list(recognizer.predict_probabilities([path]))
    assert source == path and row.shape == (len(recognizer.labels) + 1,)
    assert recognizer._stream_session is None  # one photo is not batch work: no second session


def test_embeddings_are_the_same_on_one_or_two_streams(tmp_path):
    from ethnic_group_recognizer.backbone import Embedder
    from ethnic_group_recognizer.views import view_set

    sources = [p for p in _photos(tmp_path, 4) if p.name != "broken.jpg"]
    hashes = [f"{i:064x}" for i in range(len(sources))]
    views = view_set("crops")
    vectors = {}
    for streams in (1, 2):
        embedder = Embedder(
            "lite0", Config(streams=streams, threads=2, cache_dir=tmp_path / f"cache{streams}")
        )
        assert embedder.session.get_session_options().intra_op_num_threads == 2 // streams
        vectors[streams] = embedder.embed_file_views(sources, hashes, views, show_progress=False)
    assert vectors[1].shape == (4, len(views), 1280)
    np.testing.assert_allclose(vectors[2], vectors[1], rtol=1e-4, atol=1e-5)
