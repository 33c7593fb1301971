"""The plugin's keys: Alt+letter actions and class keys, wherever focus is in the window.

Qt shortcuts on the viewer's main window: napari's keymap sees a key only while the canvas
has focus (a click on a list row took it away, and Alt+X did nothing). The same keys are
napari bindings too, for the canvas (where the window is not the active one). Plain digits
1..n pick classes in the painting layer, where napari's own keys would switch the tool
(``1`` the eraser, ``2`` the brush). Every class key is a napari binding that yields: napari
keeps the last key-release action per key and ran a stale one, "restore the tool before
``2``", on the release of Alt+2 (the brush became the eraser); ours replaces it with nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import QShortcut, QWidget

__all__ = ["Shortcuts", "ACTIONS"]

#: Alt+key: what it does (the list under the tabs), the widget's method.
ACTIONS = {"A": ("accept", "accept"), "X": ("reject", "reject"), "N": ("next", "next"), "P": ("previous", "previous"),
           "D": ("draw", "draw"), "R": ("retrain", "retrain")}


def _top(widget: QWidget) -> QWidget:
    while widget.parentWidget() is not None:
        widget = widget.parentWidget()
    return widget


def _held(fn: Callable[[], None]):
    """A napari key binding running ``fn`` on the press and nothing on the release."""
    def binding(_target):
        fn()
        yield

    return binding


class Shortcuts:
    """Alt+letters (``ACTIONS``) and Alt+1..9 on ``window``; plain 1..n on the painting layer."""

    def __init__(self, viewer, actions: dict[str, Callable[[], None]], pick: Callable[[int], None]) -> None:
        self._pick = pick
        self._keys: list[QShortcut] = []
        self.viewer = viewer
        self._bound: list[str] = []
        window = viewer.window._qt_window
        keys = {letter: actions[name] for letter, (_, name) in ACTIONS.items()}
        keys.update({str(i): (lambda i=i: pick(i)) for i in range(1, 10)})
        for key, fn in keys.items():
            self._add(window, f"Alt+{key}", fn)
            viewer.bind_key(f"Alt-{key}", _held(fn), overwrite=True)
            self._bound.append(f"Alt-{key}")

    def _add(self, window: QWidget, key: str, fn: Callable[[], None]) -> None:
        shortcut = QShortcut(QKeySequence(key), window)
        shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
        shortcut.activated.connect(fn)
        self._keys.append(shortcut)

    def close(self) -> None:
        for key in self._bound:
            try:
                self.viewer.bind_key(key, None)
            except (KeyError, ValueError, RuntimeError):  # already gone with the viewer
                pass
        self._bound.clear()
        for shortcut in self._keys:
            try:
                shortcut.setEnabled(False)
                shortcut.deleteLater()
            except RuntimeError:  # deleted with the window
                pass
        self._keys.clear()

    def bind_layer(self, layer, n_classes: int) -> None:
        """Plain 1..n pick class 1..n in ``layer`` (napari's tool keys there would switch the tool)."""
        for i in range(1, min(n_classes, 9) + 1):
            layer.bind_key(str(i), _held(lambda i=i: self._pick(i)), overwrite=True)

    @staticmethod
    def text(classes) -> str:
        picks = ", ".join(f"{i + 1} {c}" for i, c in enumerate(classes[:9])) or "1..n class"
        return ("Shortcuts (Alt+): " + " · ".join(f"{k} {what}" for k, (what, _) in ACTIONS.items())
                + f" · {picks} (plain digits too, while painting)")



