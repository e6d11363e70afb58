"""The models of one napari session that the widgets share (Qt-free).

The Segment widget remembers the model it ran last; the Fine-tune widget offers it as a base
model ("Model last used for segmenting"), in this viewer or another one of the same process.
Widgets take a :class:`ModelSession` (tests and scripts pass their own); by default they
share :func:`shared_session`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ModelSession:
    """What the widgets of one session share.

    Attributes:
        last_used: the bundle the Segment widget ran last, or None.
        last_source: where it came from (a built-in name or a file path), or None.
    """

    last_used: Any = None
    last_source: Any = None

    def remember(self, bundle: Any, source: Any = None) -> None:
        """Record the model a run used."""
        self.last_used, self.last_source = bundle, source


_SHARED = ModelSession()


def shared_session() -> ModelSession:
    """The session of this process (the widgets' default)."""
    return _SHARED


__all__ = ["ModelSession", "shared_session"]
