"""The Suggest tab: a selector's proposals, the methods side by side, drawn regions."""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui import widgets as mw
from qtpy.QtWidgets import QAbstractItemView, QHeaderView

from ..cli_suggest import _parse_option
from ..geometry import Region
from ..layers import METHOD_COLORS
from ..project import region_size_px
from ..selection import METHODS
from ._tags import METHOD_TAGS

__all__ = ["SuggestTab"]

_UNIT = ("µm", "px")
#: Short names in the compare table's rows (the tag says which method too).
_SHORT = {"standard_nonsquare": "non-square", "standard": "standard", "adaptive": "adaptive", "top_patches": "top patches",
          "diversity": "diversity", "prototype": "prototype", "focannot": "FocAnnot", "random": "random"}


def _sizes(regions) -> str:
    """The box sizes of ``regions`` as a user reads them: "512 px", "512×256 px", "256-512 px"."""
    sides = sorted({(r.w, r.h) for r in regions})
    if not sides:
        return ""
    if len(sides) == 1:
        w, h = sides[0]
        return f"{w} px" if w == h else f"{w}×{h} px"
    lo, hi = min(min(s) for s in sides), max(max(s) for s in sides)
    return f"{lo}-{hi} px"


def _option_widget(name: str, default: Any, help_: str) -> mw.Widget:
    """A control for one selector option, typed by its default."""
    if isinstance(default, bool):
        return mw.CheckBox(name=name, value=default, tooltip=help_)
    if isinstance(default, int):
        return mw.SpinBox(name=name, value=default, min=0, max=10**7, tooltip=help_)
    if isinstance(default, float):
        return mw.FloatSpinBox(name=name, value=default, min=0.0, max=1e7, step=0.05, tooltip=help_)
    text = "" if default is None else (str(default) if isinstance(default, str) else repr(list(default)))
    return mw.LineEdit(name=name, value=text, tooltip=f"{help_} (empty: default)")


