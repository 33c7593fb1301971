"""The priority overlay's colour bar, drawn in the dock under the status line.

napari's canvas colour bar is a vispy overlay per layer: showing it cost the viewer's thread
0.25-0.35 s each time a slide's map first appeared (its tick labels are rendered as glyphs
on the CPU), and it sometimes labelled one tick only. This bar is a plain Qt widget: the
colour ramp over a tissue-like background (where the ramp is clear, the tissue shows), the
two limits and the middle value written under it.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QLinearGradient, QPainter
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["ColorBar"]

#: What shows through the clear end of the ramp: the pink of H&E-stained tissue.
TISSUE = QColor(236, 214, 228)


class ColorBar(QWidget):
    """A horizontal colour ramp from ``lo`` to ``hi``, hidden until :meth:`show_ramp`."""

    BAR_HEIGHT = 12

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._colors: np.ndarray | None = None
        self._range = (0.0, 1.0)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(self.BAR_HEIGHT + self.fontMetrics().height() + 6)
        self.hide()

    def show_ramp(self, colors: np.ndarray, lo: float, hi: float) -> None:
        """Show ``colors`` (n x 4 RGBA in 0..1, evenly spaced control points) over ``lo``..``hi``."""
        colors = np.asarray(colors, dtype=float)
        if colors.ndim != 2 or colors.shape[1] != 4 or len(colors) < 2:
            raise ValueError(f"colors must be n x 4 RGBA with n >= 2, got shape {colors.shape}")
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"the range must be finite with hi > lo, got lo={lo}, hi={hi}")
        self._colors = np.clip(colors, 0.0, 1.0)
        self._range = (float(lo), float(hi))
        self.setToolTip(f"priority {lo:.3g} (clear) to {hi:.3g} (full colour)")
        self.show()
        self.update()

    def clear(self) -> None:
        self._colors = None
        self.hide()

    def ticks(self) -> list[tuple[float, str]]:
        """Where along the bar (0..1) each label sits, and its text: the limits and the middle."""
        lo, hi = self._range
        return [(0.0, f"{lo:.3g}"), (0.5, f"{(lo + hi) / 2:.3g}"), (1.0, f"{hi:.3g}")]

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if self._colors is None:
            return
        painter = QPainter(self)
        try:
            margin = 2.0
            bar = QRectF(margin, 1.0, max(1.0, self.width() - 2 * margin), self.BAR_HEIGHT)
            painter.fillRect(bar, TISSUE)
            ramp = QLinearGradient(QPointF(bar.left(), 0.0), QPointF(bar.right(), 0.0))
            for i, (r, g, b, a) in enumerate(self._colors):
                ramp.setColorAt(i / (len(self._colors) - 1), QColor.fromRgbF(r, g, b, a))
            painter.fillRect(bar, ramp)
            painter.setPen(self.palette().windowText().color())
            painter.drawRect(bar)
            top = bar.bottom() + 2
            text_h = self.height() - top
            for f, text in self.ticks():
                x = bar.left() + f * bar.width()
                painter.drawLine(QPointF(x, bar.bottom()), QPointF(x, bar.bottom() + 2))
                w = self.fontMetrics().horizontalAdvance(text) + 2
                left = min(max(x - w / 2, 0.0), self.width() - w)  # the end labels stay inside
                painter.drawText(QRectF(left, top, w, text_h), int(Qt.AlignmentFlag.AlignHCenter), text)
        finally:
            painter.end()
