"""Block-by-block work on dask: a list of dask tasks run as an engine generator.

:func:`compute_iter` yields ``Progress`` as tasks end and stops the work when the generator is
closed (Cancel) or interrupted, leaving no thread writing afterwards; :func:`blocks` tiles a
plane into blocks and :func:`shared` makes one graph key of an object many tasks read. Used by
the blockwise post-processing and the blockwise measurements.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .events import Progress


def _compute_on_threads(tasks: list, callbacks: list) -> tuple:
    """``dask.compute(*tasks)`` on local threads that leaves no thread writing once it has
    returned or raised.

    A Ctrl-C, an error or a stop from ``callbacks`` (dask's local-scheduler callback tuples)
    waits for the running tasks and cancels the queued ones before it propagates: otherwise
    dask's shared pool goes on running them, and their writes land in stores the caller has
    already removed.
    """
    import dask
    from dask.system import CPU_COUNT

    pool = ThreadPoolExecutor(max_workers=CPU_COUNT, thread_name_prefix="postprocess")
    try:
        return dask.compute(*tasks, scheduler="threads", pool=pool, callbacks=callbacks)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _distributed() -> bool:
    """Whether a scheduler other than local threads (a dask.distributed client) is the default."""
    from dask.base import get_scheduler

    return get_scheduler() is not None


class _Stopped(Exception):
    """Raised in dask's scheduling thread to stop a computation whose generator was closed."""


def compute_iter(tasks: list, threads_only: bool,
                  progress: ProgressCounter) -> Generator[Progress, None, tuple]:
    """``dask.compute(*tasks)`` as an engine generator: yields ``progress`` as the tasks end, and
    stops the work when closed (Cancel) or interrupted.

    On local threads (``threads_only``, or when no dask.distributed client is the default)
    the computation runs in a thread of its own; closing the generator drops the queued
    tasks, lets the running ones finish and only then goes on, so nothing writes afterwards.
    On a distributed client the tasks run as one blocking call.
    """
    if not threads_only and _distributed():
        import dask

        result = dask.compute(*tasks)
        yield progress.add(len(tasks))
        return result
    keys = {t.key for t in tasks}
    ended: list = []  # keys of ``tasks`` that finished (list.append is atomic)
    stop = threading.Event()

    def pretask(key, dsk, state):  # dask calls this before it submits each task
        if stop.is_set():
            raise _Stopped

    def posttask(key, result, dsk, state, worker_id):
        if key in keys:
            ended.append(key)

    outcome: dict[str, Any] = {}
    finished = threading.Event()  # not Thread.join: a Ctrl-C inside join can leave it unusable

    def drive() -> None:
        try:
            outcome["result"] = _compute_on_threads(tasks, [(None, None, pretask, posttask, None)])
        except BaseException as exc:  # handed to the generator's caller
            outcome["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=drive, name="postprocess-driver", daemon=True).start()
    seen = 0
    try:
        while not finished.wait(0.1) or len(ended) > seen:
            if len(ended) > seen:
                yield progress.add(len(ended) - seen)
                seen = len(ended)
    finally:
        stop.set()
        finished.wait()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class ProgressCounter:
    """Steps done (blocks over all passes, or planes) of one post-processing run, as
    ``Progress(stage="postprocess")`` events timed from the counter's creation."""

    def __init__(self, total: int) -> None:
        self.done, self.total, self.start = 0, total, time.perf_counter()

    def add(self, n: int) -> Progress:
        self.done += n
        return Progress(self.done, self.total, time.perf_counter() - self.start, "postprocess")


def shared(obj: Any) -> Any:
    """``obj`` as one dask graph key, for an object many tasks read."""
    import dask

    return dask.delayed(obj, name=f"shared-{uuid.uuid4().hex}")


def blocks(shape: tuple[int, int], block: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Row-major list of the blocks tiling ``shape``."""
    return [
        (slice(y, min(y + block[0], shape[0])), slice(x, min(x + block[1], shape[1])))
        for y in range(0, shape[0], block[0])
        for x in range(0, shape[1], block[1])
    ]
