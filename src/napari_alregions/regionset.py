"""The session's regions: one uid-keyed set, each region proposed, accepted or dismissed.

The set is the only copy of the regions: napari layers and the widget's lists are views
that redraw on its :class:`RegionEvent`\\ s. Changes happen under a lock (a retrain
proposes from its worker thread while the viewer accepts); events are sent after the lock
is released, on the thread that made the change.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .geometry import Region

__all__ = ["ACCEPTED", "DISMISSED", "PROPOSED", "RegionEvent", "RegionSet"]

PROPOSED, ACCEPTED, DISMISSED = "proposed", "accepted", "dismissed"
STATUSES = (PROPOSED, ACCEPTED, DISMISSED)
EVENT_KINDS = ("proposed", "accepted", "dismissed", "edited", "removed")


@dataclass(frozen=True)
class RegionEvent:
    """What changed: ``kind`` (one of :data:`EVENT_KINDS`), on which ``slide``, which ``regions``
    (as they are now; for ``proposed`` the new proposals of ``method``, which replaced its old ones;
    for ``removed`` as they were)."""

    kind: str
    slide: str | None
    regions: tuple[Region, ...]
    method: str | None = None


class RegionSet:
    """Regions by uid with their status, in the order they were added (accepting moves a
    region to the end, so :meth:`accepted` lists regions in the order they were accepted).

    Examples
    --------
    >>> s = RegionSet()
    >>> [p] = s.propose([Region(0, 0, 64, 64, method="random", slide="a")])
    >>> s.status(p.uid)
    'proposed'
    >>> _ = s.accept(p); s.status(p.uid), len(s.proposed("a"))
    ('accepted', 0)
    """

    def __init__(self, regions: Iterable[tuple[Region, str]] = ()) -> None:
        self._regions: dict[str, Region] = {}
        self._status: dict[str, str] = {}
        self._lock = threading.RLock()
        #: Callbacks ``f(event: RegionEvent)``, called after every change.
        self.changed: list[Callable[[RegionEvent], None]] = []
        for region, status in regions:
            if status not in STATUSES:
                raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
            region = region if region.uid else region.with_(uid=new_uid())
            self._regions[region.uid] = region
            self._status[region.uid] = status

    # -- queries ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._regions)

    def __contains__(self, uid: object) -> bool:
        return uid in self._regions

    def get(self, uid: str | None) -> Region | None:
        return self._regions.get(uid) if uid else None

    def status(self, uid: str | None) -> str | None:
        return self._status.get(uid) if uid else None

    def _where(self, status: str, slide: str | None, method: str | None = None) -> list[Region]:
        with self._lock:
            return [r for uid, r in self._regions.items() if self._status[uid] == status
                    and (slide is None or r.slide == slide) and (method is None or r.method == method)]

    def proposed(self, slide: str | None = None, method: str | None = None) -> list[Region]:
        return self._where(PROPOSED, slide, method)

    def accepted(self, slide: str | None = None) -> list[Region]:
        return self._where(ACCEPTED, slide)

    def dismissed(self, slide: str | None = None) -> list[Region]:
        return self._where(DISMISSED, slide)

    def items(self) -> list[tuple[Region, str]]:
        with self._lock:
            return [(r, self._status[uid]) for uid, r in self._regions.items()]

    # -- changes ---------------------------------------------------------------------------
    def _emit(self, event: RegionEvent) -> None:
        for callback in list(self.changed):
            callback(event)

    def propose(self, regions: Iterable[Region], *, slide: str | None = None, method: str | None = None) -> list[Region]:
        """Make ``regions`` the proposals of their slide and method, replacing that method's
        earlier proposals there (accepted and dismissed regions stay). With no regions,
        ``slide`` and ``method`` say whose proposals are cleared."""
        regions = [r if r.uid else r.with_(uid=new_uid()) for r in regions]
        keys = {(r.slide, r.method) for r in regions} or {(slide, method)}
        with self._lock:
            for uid in [u for u, r in self._regions.items() if self._status[u] == PROPOSED and (r.slide, r.method) in keys]:
                del self._regions[uid], self._status[uid]
            for r in regions:
                if self._status.get(r.uid, PROPOSED) != PROPOSED:
                    raise ValueError(f"region {r.uid!r} is already {self._status[r.uid]}; it cannot be proposed")
                self._regions[r.uid] = r
                self._status[r.uid] = PROPOSED
        for s, m in sorted(keys, key=str):
            self._emit(RegionEvent("proposed", s, tuple(r for r in regions if (r.slide, r.method) == (s, m)), m))
        return regions

    def accept(self, region: Region) -> Region:
        """Move a proposal (by uid) or a new region into the accepted set; an accepted region
        is returned as stored."""
        with self._lock:
            if self._status.get(region.uid) == ACCEPTED:
                return self._regions[region.uid]
            region = region if region.uid else region.with_(uid=new_uid())
            self._regions.pop(region.uid, None)  # to the end: accepted in the order accepted
            self._regions[region.uid] = region
            self._status[region.uid] = ACCEPTED
        self._emit(RegionEvent("accepted", region.slide, (region,), region.method))
        return region

    def dismiss(self, uid: str | None) -> Region:
        """Mark the proposal ``uid`` dismissed (it stays, so nothing proposes it again)."""
        with self._lock:
            region = self._require(uid, PROPOSED)
            self._status[uid] = DISMISSED
        self._emit(RegionEvent("dismissed", region.slide, (region,), region.method))
        return region

    def edit(self, region: Region) -> Region:
        """Replace the proposal with ``region.uid`` by ``region`` (moved or resized)."""
        with self._lock:
            old = self._require(region.uid, PROPOSED)
            if region.slide != old.slide:
                raise ValueError(f"region: a proposal cannot move to another slide ({old.slide!r} -> {region.slide!r})")
            self._regions[region.uid] = region
        self._emit(RegionEvent("edited", region.slide, (region,), region.method))
        return region

    def remove(self, uid: str | None, *, status: str = ACCEPTED) -> Region:
        """Forget the region ``uid`` (which must have ``status``); returns it as it was."""
        with self._lock:
            region = self._require(uid, status)
            del self._regions[uid], self._status[uid]
        self._emit(RegionEvent("removed", region.slide, (region,), region.method))
        return region

    def _require(self, uid: str | None, status: str) -> Region:
        what = {ACCEPTED: "an accepted region", PROPOSED: "a proposal", DISMISSED: "a dismissed region"}[status]
        if not uid or uid not in self._regions:
            raise ValueError(f"region: {uid!r} is not {what} of this session (already removed?)")
        if self._status[uid] != status:
            raise ValueError(f"region: {uid!r} is {self._status[uid]}, not {what}")
        return self._regions[uid]


def new_uid() -> str:
    return str(uuid.uuid4())
