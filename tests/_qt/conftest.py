"""Fixtures shared by the widget tests (napari under Xvfb)."""

import pytest

from napari_tiled_unet._qt.predict_widget import SegmentWidget
from napari_tiled_unet._qt.session import ModelSession


@pytest.fixture
def widget(make_napari_viewer, tiny_model_file):
    """The Segment widget docked in a new viewer, with the tiny test model chosen, on the CPU."""
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer, session=ModelSession())  # the process's "last used" model stays as it was
    viewer.window.add_dock_widget(w)
    w.add_model_file(tiny_model_file)
    w.device_combo.setCurrentText("cpu")
    return viewer, w


class EventLoopWatch:
    """Ticks a 20 ms Qt timer on the main thread and keeps, for every gap between two ticks,
    the wall time, the main thread's CPU time, and the wall time it spent runnable but
    waiting for a CPU (``/proc/thread-self/schedstat``: other processes on a busy machine).
    ``blocked`` is the wall time minus that wait: what this process itself held the event
    loop for (its own work on the main thread, or another of its threads holding the GIL)."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[tuple[float, float, float, str]] = []
        self.label = ""  # what was going on (the caller sets it, e.g. the status line)
        self.timer = QTimer()
        self.timer.setInterval(20)
        self.timer.timeout.connect(self._tick)

    @staticmethod
    def _run_queue_wait() -> float:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9

    def _tick(self) -> None:
        import time

        self.ticks.append((time.perf_counter(), time.thread_time(), self._run_queue_wait(),
                           self.label() if callable(self.label) else self.label))

    def start(self) -> None:
        self._tick()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self._tick()

    def gaps(self):
        """(wall, blocked, cpu, label) of every gap, numpy columns and a list of labels."""
        import numpy as np

        t = np.array([tick[:3] for tick in self.ticks])
        wall, cpu, waited = np.diff(t, axis=0).T
        return wall, wall - waited, cpu, [tick[3] for tick in self.ticks[1:]]

    def worst(self, n: int = 3) -> str:
        wall, blocked, cpu, labels = self.gaps()
        order = blocked.argsort()[::-1][:n]
        return "; ".join(f"{blocked[i]:.3f} s blocked ({wall[i]:.3f} s wall, {cpu[i]:.3f} s CPU) at "
                         f"{labels[i]!r}" for i in order)


@pytest.fixture
def event_loop_watch():
    import os

    if not os.path.exists("/proc/thread-self/schedstat"):
        pytest.skip("needs Linux's per-thread scheduler statistics")
    watch = EventLoopWatch()
    yield watch
    watch.timer.stop()
