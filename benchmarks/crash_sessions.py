"""Kill -9 a process that paints and accepts in a session at random moments; count what is lost.

    python benchmarks/crash_sessions.py [--trials 30] [--seed 0]

Each trial starts a child process that reopens the same session (taking over the lock its
killed predecessor left) and, as fast as it can, paints 4x4 strokes in cells of their own
(each marked and saved: the autosave) and accepts regions (each saved), printing every
acknowledged change after its save returned. The parent kills it with SIGKILL after a
random delay, then reopens the session and checks each acknowledged stroke (its pixels hold
its value) and region (accepted, its labels there). It reports the strokes and regions lost,
sessions that did not open, and the temporary files left after the next open.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import sys
from napari_alregions.geometry import Region
from napari_alregions.session import Session

folder, start = sys.argv[1], int(sys.argv[2])
s = Session.open(folder, take_over=True)
lab = s.labels("a")
i = start
while True:
    if i % 5 == 4:  # an accepted region, saved
        r = s.accept(Region(0, 16 * i, 16, 16, slide="a", method="crash"))
        s.save()
        print("region", i, r.uid, flush=True)
    else:  # a stroke in a cell of its own
        y, x = divmod(i, 900)
        y, x = 4 * (y % 900), 4 * x
        lab[y : y + 4, x : x + 4] = 1 + i % 2
        s.mark_labels_changed("a", (y, x, y + 4, x + 4))
        s.save()
        print("stroke", i, y, x, 1 + i % 2, flush=True)
    i += 1
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=3.0, help="seconds after the child's first save")
    args = ap.parse_args()

    from napari_alregions.session import Session

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "s"
        s = Session.create(folder)
        s.add_slide("a", "a.tif", label_shape=(3600, 4096))
        s.save()
        s.close()
        strokes, regions = {}, {}
        lost_strokes = lost_regions = unopenable = 0
        start = 0
        for trial in range(args.trials):
            child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(start)], stdout=subprocess.PIPE, text=True)
            first = child.stdout.readline()  # the child has saved once: kill it somewhere after
            lines = [first]
            time.sleep(rng.uniform(0, args.max_delay))
            child.send_signal(signal.SIGKILL)
            out, _ = child.communicate()
            lines += out.splitlines()
            for line in filter(None, (x.strip() for x in lines)):
                kind, i, *rest = line.split()
                if kind == "stroke":
                    strokes[int(i)] = tuple(int(v) for v in rest)
                else:
                    regions[int(i)] = rest[0]
                start = max(start, int(i) + 1)
            start += 1  # the change in flight, if any, is not checked
            try:
                back = Session.open(folder, take_over=True)
            except Exception as exc:  # noqa: BLE001 (counted and shown)
                unopenable += 1
                print(f"trial {trial}: session did not open: {exc}")
                continue
            lab = back.labels("a")
            lost_strokes = sum(not (lab[y : y + 4, x : x + 4] == v).all() for y, x, v in strokes.values())
            accepted = {r.uid for r in back.accepted}
            lost_regions = sum(uid not in accepted for uid in regions.values())
            back.close()
        temp = [p for p in folder.rglob("*") if p.is_file() and (".part" in p.name or p.name.endswith(".partial"))]
        print(f"{args.trials} kill -9 trials: {len(strokes)} acknowledged strokes, {len(regions)} acknowledged regions; "
              f"lost {lost_strokes} strokes, {lost_regions} regions; {unopenable} session(s) did not open; "
              f"{len(temp)} temporary file(s) left after the last open {sorted(str(p.relative_to(folder)) for p in temp)}")
    return 0 if not (lost_strokes or lost_regions or unopenable) else 1


if __name__ == "__main__":
    raise SystemExit(main())
