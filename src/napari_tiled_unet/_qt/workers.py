"""Running engine generators in napari's ``thread_worker`` with a clean cancel.

Compute code never receives a Qt object: the widget hands a plain generator to
:class:`EngineJob` and gets its events, result and errors back on the main thread. What the
engine logs as a warning while the job runs reaches the widget as a
:class:`~napari_tiled_unet.events.WarningEvent` too (napari users never see a log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

log = logging.getLogger(__name__)


class _LogWarnings(logging.Handler):
    """Collects the package's log warnings emitted outside the main thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName != "MainThread":
            self.messages.append(record.getMessage())

    def drain(self) -> list[Any]:
        from ..events import WarningEvent

        messages, self.messages = self.messages, []
        return [WarningEvent(m) for m in messages]


class EngineJob:
    """One engine generator running in a worker thread.

    ``cancel()`` asks the worker to stop at the generator's next yield (one batch of windows
    or one training step) and sets :attr:`control`'s ``stop``, which the engine checks between
    two layers of the network (so a long window stops within one layer); the generator is then
    closed so that its ``finally`` blocks free buffers and stop reader threads. ``on_done``
    runs exactly once, on the main thread, after success, error or cancel; after a cancel
    the engine's :class:`~napari_tiled_unet.events.Cancelled` is not reported as an error.
    Once the widget is gone (viewer closed mid-run), nothing more is called.
    """

    def __init__(
        self,
        make_generator: Callable[[], Generator],
        on_event: Callable[[Any], None],
        on_result: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        on_done: Callable[[], None],
        control: Any = None,
        kind: Any = None,
    ) -> None:
        from napari.qt.threading import thread_worker

        from ..events import Cancelled, RunControl

        self._gen: Generator | None = None
        self.kind = kind  # what the job does (the widget's own enum)
        self.cancelled = False
        self.finished = False
        self.control = control if control is not None else RunControl()
        self.succeeded = False
        self.owner_alive: Callable[[], bool] = lambda: True

        package_log = logging.getLogger(__package__.rsplit(".", 1)[0])
        warnings = _LogWarnings()

        def run():
            package_log.addHandler(warnings)
            try:
                self._gen = gen = make_generator()
                while True:
                    try:
                        event = next(gen)
                    except StopIteration as stop:
                        yield from warnings.drain()
                        return stop.value
                    yield from warnings.drain()
                    yield event
            finally:
                package_log.removeHandler(warnings)

        # errors go to on_error (a notification), not re-raised in the Qt event loop
        self.worker = thread_worker(run, start_thread=False, ignore_errors=True)()
        self.worker.yielded.connect(self._guard(on_event))
        def returned(value: Any) -> None:
            self.succeeded = True
            on_result(value)

        self.worker.returned.connect(self._guard(returned))

        def error(exc: BaseException) -> None:
            if not (self.cancelled and isinstance(exc, Cancelled)):
                on_error(exc)

        self.worker.errored.connect(self._guard(error))

        def done():
            package_log.removeHandler(warnings)
            self._close()
            self.finished = True
            if self.owner_alive():
                on_done()

        self.worker.finished.connect(done)

    def _guard(self, callback: Callable[[Any], None]) -> Callable[[Any], None]:
        """``callback``, skipped once the owner (the widget) has been deleted."""

        def call(value: Any) -> None:
            if self.owner_alive():
                callback(value)

        return call

    def start(self) -> None:
        self.worker.start()

    def cancel(self) -> None:
        self.cancelled = True
        self.control.stop.set()
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
