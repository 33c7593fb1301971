"""The Model tab: the model (new, load, save), training length, maps and embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui import widgets as mw

from .._errors import describe
from ..priority import MEASURES

__all__ = ["ModelTab"]


class ModelTab:
    """Architecture, checkpoints, how long a retrain may take, priority map, encoder, prototypes."""

    def __init__(self, w) -> None:
        from ..architectures import ARCHITECTURES

        self.w = w
        self.arch = mw.ComboBox(label="Architecture", choices=list(ARCHITECTURES), value="compact")
        self.patch_size = mw.SpinBox(label="Patch size (px)", value=64, min=16, max=1024, step=16)
        self.level = mw.SpinBox(label="Working level", value=1, min=0, max=10)
        self.members = mw.SpinBox(label="Ensemble members", value=1, min=1, max=10)
        new = w.button("New model", "an untrained model; labels and regions are kept")
        new.changed.connect(self.new_model)
        self.checkpoint = mw.FileEdit(label="Checkpoint", mode="r", filter="*.pt")
        load = w.button("Load checkpoint")
        load.changed.connect(self.load_checkpoint)
        self.save_file = mw.FileEdit(label="Save model to", mode="w", filter="*.pt")
        save = w.button("Save model", "write the model in use (its checkpoints) to the file above")
        save.changed.connect(self.save_model)
        self.epochs = mw.SpinBox(label="Training epochs", value=0, min=0, max=10_000,
                                 tooltip="epochs of a deep retrain (0: the schedule's)")
        self.max_seconds = mw.SpinBox(label="Training time limit (s)", value=0, min=0, max=86_400,
                                      tooltip="wall time of one retrain (0: the schedule's)")
        for spin in (self.epochs, self.max_seconds):
            spin.changed.connect(self._training_changed)
        self.device = mw.Label(label="Device", value="")
        self.measure = mw.ComboBox(label="Priority measure", choices=list(MEASURES), value="least_confidence")
        self.compute_btn = w.button("Compute priority map")
        self.compute_btn.changed.connect(self.compute_priority)
        self.encoder_src = mw.LineEdit(label="Encoder", value="classifier",
                                       tooltip="classifier (the model's penultimate layer), random[:seed], a checkpoint "
                                               "path, torchvision:<arch>[:weights] or an exported program (.pt2): "
                                               "the encoder your prototypes were made with")
        embed = w.button("Compute embeddings", "patch embeddings of the current slide with the encoder above")
        embed.changed.connect(self.compute_embeddings)
        self.prototypes_file = mw.FileEdit(label="Prototypes", mode="r", filter="*.npz")
        sim = w.button("Similarity map", "load the prototype set and show each patch's similarity to it")
        sim.changed.connect(self.compute_similarity)
        w.busy_buttons += [self.compute_btn, embed, sim, save]
        self._filling = False
        self.box = mw.Container(widgets=[self.arch, self.patch_size, self.level, self.members, new, self.checkpoint, load,
                                         self.save_file, save, self.epochs, self.max_seconds, self.device, self.measure,
                                         self.compute_btn, self.encoder_src, embed, self.prototypes_file, sim])
        w.hub.events.project.connect(self._project)
        w.hub.events.model.connect(lambda: setattr(self.device, "value", w.project.device) if w.project else None)

    def _project(self, p) -> None:
        if p is None:
            return
        self._filling = True
        try:
            spec = p.spec
            self.arch.value, self.patch_size.value, self.level.value = spec.arch, spec.patch_size, spec.level
            self.members.value = p.n_members
            self.encoder_src.value = p.encoder_source
            budget = p.session.settings.training
            self.epochs.value = budget.epochs or 0
            self.max_seconds.value = int(budget.max_seconds or 0)
        finally:
            self._filling = False

    def _training_changed(self, *_) -> None:
        p = self.w.project
        if self._filling or p is None:
            return
        self.w.done(p.set_training, epochs=self.epochs.value or None, max_seconds=self.max_seconds.value or None)

    def new_model(self) -> None:
        p = self.w.project
        # new_model returns nothing: only a call that went through may say so
        if self.w.done(p.new_model if p else None, arch=self.arch.value, patch_size=self.patch_size.value,
                       level=self.level.value, members=self.members.value):
            self.w.show_status()
            self.w.message_user(f"new untrained {self.arch.value} model ({self.members.value} member(s))")

    def load_checkpoint(self) -> None:
        from ..model import CheckpointError

        p = self.w.project
        if p is None:
            self.w.message_user("create or open a session first", True)
            return
        try:
            p.load_model(Path(self.checkpoint.value))
        except (CheckpointError, FileNotFoundError) as exc:
            self.w.message_user(describe(exc), True)
            return
        self.w.show_status()
        self.w.message_user(f"loaded {Path(self.checkpoint.value).name}")

    def save_model(self) -> None:
        p, text = self.w.project, self.save_file.line_edit.value.strip()
        if p is None or not text:
            self.w.message_user("create or open a session first" if p is None else "choose a file to save the model to", True)
            return
        path = Path(text).expanduser()
        self.w.call("saving the model", p.save_model, path,
                    on_done=lambda paths: self.w.message_user("saved the model to " + ", ".join(str(q) for q in paths)))

    def compute_priority(self) -> None:
        p, name = self.w.project, self.w.slide_or_say()
        if name is None:
            return
        measure = self.measure.value

        self.w.task(lambda cancel: p.iter_priority(name, measure=measure, cancel=cancel), desc="priority map",
                    on_done=lambda _: self.w.message_user(f"priority map ({measure}) for {name}"))

    def _apply_encoder(self) -> bool:
        source = self.encoder_src.value.strip() or "classifier"
        if source == self.w.project.encoder_source:
            return True
        return self.w.done(self.w.project.set_encoder, source)

    def compute_embeddings(self) -> None:
        p, name = self.w.project, self.w.slide_or_say()
        if name is None or not self._apply_encoder():
            return
        self.w.task(lambda cancel: p.iter_embed(name, cancel=cancel), desc="embeddings",
                    on_done=lambda emb: self.w.message_user(f"{int(np.isfinite(emb).all(-1).sum())} patch embeddings "
                                                            f"(D={emb.shape[-1]}) for {name}"))

    def compute_similarity(self) -> None:
        p, name = self.w.project, self.w.slide_or_say()
        if name is None:
            return
        if self.prototypes_file.value and Path(self.prototypes_file.value).is_file():
            if not self.w.done(p.set_prototypes, Path(self.prototypes_file.value)):
                return  # the message says why; an older prototype set is not used in its place
        if p.prototypes is None:
            self.w.message_user("choose a prototype set (.npz from `alregions prototypes`)", True)
            return
        if not self._apply_encoder():
            return

        self.w.task(lambda cancel: p.iter_similarity(name, cancel=cancel), desc="similarity",
                    on_done=lambda sim: self.w.message_user(f"prototype similarity for {name} (max {float(sim.max()):.3f}); "
                                                            "suggest with 'Prototype similarity'"))
