"""The one prediction engine's pipeline: photos decoded and run ahead in threads, results in order.

On 2 cores the model and the decoder each want the CPU (docs/THROUGHPUT.md). With one stream
(``Config.engine_streams() == 1``) the next photos are decoded in one background thread while
the caller runs the model; with more, each stream thread decodes its photo and runs it on a
session of fewer onnxruntime threads (two one-thread streams beat one two-thread stream on 2
cores: while one decodes, the other computes, and no op waits for a second thread).
onnxruntime, Pillow and numpy release the GIL. A window of a few photos bounds memory whatever
the folder holds. Used by ``Recognizer.predict_sources`` (CLI ``egr predict``, ``egr evaluate``,
Ray actors) and ``Embedder.embed_file_views`` (training and cleaning embeddings). A leaf module:
standard library only.

Written here rather than taken from a library: it is a bounded ``ThreadPoolExecutor`` window
(twenty lines); the ones that exist (torch's DataLoader, Ray Data) bring a framework with them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
Output = TypeVar("Output")

#: Photos decoded ahead of the model. 3 to 4 was the best measured; more adds memory, not speed.
WINDOW = 4
#: Decode threads. One overlaps the model; a second competes with it for the 2 cores.
DECODE_THREADS = 1


def prefetch(
    items: Iterable[Item],
    work: Callable[[Item], Result],
    expected: tuple[type[BaseException], ...] = (),
    window: int = WINDOW,
    threads: int = DECODE_THREADS,
) -> Iterator[tuple[Item, Result | BaseException]]:
    """Yield ``(item, work(item))`` in input order, computing up to ``window`` items ahead.

    An ``expected`` exception (an unreadable image) is yielded in place of the result, so one bad
    file never stops a batch; anything else is raised in the caller. Stopping early (closing the
    generator) cancels what has not started.
    """
    if window < 1 or threads < 1:
        raise ValueError("window and threads must be at least 1")

    def guarded(item: Item) -> Result | BaseException:
        try:
            return work(item)
        except expected as error:
            return error

    pending: deque[tuple[Item, Future]] = deque()
    source = iter(items)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="egr-engine") as pool:
        try:
            for item in source:
                pending.append((item, pool.submit(guarded, item)))
                if len(pending) >= window:
                    done_item, future = pending.popleft()
                    yield done_item, future.result()
            while pending:
                done_item, future = pending.popleft()
                yield done_item, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of ``size`` items (the last may be shorter): a stream's share of work."""
    if size < 1:
        raise ValueError("size must be at least 1")
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def grouped(
    results: Iterable[tuple[Item, Result | BaseException]], size: int
) -> Iterator[list[tuple[Item, Result | BaseException]]]:
    """Consecutive results in lists holding at most ``size`` successes (errors ride along)."""
    if size < 1:
        raise ValueError("size must be at least 1")
    group: list[tuple[Item, Result | BaseException]] = []
    successes = 0
    for pair in results:
        group.append(pair)
        if not isinstance(pair[1], BaseException):
            successes += 1
            if successes == size:
                yield group
                group, successes = [], 0
    if group:
        yield group


def streamed(
    items: Iterable[Item],
    prepare: Callable[[Item], Result],
    infer: Callable[[list[Result]], Sequence[Output]],
    streams: int,
    step: int,
    expected: tuple[type[BaseException], ...] = (),
) -> Iterator[tuple[Item, Output | BaseException]]:
    """Yield ``(item, output)`` in input order: ``prepare`` each item (decode, render), ``infer``
    on lists of at most ``step`` prepared ones (one model call), an ``expected`` error in place.

    One stream: items are prepared ahead in a background thread while this one infers. More:
    ``streams`` threads each prepare a chunk and infer it (on a session of fewer threads),
    ``2 x streams`` chunks in flight.
    """

    def inferred(
        group: list[tuple[Item, Result | BaseException]],
    ) -> Iterator[tuple[Item, Output | BaseException]]:
        ready = [value for _, value in group if not isinstance(value, BaseException)]
        outputs = iter(infer(ready) if ready else ())  # type: ignore[arg-type]
        for item, value in group:
            yield item, value if isinstance(value, BaseException) else next(outputs)

    if streams <= 1:
        for group in grouped(prefetch(items, prepare, expected), step):
            yield from inferred(group)
        return

    def prepared_and_inferred(chunk: list[Item]) -> list[tuple[Item, Output | BaseException]]:
        group: list[tuple[Item, Result | BaseException]] = []
        for item in chunk:
            try:
                group.append((item, prepare(item)))
            except expected as error:
                group.append((item, error))
        return list(inferred(group))

    for _, pairs in prefetch(chunks(items, step), prepared_and_inferred, window=2 * streams, threads=streams):
        yield from pairs  # type: ignore[misc] - only unexpected errors reach here, and are raised
