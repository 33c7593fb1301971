"""Text lines of the dock."""

from __future__ import annotations

from magicgui import widgets as mw
from qtpy.QtWidgets import QSizePolicy


def wrapped(label: mw.Label) -> mw.Label:
    """``label`` wrapped, with no width of its own: a long line widened the dock by ~84 px
    and cut the slide off."""
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label
