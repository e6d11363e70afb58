"""The one family of input errors: what a user gave (an image, a model file, a setting, a
file to read) cannot be used, and the message, one sentence, says what to do.

Every front end turns an :class:`InputError` into that sentence: the CLI prints
``error: <message>`` and exits 1, the widgets show it as a napari notification, the API
raises it. Anything else is a bug and keeps its traceback.

Import them from here; ``io.ReadError`` and ``model.bundle.BundleError`` stay importable
there too (the same classes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class InputError(ValueError):
    """Input that cannot be used; the message is one sentence that says what to do."""


class ImageError(InputError):
    """An image that cannot be segmented or trained on (shape, type, values)."""


class ReadError(InputError):
    """A file that cannot be read as an image; the message says which and why."""


class BundleError(InputError):
    """A model file that cannot be used; the message says what to do."""


class SettingsError(InputError):
    """A setting out of its range (batch size, thresholds, workers, ...)."""


class OutputError(InputError):
    """An output location that cannot take the result (missing, read-only, full); the message
    says where the result was kept instead, if anywhere."""


@contextlib.contextmanager
def reading(what: str) -> Iterator[None]:
    """Within: an exception raised while reading pixels of ``what`` (a damaged or truncated
    file, a chunk that vanished, a decoder error) becomes one :class:`ReadError` sentence.
    Input errors and the operating system's own (``OSError``: a share gone, a disk error, which
    name their cause) pass through unchanged; KeyboardInterrupt and the like are not caught."""
    try:
        yield
    except (InputError, OSError, MemoryError, RecursionError):
        raise
    except Exception as exc:
        raise ReadError(
            f"Part of {what} could not be read ({type(exc).__name__}: {_short(exc)}); the file may be "
            "damaged or truncated: check it or export it again."
        ) from exc


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or "no details"
    return text if len(text) <= limit else text[: limit - 3] + "..."
