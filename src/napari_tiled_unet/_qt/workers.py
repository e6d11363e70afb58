"""Running engine generators in napari's ``thread_worker`` with a clean cancel.

Compute code never receives a Qt object: the widget hands a plain generator to
:func:`start_generator` and gets Qt signals back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

log = logging.getLogger(__name__)


class EngineJob:
    """One engine generator running in a worker thread.

    ``cancel()`` asks the worker to stop at the generator's next yield (one batch of windows
    or one training step); the generator is then closed so that its ``finally`` blocks free
    buffers and stop reader threads. ``on_done`` runs exactly once, on the main thread,
    after success, error or cancel.
    """

    def __init__(
        self,
        make_generator: Callable[[], Generator],
        on_event: Callable[[Any], None],
        on_result: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        on_done: Callable[[], None],
    ) -> None:
        from napari.qt.threading import thread_worker

        self._gen: Generator | None = None
        self.cancelled = False
        self.finished = False

        def run():
            self._gen = make_generator()
            result = yield from self._gen
            return result

        # errors go to on_error (a notification), not re-raised in the Qt event loop
        self.worker = thread_worker(run, start_thread=False, ignore_errors=True)()
        self.worker.yielded.connect(on_event)
        self.worker.returned.connect(on_result)
        self.worker.errored.connect(on_error)

        def done():
            self._close()
            self.finished = True
            on_done()

        self.worker.finished.connect(done)

    def start(self) -> None:
        self.worker.start()

    def cancel(self) -> None:
        self.cancelled = True
        self.worker.quit()

    def _close(self) -> None:
        if self._gen is not None:
            try:
                self._gen.close()
            except Exception:  # closing must not hide the original outcome
                log.exception("error while closing the engine generator")
            self._gen = None

    @property
    def generator_closed(self) -> bool:
        return self._gen is None
