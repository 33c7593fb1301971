"""The class list of the Session tab: names and colours, the painting value is the row (1..n)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from magicgui import widgets as mw
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QColorDialog, QListWidget, QListWidgetItem

from ..project import DEFAULT_COLORS

__all__ = ["ClassList"]

_FIXED = "the classes are fixed once the session exists (the model predicts them); colours can still change"

RGB = tuple[int, int, int]


class ClassList:
    """Classes to add and rename before a session exists, and to recolour at any time.

    ``fixed()``: whether a session exists (names are then fixed); ``recoloured(colors)``:
    store new colours in it, returns whether that went through; ``chosen(value)``: the user
    picked class ``value`` (1..n) in the list; ``message(text, error)`` tells the user.
    """

    def __init__(self, *, message: Callable[[str, bool], None], fixed: Callable[[], bool],
                 recoloured: Callable[[list[RGB]], bool], chosen: Callable[[int], None]) -> None:
        self._message, self._fixed, self._recoloured, self._chosen = message, fixed, recoloured, chosen
        self.list = QListWidget()
        self.list.setMaximumHeight(110)
        self.list.currentRowChanged.connect(self._row_chosen)
        self.list.itemClicked.connect(lambda item: self._row_chosen(self.list.row(item)))  # the same row again
        self.name = mw.LineEdit(label="Class", value="", tooltip="a class name to add, or the new name of the selected class")
        add, rename, recolour = (mw.PushButton(text=t) for t in ("Add class", "Rename class", "Class colour"))
        add.changed.connect(self.add)
        rename.changed.connect(self.rename)
        recolour.changed.connect(lambda: self.recolour())  # not the button's value
        self.buttons = mw.Container(widgets=[add, rename, recolour], layout="horizontal", labels=False)
        self.names: list[str] = []
        self.colors: list[RGB] = []
        self.set(["background", "tumour"], DEFAULT_COLORS[:2])

    def set(self, names: Sequence[str], colors: Sequence[Sequence[int]]) -> None:
        """Show ``names`` with ``colors`` (RGB 0-255), keeping the selected row."""
        self.names, self.colors = list(names), [tuple(int(v) for v in c[:3]) for c in colors]
        row = self.list.currentRow()
        self.list.blockSignals(True)
        self.list.clear()
        for i, (name, color) in enumerate(zip(self.names, self.colors)):
            pixmap = QPixmap(14, 14)
            pixmap.fill(QColor(*color))
            self.list.addItem(QListWidgetItem(QIcon(pixmap), f"{i + 1}  {name}"))
        self.list.setCurrentRow(min(row, len(self.names) - 1))
        self.list.blockSignals(False)

    def _row_chosen(self, row: int) -> None:
        if 0 <= row < len(self.names):
            self._chosen(row + 1)

    def add(self) -> None:
        name = self.name.value.strip()
        if self._fixed():
            self._message(_FIXED, True)
            return
        if not name or name in self.names:
            self._message("type a new class name first" if not name else f"there is a class {name!r} already", True)
            return
        self.set([*self.names, name], [*self.colors, DEFAULT_COLORS[len(self.colors) % len(DEFAULT_COLORS)]])
        self.name.value = ""

    def rename(self) -> None:
        name, row = self.name.value.strip(), self.list.currentRow()
        if self._fixed():
            self._message(_FIXED, True)
            return
        if not 0 <= row < len(self.names) or not name or name in self.names:
            self._message("select a class and type its new name first", True)
            return
        names = list(self.names)
        names[row] = name
        self.set(names, self.colors)
        self.name.value = ""

    def recolour(self, color: Sequence[int] | None = None) -> None:
        """A new colour for the selected class (asked for with a colour dialog)."""
        row = self.list.currentRow()
        if not 0 <= row < len(self.names):
            self._message("select a class first", True)
            return
        if color is None:
            picked = QColorDialog.getColor(QColor(*self.colors[row]), self.list, "Class colour")
            if not picked.isValid():
                return
            color = (picked.red(), picked.green(), picked.blue())
        colors = list(self.colors)
        colors[row] = tuple(int(v) for v in color[:3])
        if self._recoloured(colors):
            self.set(self.names, colors)
