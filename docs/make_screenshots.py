"""Take the user guide's screenshots from a real viewer on the demo slide.

Run: ``python docs/make_screenshots.py`` (starts Xvfb when there is no display; a few
minutes on a 2-core CPU). Writes ``docs/images/*.png``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "benchmarks"))
from _viewer import click, demo_viewer, ensure_display, paint_truth  # noqa: E402


def shot(viewer, name: str, *, canvas_only: bool = False) -> None:
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    for _ in range(10):
        QApplication.processEvents()
    img = viewer.screenshot(canvas_only=canvas_only, flash=False)
    out = HERE / "images" / f"{name}.png"
    out.parent.mkdir(exist_ok=True)
    imsave(out, img, check_contrast=False)
    print(f"wrote {out.relative_to(HERE.parent)} {img.shape[1]}x{img.shape[0]}")


def main() -> int:
    display = ensure_display()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            viewer, w, folder, manifest = demo_viewer(Path(tmp) / "session", n_slides=2)
            first, second = list(w.project.slides)
            for name in (second, first):
                w.slide.value = name
                click(w, "Compute priority map")
            w.method.value, w.unit.value, w.region_size.value, w.k.value = "random", "µm", 512, 3
            for name in (second, first):  # regions on both slides: three on one alone held too little tumour to learn
                w.slide.value = name
                click(w, "Suggest")
                for _ in range(3):
                    w.proposal_list.setCurrentRow(0)
                    click(w, "Accept region")
                    paint_truth(w, folder, manifest, viewer.layers.selection.active)
            click(w, "Retrain")
            w.tabs.setCurrentIndex(2)
            w.region_size.value = 256
            w.compare_methods.value = ["standard", "standard_nonsquare", "adaptive"]
            for name in (second, first):  # both slides, side by side, each with its proposals
                w.slide.value = name
                click(w, "Compare methods")
            viewer.reset_view()
            shot(viewer, "compare")
            w.method.value = "adaptive"
            w.proposal_list.setCurrentRow(0)
            click(w, "Accept region")
            layer = viewer.layers.selection.active
            paint_truth(w, folder, manifest, layer)
            w.tabs.setCurrentIndex(3)
            shot(viewer, "annotate")
            w.tabs.setCurrentIndex(4)
            w.n_uncertain.value = 6
            click(w, "Find uncertain patches")
            for name in (first, second):
                viewer.layers[f"{name} priority"].visible = False
            w.slides.go_to_slide(first)
            shot(viewer, "correct")
            viewer.close()
    finally:
        if display is not None:
            display.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
