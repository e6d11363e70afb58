"""Layout pieces of the dock widgets that Qt's defaults get wrong in a napari dock.

- :class:`WrappedLabel`: a word-wrapped label that a form layout gives all its lines (a
  ``QFormLayout`` row spanning the form sized a wrapped ``QLabel`` for one line only, so a
  long hint was cut to its first line in a narrow dock).
- :func:`scrolling_body`: the widget's controls inside a scroll area, so a dock can be
  shorter than its controls. Without it the docks' heights add up (Segment, Fine-tune and
  the Objects table are about 1400 px together) and napari's window grows past a laptop's
  screen, with the lowest buttons out of reach.
"""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

#: a scrolling dock can shrink to this height (px)
MIN_DOCK_HEIGHT = 120


class WrappedLabel(QLabel):
    def __init__(self, text: str = "", parent=None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        need = self.heightForWidth(self.width())
        if need > 0 and need != self.minimumHeight():
            self.setMinimumHeight(need)


class _Scroll(QScrollArea):
    """Asks for the whole height of its controls, and can be given far less."""

    def sizeHint(self) -> QSize:
        body = self.widget()
        hint = body.sizeHint() if body is not None else super().sizeHint()
        return QSize(hint.width() + self.verticalScrollBar().sizeHint().width(), hint.height())

    def minimumSizeHint(self) -> QSize:
        body = self.widget()
        width = body.minimumSizeHint().width() if body is not None else 0
        return QSize(width + self.verticalScrollBar().sizeHint().width(), MIN_DOCK_HEIGHT)


def scrolling_body(widget: QWidget) -> QVBoxLayout:
    """Fill ``widget`` with a vertical scroll area and return the layout to put the controls in."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = _Scroll()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    body = QWidget()
    area.setWidget(body)
    outer.addWidget(area)
    return QVBoxLayout(body)
