"""Simulated region-based active learning with a ground-truth oracle (SPEC §8).

The protocol of the adaptive-region paper (§2.1, §3.2): every training slide starts with k
random regions (>= 10 % tissue; the same initial set for every method); each cycle trains
(then fine-tunes) the patch classifier on the revealed labels, predicts probability maps,
turns them into least-confidence priority maps, selects k new regions per slide with the
method under test and reveals the ground truth inside them. After every training the
model is scored on the held-out test slides: mIoU(tumour) at threshold 0.5 over test slides
with tumour, Dice, and the annotated share of the training tissue.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import Region
from .io_qupath import write_regions
from .priority import MEASURES
from .selection import select
from .wsi import Slide, open_labels, open_slide

__all__ = ["Pool", "SimConfig", "annotated_fraction", "reveal", "run_simulation", "write_outputs"]

logger = logging.getLogger(__name__)

TUMOUR, TISSUE = 2, 1


@dataclass(frozen=True)
class SimConfig:
    """Simulation settings; ``settings`` lists the (l, k) pairs (l in level-0 px)."""

    methods: tuple[str, ...] = ("random", "standard", "standard_nonsquare", "adaptive")
    settings: tuple[tuple[int, int], ...] = ((384, 2),)
    cycles: int = 5
    seed: int = 0
    stride: int = 64
    level: int = 1
    patch_size: int = 64
    measure: str = "least_confidence"
    initial_epochs: int = 12
    fine_tune_steps: int = 60
    patches_per_slide: int = 48
    target: float = 0.95
    full_baseline: bool = True
    initial: tuple[str, ...] = ("random",)  # initial labeled set: random, diversity, prototype
    prototypes: str | None = None  # .npz prototype set (prototype initial set or method)
    encoder: str = "random"  # patch encoder for diversity/focannot/prototype (see embed.load_encoder)
    scheduler: str | None = None  # per-slide prediction on this dask scheduler ...
    local_cluster: int = 0  # ... or on a LocalCluster of N workers (0: in this process)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the setting that cannot run (before any work)."""
        from .selection import METHODS

        if not self.methods:
            raise ValueError("methods: name at least one selector")
        for m in self.methods:
            if m not in METHODS:
                raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        for init in self.initial:
            if init not in INITIAL:
                raise ValueError(f"unknown initial strategy {init!r}; choose from {', '.join(INITIAL)}")
        if ("prototype" in self.methods or "prototype" in self.initial) and not self.prototypes:
            raise ValueError("prototype selection needs a prototype set (--prototypes FILE.npz)")
        if self.measure not in MEASURES or MEASURES[self.measure][1]:
            raise ValueError(f"measure must be a single-model measure, got {self.measure!r}")
        if self.cycles < 1:
            raise ValueError(f"cycles must be >= 1, got {self.cycles}")
        if not 0 < self.target <= 1:
            raise ValueError(f"target must be in (0, 1] (a share of full-annotation mIoU), got {self.target}")
        if not self.settings:
            raise ValueError("settings: give at least one (region size, k) pair")
        for l_, k_ in self.settings:
            if l_ <= 0 or l_ % self.stride:
                raise ValueError(f"region size {l_} must be a positive multiple of the stride {self.stride}")
            if k_ < 1:
                raise ValueError(f"k (regions per slide and cycle) must be >= 1, got {k_}")