class SuggestTab:
    """Method, its options, region size, k; proposals list; compare table; drawing regions."""

    def __init__(self, w) -> None:
        self.w = w
        self.method = mw.ComboBox(label="Method", choices=[(m.title, m.name) for m in METHODS.values()], value="adaptive")
        self.options = mw.Container(labels=True)
        self.method.changed.connect(self._rebuild_options)
        self.method.changed.connect(w.lists.set_method)
        self.region_size = mw.FloatSpinBox(label="Region size l", value=512.0, min=1.0, max=1e6, step=64)
        self.unit = mw.ComboBox(label="Unit", choices=list(_UNIT), value="µm")
        self.k = mw.SpinBox(label="Regions k", value=5, min=1, max=1000)
        self.seed = mw.SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        suggest = w.button("Suggest")
        suggest.changed.connect(self.suggest)
        self.compare_methods = mw.Select(label="Compare", choices=list(METHODS),
                                         value=["random", "standard", "standard_nonsquare", "adaptive"])
        self.compare_methods.native.setMinimumHeight(8 * 18)
        compare = w.button("Compare methods")
        compare.changed.connect(self.compare)
        pool = w.button("Diversity over all slides", "k regions per slide that together cover the pool's variety")
        pool.changed.connect(self.pool_diversity)
        # one row per method, one column per measure: 8 methods fit, the full IoU matrix in the tooltips
        self.table = mw.Table(value={"data": [], "index": [], "columns": []})
        self.table.native.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.native.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.native.hide()
        self.proposal_list = w.lists.proposals
        prev, nxt = w.button("◀ Previous"), w.button("Next ▶")
        prev.changed.connect(lambda: self.step(-1))
        nxt.changed.connect(lambda: self.step(1))
        accept = w.button("Accept region", "add the selected proposal to the labeled set and paint in it")
        accept.changed.connect(self.accept_selected)
        reject = w.button("Reject", "dismiss the selected proposal; it is not proposed again (or delete its box on the canvas)")
        reject.changed.connect(self.reject_selected)
        draw = w.button("Draw region", "drag a rectangle of your own on the current slide")
        draw.changed.connect(self.draw_region)
        accept_drawn = w.button("Accept drawn", "add the rectangles you drew to the labeled set")
        accept_drawn.changed.connect(self.accept_drawn)
        self.box = mw.Container(widgets=[self.method, self.options, self.region_size, self.unit, self.k, self.seed, suggest,
                                         pool, self.compare_methods, compare, self.table,
                                         mw.Container(widgets=[prev, nxt], layout="horizontal", labels=False),
                                         mw.Container(widgets=[accept, reject], layout="horizontal", labels=False),
                                         mw.Container(widgets=[draw, accept_drawn], layout="horizontal", labels=False)])
        self.box.native.layout().insertWidget(len(self.box) - 3, self.proposal_list)
        self._draw_layers: dict[str, Any] = {}
        w.hub.events.project.connect(lambda _: self._drop_drawn())
        w.hub.events.current.connect(self._show_a_method_with_proposals)
        self._rebuild_options()

    def _show_a_method_with_proposals(self, slide: str | None) -> None:
        """On a slide with no proposals of the chosen method, the list shows the latest method's
        (a reopened session lands on the method the user worked with)."""
        p = self.w.project
        if p is None or slide is None or p.proposals(slide, self.method.value):
            return
        proposals = p.proposals(slide)
        if proposals:
            self.method.value = proposals[-1].method

    def _rebuild_options(self, *_: Any) -> None:
        self.options.clear()
        for o in METHODS[self.method.value].options:
            self.options.append(_option_widget(o.name, o.default, o.help))

    def _method_options(self) -> dict[str, Any]:
        out = {}
        for widget in self.options:
            if isinstance(widget, mw.LineEdit):
                if widget.value.strip():
                    out.update([_parse_option(f"{widget.name}={widget.value.strip()}")])
            else:
                out[widget.name] = widget.value
        return out

    def _slide_and_region_px(self) -> tuple[str, int] | None:
        """The current slide and the region side in its level-0 px, or None after saying why not."""
        name = self.w.slide_or_say()
        if name is None:
            return None
        p = self.w.project
        l_ = self.w.guard(region_size_px, self.region_size.value, self.unit.value, mpp=p.slides[name].mpp, stride=p.stride)
        return None if l_ is None else (name, l_)

    def suggest(self) -> None:
        picked = self._slide_and_region_px()
        options = None if picked is None else self.w.guard(self._method_options)
        if options is None:
            return
        (name, l_), method, k = picked, self.method.value, self.k.value
        p = self.w.project

        def done(regions: list[Region]) -> None:
            if not regions:
                self.w.message_user(f"{METHODS[method].title} proposed nothing: {p.empty_reason(name, method, region_size=l_)}", True)
                return
            short = "" if len(regions) == k else f" (only {len(regions)} fit)"
            self.w.message_user(f"{METHODS[method].title}: {len(regions)} region(s) of {_sizes(regions) or f'{l_} px'}{short}")

        self.w.call("selecting regions", p.suggest, name, method, region_size=l_, k=k, seed=self.seed.value,
                    on_done=done, **options)

    def compare(self) -> None:
        picked = self._slide_and_region_px()
        if picked is None:
            return
        name, l_ = picked
        self.w.call("comparing methods", self.w.project.compare, name, list(self.compare_methods.value), region_size=l_,
                    k=self.k.value, seed=self.seed.value, on_done=lambda result: self._compared(name, l_, result))

    def _compared(self, name: str, l_: int, result) -> None:
        out, summaries, overlap = result
        p = self.w.project
        mpp = p.slides[name].mpp
        area = "mm²" if mpp else "px²"
        rows = []
        for j, s in enumerate(summaries):
            others = [float(v) for i, v in enumerate(overlap[j]) if i != j]
            # text, not floats: Qt would print 0.049 as "4.900e-02"
            rows.append([s.count, f"{s.area * mpp**2 / 1e6:.3f}" if mpp else f"{s.area:.0f}", f"{s.tissue_pct:.1f}",
                         f"{s.mean_priority:.3f}", f"{sum(r.score for r in out[s.method]):.2f}",
                         f"{max(others):.2f}" if others else "0.00"])
        self.table.value = {"data": rows, "index": [f"{METHOD_TAGS.get(s.method, '?')} {_SHORT.get(s.method, s.method)}"
                                                    for s in summaries],
                            "columns": ["n", area, "tissue %", "mean p.", "sum p.", "max IoU"]}
        native = self.table.native
        for j, s in enumerate(summaries):
            item = native.verticalHeaderItem(j)
            if item is not None:
                item.setToolTip(s.method)
            cell = native.item(j, 5)
            if cell is not None:
                cell.setToolTip("IoU with " + ", ".join(f"{t.method} {float(v):.2f}" for t, v in zip(summaries, overlap[j])))
        native.show()
        native.resizeColumnsToContents()
        height = native.horizontalHeader().height() + sum(native.rowHeight(i) for i in range(len(rows))) + 4
        native.setMinimumHeight(height)
        native.setMaximumHeight(height)
        empty = [s.method for s in summaries if not out[s.method]]
        got = len(summaries) - len(empty)
        why = "".join(f"; {m} proposed nothing: {p.empty_reason(name, m, region_size=l_)}" for m in empty)
        self.w.message_user(f"compared {got} method{'s' if got != 1 else ''} on {name}{why}", bool(empty))

    def pool_diversity(self) -> None:
        picked = self._slide_and_region_px()
        if picked is None:
            return
        _, l_ = picked
        self.w.call("diversity over all slides", self.w.project.suggest_pool_diversity, region_size=l_,
                    n_per_slide=self.k.value, seed=self.seed.value,
                    on_done=lambda out: self.w.message_user(f"diversity over {len(out)} slide(s): "
                                                            + ", ".join(f"{s}: {len(r)}" for s, r in out.items())))

    # ------------------------------------------------------------------ the list
    def selected(self) -> Region | None:
        """The proposal selected in the list, or None (and a message saying to select one)."""
        region = self.w.lists.selected_proposal()
        if region is None:
            self.w.message_user("select a proposal in the list first", True)
        return region

    def step(self, delta: int) -> None:
        n = self.proposal_list.count()
        if n:
            self.proposal_list.setCurrentRow((self.proposal_list.currentRow() + delta) % n)

    def accept_selected(self) -> None:
        region = self.selected()
        if region is not None:
            self.w.tab("annotate").accept([region], "background")

    def reject_selected(self) -> None:
        """Dismiss the proposal selected in the list (it is not proposed again); the next is selected."""
        region, i = self.selected(), self.proposal_list.currentRow()
        if region is None or self.w.guard(self.w.project.dismiss, region) is None:
            return
        self.proposal_list.setCurrentRow(min(i, self.proposal_list.count() - 1))
        self.w.message_user(f"dismissed {region.method} #{region.rank + 1}")

    # ------------------------------------------------------------------ drawn regions
    def owned(self) -> list[Any]:
        """The draw layers of the current session."""
        return list(self._draw_layers.values())

    def _drop_drawn(self) -> None:
        self._draw_layers = {}  # the widget removes the last session's layers

    def _draw_layer(self, name: str):
        layer = self._draw_layers.get(name)
        return layer if layer is not None and layer in self.w.viewer.layers else None

    def draw_region(self) -> None:
        """A rectangle tool on the current slide's draw layer."""
        name = self.w.slide_or_say()
        if name is None:
            return
        layer = self._draw_layer(name)
        if layer is None:
            p = self.w.project
            layer = self.w.viewer.add_shapes(name=f"{name} draw", edge_color=np.array(METHOD_COLORS["accepted"]),
                                             face_color="transparent", edge_width=max(2.0, min(p.slides[name].shape) / 200),
                                             **self.w.slides.placed(name, 1))
            self._draw_layers[name] = layer
        self.w.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        self.w.message_user(f"drag a rectangle on {name}, then 'Accept drawn'")

    def accept_drawn(self) -> None:
        """Accept the rectangles of the current slide's draw layer as regions."""
        name = self.w.slide_or_say()
        if name is None:
            return
        layer = self._draw_layer(name)
        if layer is None or not layer.nshapes:
            self.w.message_user("draw a rectangle first ('Draw region')", True)
            return
        p = self.w.project
        h0, w0 = p.slides[name].shape
        drawn = []
        for corners in layer.data:
            (y0, x0), (y1, x1) = np.clip(np.min(corners, 0), 0, (h0, w0)), np.clip(np.max(corners, 0), 0, (h0, w0))
            y0, x0, y1, x1 = (int(round(v)) for v in (y0, x0, y1, x1))
            if y1 > y0 and x1 > x0:
                drawn.append(Region(x0, y0, x1 - x0, y1 - y0, method="manual", slide=name, cycle=p.cycle))
        layer.data = []
        if not drawn:
            self.w.message_user("the rectangle is outside the slide", True)
            return
        self.w.tab("annotate").accept(drawn, "background")
