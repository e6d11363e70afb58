"""The Fine-tune widget's live loss plot: training and validation loss against the step,
drawn with QPainter (no plotting library needed)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget


class LossPlot(QWidget):
    """Training and validation loss against the step, drawn with QPainter.

    ``set_data`` stores the lines and schedules one repaint; the painting reads only the
    stored arrays, so it costs the same however often events arrive. Plain Qt keeps the
    plugin free of a plotting dependency.

    Attributes:
        train_line: float (N, 2) array of (step, loss) as last drawn.
        val_line: float (M, 2) array of (step, validation loss) as last drawn.
    """

    TRAIN_COLOR = QColor(80, 160, 255)
    VAL_COLOR = QColor(255, 150, 40)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.train_line = np.empty((0, 2))
        self.val_line = np.empty((0, 2))
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("Training loss (blue) and validation loss (orange) against the training step.")

    def set_data(self, train: list[tuple[int, float]], val: list[tuple[int, float]]) -> None:
        self.train_line = np.asarray(train, dtype=np.float64).reshape(-1, 2)
        self.val_line = np.asarray(val, dtype=np.float64).reshape(-1, 2)
        self.update()

    def axis_ranges(self) -> tuple[float, float, float, float] | None:
        """(x0, x1, y0, y1) of the axes as drawn, None before any finite point. Losses are never
        negative, so the y axis does not go below 0 when no point does."""
        pts = np.concatenate([self.train_line, self.val_line])
        pts = pts[np.isfinite(pts).all(axis=1)]
        if not len(pts):
            return None
        x1 = max(float(pts[:, 0].max()), 1.0)
        y0, y1 = float(pts[:, 1].min()), float(pts[:, 1].max())
        pad = 0.05 * (y1 - y0) if y1 > y0 else max(abs(y1) * 0.05, 1e-3)
        low = y0 - pad if y0 < 0 else max(y0 - pad, 0.0)
        return 0.0, x1, low, y1 + pad

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().windowText().color()
        fm = p.fontMetrics()
        left, bottom, top, right = fm.horizontalAdvance("0.000") + 8, fm.height() + 6, fm.height() + 4, 8
        box = QRectF(left, top, max(self.width() - left - right, 10), max(self.height() - top - bottom, 10))
        p.setPen(QPen(text, 1))
        p.drawRect(box)
        p.setPen(self.TRAIN_COLOR)
        p.drawText(int(box.left()), fm.ascent() + 1, "training loss")
        p.setPen(self.VAL_COLOR)
        p.drawText(int(box.left()) + fm.horizontalAdvance("training loss") + 12, fm.ascent() + 1,
                   "validation loss")
        ranges = self.axis_ranges()
        if ranges is None:
            p.end()
            return
        x0, x1, y0, y1 = ranges

        def to_screen(pts: np.ndarray) -> np.ndarray:
            sx = box.left() + (pts[:, 0] - x0) / (x1 - x0) * box.width()
            sy = box.bottom() - (pts[:, 1] - y0) / (y1 - y0) * box.height()
            return np.stack([sx, sy], axis=1)

        p.setPen(text)
        p.drawText(2, int(box.top()) + fm.ascent(), f"{y1:.3g}")
        p.drawText(2, int(box.bottom()), f"{y0:.3g}")
        p.drawText(int(box.left()), int(box.bottom()) + fm.ascent() + 3, "0")
        last = f"step {x1:.0f}"
        p.drawText(int(box.right()) - fm.horizontalAdvance(last), int(box.bottom()) + fm.ascent() + 3, last)
        p.setClipRect(box)
        lines = ((self.train_line, self.TRAIN_COLOR, False), (self.val_line, self.VAL_COLOR, True))
        for line, color, dots in lines:
            line = line[np.isfinite(line).all(axis=1)]
            if not len(line):
                continue
            stride = max(1, math.ceil(len(line) / max(box.width(), 1)))  # at most one point per pixel
            pts = to_screen(line[::stride] if stride == 1 else _bin_means(line, stride))
            p.setPen(QPen(color, 1.5))
            path = QPainterPath(QPointF(*pts[0]))
            for x, y in pts[1:]:
                path.lineTo(x, y)
            p.drawPath(path)
            if dots:
                p.setBrush(color)
                for x, y in pts:
                    p.drawEllipse(QPointF(x, y), 2.5, 2.5)
        p.end()


def _bin_means(line: np.ndarray, size: int) -> np.ndarray:
    n = len(line) // size * size
    binned = line[:n].reshape(-1, size, 2).mean(axis=1)
    return np.concatenate([binned, line[n:].mean(axis=0, keepdims=True)]) if n < len(line) else binned


__all__ = ["LossPlot"]
