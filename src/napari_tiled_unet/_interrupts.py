"""Hold Ctrl-C and SIGTERM off for the few lines that must not be cut in the middle.

A signal handler that raises KeyboardInterrupt (Python's for SIGINT, the CLI's for SIGTERM)
can interrupt any bytecode: between the optimizer's update of two tensors, between moving
a label file and its overlay into place. Within :func:`deferred_signals` such a signal is
noted and delivered, to the handler that was there, as soon as the block ends; the block
itself always completes.

Only the main thread receives signals, so elsewhere (a napari worker thread) this does
nothing. Never put a ``yield`` inside: the caller would run with the signals held.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {s: signal.getsignal(s) for s in _SIGNALS}
    if any(h is None for h in saved.values()):  # a handler installed outside Python: cannot restore it
        yield
        return

    def note(signum, frame):
        caught.append(signum)

    for s in _SIGNALS:
        signal.signal(s, note)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        if caught:
            signum = caught[0]
            handler = saved[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)
