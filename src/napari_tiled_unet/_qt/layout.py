"""Layout pieces of the dock widgets that Qt's defaults get wrong in a napari dock.

- :class:`WrappedLabel`: a word-wrapped label that a form layout gives all its lines (a
  ``QFormLayout`` row spanning the form sized a wrapped ``QLabel`` for one line only, so a
  long hint was cut to its first line in a narrow dock).
- :func:`scrolling_body`: the widget's controls inside a scroll area, so a dock can be
  shorter than its controls. Without it the docks' heights add up (Segment, Fine-tune and
  the Objects table are about 1400 px together) and napari's window grows past a laptop's
  screen, with the lowest buttons out of reach.
- :func:`balance_docks`: when a dock joins others stacked in the same column, napari gave it
  only its minimum height (Fine-tune below Segment: 140 px of 850, while Segment, which needs
  350, kept 700); the column's height is shared out by what each dock asks for instead.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import QDockWidget, QFrame, QLabel, QMainWindow, QScrollArea, QVBoxLayout, QWidget

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
        frame = 2 * max(self.frameWidth(), 0)  # napari's style sheet draws one even with NoFrame
        width = hint.width() + self.verticalScrollBar().sizeHint().width() + frame
        return QSize(width, hint.height() + frame)

    def minimumSizeHint(self) -> QSize:
        body = self.widget()
        width = body.minimumSizeHint().width() if body is not None else 0
        frame = 2 * max(self.frameWidth(), 0)
        return QSize(width + self.verticalScrollBar().sizeHint().width() + frame, MIN_DOCK_HEIGHT)

    def eventFilter(self, watched, event) -> bool:
        # the controls' layout changed (a section opened, a label wrapped): the hints above
        # changed with it, which the dock's layout, caching them, would not see; without this
        # the dock kept a width 17 px short of the controls and cut them under the scroll bar
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)


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


def share_heights(wants: list[int], total: int) -> list[int]:
    """Heights for docks that ask for ``wants`` px in a column of ``total`` px: each gets what
    it asks for, or an equal share of what is left when that is less (the docks that ask least
    are served first); what nobody asked for goes to the dock that asked for most."""
    sizes = [0] * len(wants)
    left = total
    order = sorted(range(len(wants)), key=lambda i: wants[i])
    for k, i in enumerate(order):
        sizes[i] = min(wants[i], left // (len(wants) - k))
        left -= sizes[i]
    if left > 0 and wants:
        sizes[order[-1]] += left
    return sizes


def balance_docks(widget: QWidget) -> None:
    """Share the height of the column of docks that ``widget``'s dock is in (see the module
    docstring); nothing for a floating or tabbed dock, or one alone in its column."""
    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    window = dock.parentWidget() if dock is not None else None
    if dock is None or dock.isFloating() or not isinstance(window, QMainWindow):
        return
    area = window.dockWidgetArea(dock)
    column = [d for d in window.findChildren(QDockWidget)
              if d.isVisible() and not d.isFloating() and window.dockWidgetArea(d) == area
              and d.x() == dock.x() and d.widget() is not None]
    if len(column) < 2 or len({d.y() for d in column}) < len(column):  # tabs share one place
        return
    column.sort(key=lambda d: d.y())
    wants = [d.widget().sizeHint().height() + d.height() - d.widget().height() for d in column]
    sizes = share_heights(wants, sum(d.height() for d in column))
    window.resizeDocks(column, sizes, Qt.Orientation.Vertical)