@dataclass
class Pool:
    """A synthetic (or any manifest-described) slide pool with ground truth at the working level."""

    folder: Path
    train: list[str]
    test: list[str]
    slides: dict[str, Slide]
    truth: dict[str, np.ndarray]  # (H_l, W_l) uint8: 0 glass, 1 tissue, 2 tumour
    tissue: dict[str, np.ndarray]  # (H_map, W_map) bool
    level: int
    stride: int

    @classmethod
    def load(cls, folder: str | Path, *, level: int, stride: int) -> Pool:
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no manifest.json (make one with `alregions make-demo-data`)")
        manifest = json.loads(path.read_text())
        slides, truth, tissue, train, test = {}, {}, {}, [], []
        for entry in manifest["slides"]:
            name = entry["name"]
            slide = open_slide(folder / entry["image"])
            if level >= slide.level_count:
                raise ValueError(f"{name}: working level {level} does not exist ({slide.level_count} levels)")
            # local threads: a distributed Client in this process must not receive file handles
            gt = np.asarray(open_labels(folder / entry["mask"])[level].compute(scheduler="threads"))
            slides[name], truth[name] = slide, gt
            tissue[name] = slide.tissue_map(stride)
            (test if entry.get("split") == "test" else train).append(name)
        if not train or not test:
            raise ValueError(f"{folder}: the pool needs training and test slides (split in manifest.json)")
        return cls(folder, train, test, slides, truth, tissue, level, stride)

    def truth_cells(self, name: str) -> np.ndarray:
        """Tumour at map resolution by the paper's rule: any tumour in the cell's centre half."""
        gt = self.truth[name]
        f = self.slides[name].level_factor(self.level)
        cell = int(self.stride // f)
        h, w = self.tissue[name].shape
        g = gt[: h * cell, : w * cell].reshape(h, cell, w, cell)
        q = cell // 4
        return (g[:, q : cell - q, :, q : cell - q] == TUMOUR).any(axis=(1, 3))

    def close(self) -> None:
        for s in self.slides.values():
            s.close()


def reveal(truth: np.ndarray, labels: np.ndarray, region: Region, factor: float) -> None:
    """The oracle: copy the ground truth inside a level-0 region into a label mask (in place).

    Labels: 2 (tumour) where the truth is tumour, 1 elsewhere (other tissue and glass).
    """
    y0, x0 = int(region.y // factor), int(region.x // factor)
    y1, x1 = int(-(-region.y1 // factor)), int(-(-region.x1 // factor))
    t = truth[y0:y1, x0:x1]
    labels[y0:y1, x0:x1] = np.where(t == TUMOUR, 2, 1)


def annotated_fraction(truth: dict[str, np.ndarray], labels: dict[str, np.ndarray], names: Sequence[str]) -> float:
    """Share of the tissue of ``names`` that is labeled."""
    done = sum(int(((labels[n] > 0) & (truth[n] > 0)).sum()) for n in names)
    total = sum(int((truth[n] > 0).sum()) for n in names)
    return done / total if total else 0.0


def _metrics(prob: np.ndarray, truth_cells: np.ndarray) -> tuple[float, float]:
    pred = np.nan_to_num(prob, nan=0.0) >= 0.5
    inter = int((pred & truth_cells).sum())
    union = int((pred | truth_cells).sum())
    total = int(pred.sum() + truth_cells.sum())
    return (inter / union if union else 1.0), (2 * inter / total if total else 1.0)


class _Trainer:
    """Trains, fine-tunes and predicts with one model across cycles."""

    def __init__(self, pool: Pool, config: SimConfig, client=None) -> None:
        from .model import ModelSpec

        self.pool, self.config = pool, config
        self.spec = ModelSpec(level=config.level, patch_size=config.patch_size)
        self.model = None
        self.client = client

    def fit(self, labels: dict[str, np.ndarray], names: Sequence[str], seed: int, cancel=None) -> dict:
        from .model import TrainConfig, find_candidates, fine_tune, train

        cands = []
        for n in names:
            slide = self.pool.slides[n]
            c = find_candidates(slide, labels[n], level=self.config.level, patch_size=self.config.patch_size,
                                tissue=self.pool.truth[n] > 0)
            if len(c):
                cands.append(c)
        if not cands:
            raise ValueError("no labeled patches: the initial regions hold no tissue")
        if self.model is None:
            cfg = TrainConfig(epochs=self.config.initial_epochs, patches_per_slide=self.config.patches_per_slide, seed=seed)
            res = train(self.spec, cands, cfg, cancel=cancel)
        else:
            cfg = TrainConfig(epochs=100, patches_per_slide=self.config.patches_per_slide, seed=seed,
                              max_steps=self.config.fine_tune_steps, patience=100)
            res = fine_tune(self.model, self.spec, cands, cfg, cancel=cancel)
        self.model = res.model
        return {"steps": res.steps, "val_loss": res.best_val_loss}

    def predict(self, name: str) -> np.ndarray:
        from .model import predict_probability_map

        return predict_probability_map(self.pool.slides[name], self.model, self.spec, stride=self.pool.stride,
                                       tissue=self.pool.tissue[name])[..., 1]

    def predict_many(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Tumour probability maps of several slides; on the cluster when there is a client."""
        if self.client is None:
            return {n: self.predict(n) for n in names}
        import tempfile

        from .distributed import PoolJob, run_pool, slide_name

        with tempfile.TemporaryDirectory(prefix="alregions-sim-") as tmp:
            files = run_pool([self.pool.slides[n].path for n in names], self.model, self.spec,
                             PoolJob("predict", stride=self.pool.stride), tmp, client=self.client)
            return {n: np.load(files[slide_name(self.pool.slides[n].path)])[..., 1] for n in names}


INITIAL = ("random", "diversity", "prototype")


class _Features:
    """Patch embeddings (one encoder, computed once per slide) and prototype similarity maps."""

    def __init__(self, pool: Pool, config: SimConfig) -> None:
        self.pool, self.config = pool, config
        self._emb: dict[str, np.ndarray] = {}
        self._sim: dict[str, np.ndarray] = {}
        self._protos = None
        self._encoder = None

    def embeddings(self, name: str) -> np.ndarray:
        if name not in self._emb:
            from .embed import embed_slide, load_encoder

            if self._encoder is None:
                self._encoder = load_encoder(self.config.encoder, patch_size=self.config.patch_size, level=self.config.level)
            self._emb[name] = embed_slide(self.pool.slides[name], self._encoder, stride=self.pool.stride,
                                          tissue=self.pool.tissue[name])
        return self._emb[name]

    def similarity(self, name: str) -> np.ndarray:
        if name not in self._sim:
            from .embed import similarity_map
            from .prototypes import load_prototypes

            if self._protos is None:
                self._protos = load_prototypes(self.config.prototypes)
            self._sim[name] = similarity_map(self.embeddings(name), self._protos.of()) * self.pool.tissue[name]
        return self._sim[name]

    def map_for(self, method: str, name: str, priority: np.ndarray) -> np.ndarray:
        return self.similarity(name) if method == "prototype" else priority

    def arrays(self, method: str, name: str, region_size: int) -> dict[str, np.ndarray]:
        from .selection.diversity import region_embeddings
        from .selection.focannot import focannot_descriptors

        size = region_size // self.pool.stride
        if method == "diversity":
            return {"embeddings": region_embeddings(self.embeddings(name), size=size)}
        if method == "focannot":
            return {"descriptors": focannot_descriptors(self.embeddings(name), size=size)}
        return {}

    def initial(self, strategy: str, l_: int, k_: int) -> dict[str, list[Region]]:
        """The initial labeled regions of every training slide (cycle 0)."""
        from .selection import diversity_pool
        from .selection.diversity import region_embeddings

        pool, cfg = self.pool, self.config
        if strategy == "diversity":
            chosen = diversity_pool([region_embeddings(self.embeddings(n), size=l_ // pool.stride) for n in pool.train],
                                    stride=pool.stride, region_size=l_, n_per_slide=k_,
                                    tissue=[pool.tissue[n] for n in pool.train], rng=cfg.seed, slide_names=pool.train,
                                    strict=False)
            return {n: [r.with_(slide=n, cycle=0) for r in regs] for n, regs in zip(pool.train, chosen)}
        out = {}
        for i, n in enumerate(pool.train):
            t = pool.tissue[n]
            if strategy == "prototype":
                out[n] = select("prototype", self.similarity(n), stride=pool.stride, region_size=l_, k=k_, tissue=t,
                                seed=cfg.seed * 1000 + i, slide=n, cycle=0)
            else:
                out[n] = select("random", np.zeros(t.shape), stride=pool.stride, region_size=l_, k=k_,
                                tissue=t, seed=cfg.seed * 1000 + i, slide=n, cycle=0)
        return out


def _evaluate(trainer: _Trainer, pool: Pool) -> tuple[float, float]:
    ious, dices = [], []
    scored = [n for n in pool.test if pool.truth_cells(n).any()]
    probs = trainer.predict_many(scored)
    for n in scored:
        cells = pool.truth_cells(n)
        iou, dice = _metrics(probs[n], cells)
        ious.append(iou)
        dices.append(dice)
    return (float(np.mean(ious)) if ious else float("nan")), (float(np.mean(dices)) if dices else float("nan"))


def run_simulation(
    pool_folder: str | Path,
    config: SimConfig = SimConfig(),
    *,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the simulation for every (l, k) setting and method.

    Returns a dict with ``rows`` (one per method, setting and cycle), ``full`` (the
    full-annotation baseline mIoU and Dice) and ``regions`` (final regions per method and
    setting). With ``out``, also writes ``results.csv``, ``table.md``, ``area_vs_miou.png``
    and one GeoJSON of regions per method and setting.
    """
    import torch

    config.validate()
    say = progress or (lambda msg: None)
    pool = Pool.load(pool_folder, level=config.level, stride=config.stride)
    features = _Features(pool, config)
    from .distributed import close, connect

    client = connect(config.scheduler, config.local_cluster)
    measure = MEASURES[config.measure][0]
    rows: list[dict[str, Any]] = []
    final_regions: dict[str, list[Region]] = {}
    full = {"miou": float("nan"), "dice": float("nan")}
    try:
        if config.full_baseline:
            say("full annotation baseline")
            trainer = _Trainer(pool, config, client)
            labels = {n: np.where(pool.truth[n] == TUMOUR, 2, 1).astype(np.uint8) for n in pool.train}
            torch.manual_seed(config.seed)
            trainer.fit(labels, pool.train, seed=config.seed)
            full["miou"], full["dice"] = _evaluate(trainer, pool)
        for l_, k_ in config.settings:
            for init in config.initial:
                # the same initial regions for every method
                initial = features.initial(init, l_, k_)
                for method in config.methods:
                    label = method if len(config.initial) == 1 else f"{method} (init {init})"
                    trainer = _Trainer(pool, config, client)
                    regions = {n: list(initial[n]) for n in pool.train}
                    labels = {n: np.zeros(pool.truth[n].shape, np.uint8) for n in pool.train}
                    for cycle in range(config.cycles):
                        t0 = time.perf_counter()
                        for n in pool.train:
                            f = pool.slides[n].level_factor(config.level)
                            for r in regions[n]:
                                reveal(pool.truth[n], labels[n], r, f)
                        torch.manual_seed(config.seed * 100 + cycle)
                        fit = trainer.fit(labels, pool.train, seed=config.seed * 100 + cycle)
                        miou, dice = _evaluate(trainer, pool)
                        area = annotated_fraction(pool.truth, labels, pool.train)
                        rows.append({
                            "method": label, "initial": init, "region_size": l_, "k": k_, "cycle": cycle,
                            "annotated_area_pct": round(100 * area, 4), "miou_tumour": round(miou, 6),
                            "dice_tumour": round(dice, 6), "n_regions": sum(len(v) for v in regions.values()),
                            "train_steps": fit["steps"], "wall_s": round(time.perf_counter() - t0, 2),
                        })
                        say(f"{label} l={l_} k={k_} cycle {cycle}: area {100 * area:.2f}%  mIoU {miou:.3f}")
                        if cycle == config.cycles - 1:
                            break
                        probs = trainer.predict_many(pool.train)
                        for i, n in enumerate(pool.train):
                            prio = measure(probs[n], tissue=pool.tissue[n])
                            new = select(method, features.map_for(method, n, prio), stride=config.stride, region_size=l_,
                                         k=k_, tissue=pool.tissue[n], annotated=regions[n],
                                         seed=config.seed * 1000 + 97 * (cycle + 1) + i, slide=n, cycle=cycle + 1,
                                         **features.arrays(method, n, l_))
                            regions[n].extend(new)
                    final_regions[f"{label.replace(' ', '_').replace('(', '').replace(')', '')}_l{l_}_k{k_}"] = [r for n in pool.train for r in regions[n]]
    finally:
        pool.close()
        close(client)
    result = {"rows": rows, "full": full, "regions": final_regions, "config": config.to_dict()}
    if out is not None:
        write_outputs(result, Path(out))
    return result


def area_to_reach(rows: Sequence[dict], method: str, l_: int, k_: int, goal: float) -> float | None:
    """Annotated area (%) at the first cycle whose mIoU reaches ``goal``; None if never."""
    for r in sorted((r for r in rows if r["method"] == method and r["region_size"] == l_ and r["k"] == k_), key=lambda r: r["cycle"]):
        if r["miou_tumour"] >= goal:
            return r["annotated_area_pct"]
    return None


def _labels(result: dict[str, Any]) -> list[str]:
    """Method labels in run order (a method per initial strategy when there are several)."""
    return list(dict.fromkeys(r["method"] for r in result["rows"])) or list(result["config"]["methods"])


def results_table(result: dict[str, Any]) -> str:
    """Markdown table like the adaptive paper's Table 1."""
    cfg = result["config"]
    rows, full = result["rows"], result["full"]
    goal = cfg["target"] * full["miou"]
    settings = [tuple(s) for s in cfg["settings"]]
    head = "| method | " + " | ".join(f"k={k}, l={l}" for l, k in settings) + " |"
    lines = [
        f"Annotated tissue area (%) needed to reach {100 * cfg['target']:.0f}% of full-annotation mIoU(tumour) "
        f"({full['miou']:.3f} → goal {goal:.3f}); \"/\" = not reached in {cfg['cycles']} cycles.",
        "",
        head,
        "|" + "---|" * (len(settings) + 1),
    ]
    for m in _labels(result):
        cells = []
        for l_, k_ in settings:
            a = area_to_reach(rows, m, l_, k_, goal)
            cells.append("/" if a is None else f"{a:.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.csv, table.md, area_vs_miou.png and regions_<method>_l<l>_k<k>.geojson."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    rows = result["rows"]
    if rows:
        csv_path = out / "results.csv"
        with open(csv_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        paths["csv"] = csv_path
    (out / "table.md").write_text(results_table(result))
    paths["table"] = out / "table.md"
    (out / "full_annotation.json").write_text(json.dumps(result["full"], indent=1))
    paths["plot"] = _plot(result, out / "area_vs_miou.png")
    for key, regions in result["regions"].items():
        write_regions(out / f"regions_{key}.geojson", regions)
    paths["regions"] = out
    return paths


def _plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    settings = [tuple(s) for s in cfg["settings"]]
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False)
    for ax, (l_, k_) in zip(axes[0], settings, strict=True):
        for m in _labels(result):
            pts = sorted((r["annotated_area_pct"], r["miou_tumour"]) for r in result["rows"]
                         if r["method"] == m and r["region_size"] == l_ and r["k"] == k_)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=m)
        full = result["full"]["miou"]
        if np.isfinite(full):
            ax.axhline(full, ls="--", c="k", lw=1, label="full annotation")
            ax.axhline(cfg["target"] * full, ls=":", c="0.35", lw=1, label=f"{cfg['target']:.0%} of it (the table's goal)")
        ax.set_title(f"l = {l_} px, k = {k_}")
        ax.set_xlabel("annotated tissue area (%)")
        ax.set_ylabel("mIoU (tumour)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
