"""Read ahead: run an iterator in a background thread, a few items ahead of its consumer.

Inference reads and normalizes the next batch of windows while the network computes; training
draws the next batch of patches. Both hand over through one bounded queue, so memory stays at
``depth`` items whatever the speed difference.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

_END = object()


class ReadAhead(Iterator):
    """Iterates ``iterable``, with ``enabled`` from a thread that stays ``depth`` items ahead.

    What the iterator raises is raised to the consumer at the same place in the sequence.
    :meth:`close` stops the thread within one item and drops what was read ahead. Without
    ``enabled`` the items are produced in the consumer's thread, one at a time.
    """

    def __init__(self, iterable: Iterable, depth: int = 2, *, enabled: bool = True,
                 name: str = "read-ahead") -> None:
        self._it = iter(iterable)
        self._thread: threading.Thread | None = None
        self._ended = False
        if enabled:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._work, daemon=True, name=name)
            self._thread.start()

    def _put(self, entry: tuple[Any, BaseException | None]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self._it:
                if not self._put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, never swallowed
            self._put((_END, exc))
            return
        self._put((_END, None))

    def __next__(self) -> Any:
        if self._thread is None:
            return next(self._it)
        if self._ended:
            raise StopIteration
        item, exc = self._queue.get()
        if item is _END:
            self._ended = True
            if exc is not None:
                raise exc
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the thread (within one item) and drop what it read ahead."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()
