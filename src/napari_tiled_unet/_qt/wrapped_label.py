"""A word-wrapped label that a form layout gives all its lines.

A ``QFormLayout`` row spanning the form sizes a word-wrapped ``QLabel`` for one line only, so
a long hint was cut to its first line in a narrow dock. This label asks, whenever its width
changes, for the height its wrapped text needs at that width.
"""

from __future__ import annotations

from qtpy.QtWidgets import QLabel


class WrappedLabel(QLabel):
    def __init__(self, text: str = "", parent=None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        need = self.heightForWidth(self.width())
        if need > 0 and need != self.minimumHeight():
            self.setMinimumHeight(need)
