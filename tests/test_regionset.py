"""One uid-keyed set of regions with statuses and change events (napari_alregions.regionset),
and the project's dismiss / edit of proposals on top of it."""

from __future__ import annotations

import pytest

from napari_alregions.geometry import Region
from napari_alregions.project import AnnotationProject
from napari_alregions.regionset import RegionSet


def _r(x, method="random", slide="a", **kw):
    return Region(x, 0, 64, 64, method=method, slide=slide, **kw)


def test_statuses_events_and_order():
    s = RegionSet()
    events = []
    s.changed.append(events.append)
    a0, a1 = s.propose([_r(0), _r(64)])
    [b0] = s.propose([_r(0, method="standard")])
    assert [e.kind for e in events] == ["proposed", "proposed"]
    assert events[1].method == "standard" and events[1].regions == (b0,)
    # a new proposal of the same slide and method replaces that method's old ones only
    [a2] = s.propose([_r(128)])
    assert s.proposed("a", "random") == [a2] and s.proposed("a", "standard") == [b0]
    assert a0.uid not in s
    s.accept(b0)
    new = s.accept(_r(512, method=""))  # a region drawn by the user: gets a uid
    assert new.uid and [r.uid for r in s.accepted()] == [b0.uid, new.uid]  # accept order
    assert s.accept(b0) == b0 and len(s.accepted()) == 2  # accepting twice changes nothing
    s.dismiss(a2.uid)
    assert s.status(a2.uid) == "dismissed" and s.proposed() == []
    # a re-proposal of random does not resurrect or drop the dismissed one
    s.propose([_r(256)])
    assert s.status(a2.uid) == "dismissed" and len(s.proposed("a", "random")) == 1
    with pytest.raises(ValueError, match="not a proposal"):
        s.dismiss(b0.uid)
    with pytest.raises(ValueError, match="not a proposal"):
        s.edit(b0.with_(x=64))
    removed = s.remove(b0.uid)
    assert removed == b0 and b0.uid not in s
    with pytest.raises(ValueError, match="not an accepted region"):
        s.remove(b0.uid)
    assert [e.kind for e in events] == ["proposed", "proposed", "proposed", "accepted", "accepted", "dismissed",
                                        "proposed", "removed"]
    # clearing a method's proposals with no regions still says whose
    s.propose([], slide="a", method="random")
    assert events[-1].kind == "proposed" and events[-1].method == "random" and events[-1].regions == ()
    assert s.proposed() == []


def test_edit_keeps_uid_and_refuses_another_slide():
    s = RegionSet()
    [p] = s.propose([_r(0)])
    moved = s.edit(p.with_(x=128, w=128))
    assert moved.uid == p.uid and s.get(p.uid).x == 128 and s.get(p.uid).w == 128
    with pytest.raises(ValueError, match="another slide"):
        s.edit(p.with_(slide="b"))


def test_dismiss_and_edit_persist_and_steer_selection(tmp_path, small_pool):
    folder, manifest = small_pool
    p = AnnotationProject.create(tmp_path / "s", patch_size=32, level=1)
    slide = p.add_slide(folder / manifest["slides"][0]["image"])
    st = p.stride
    proposals = p.suggest(slide, "random", region_size=4 * st, k=3, seed=1)
    gone = p.dismiss(proposals[0])
    # moved by 1.4 cells right and 0.4 down, resized to 2.6 x 3.5 cells: each side to the nearest grid line
    edited = p.edit_proposal(proposals[1], x=proposals[1].x + 1.4 * st, y=proposals[1].y + 0.4 * st,
                             w=2.6 * st, h=3.5 * st)
    assert (edited.x, edited.y, edited.w, edited.h) == (proposals[1].x + st, proposals[1].y, 3 * st, 4 * st)
    assert edited.uid == proposals[1].uid
    # a box past the slide's edge is clipped to it; one wholly outside is refused
    h, w = p.slides[slide].shape
    clipped = p.edit_proposal(edited, x=w - 2 * st, y=0, w=10 * st, h=st)
    assert clipped.x == round((w - 2 * st) / st) * st and clipped.x1 == -(-w // st) * st
    with pytest.raises(ValueError, match="outside the slide"):
        p.edit_proposal(edited, x=w + 10 * st, y=0, w=st, h=st)
    with pytest.raises(ValueError, match="not a proposal"):
        p.edit_proposal(gone, x=0, y=0, w=st, h=st)
    p.close()
    back = AnnotationProject.open(p.folder)
    assert back.session.store.status(gone.uid) == "dismissed"
    assert back.session.store.get(clipped.uid) == clipped
    assert [r.uid for r in back.proposals(slide)] == [proposals[1].uid, proposals[2].uid]
    # no selector proposes the dismissed area again: random over many seeds never overlaps it
    for seed in range(5):
        for r in back.suggest(slide, "random", region_size=4 * st, k=5, seed=seed):
            assert not _overlap(r, gone)
    back.close()


def _overlap(a, b):
    return a.x < b.x1 and b.x < a.x1 and a.y < b.y1 and b.y < a.y1
