"""Progress plumbing: callback-style functions as generators, and the CLI's bars.

napari's thread workers show progress and stop cleanly when the work is a generator that
yields. :func:`iter_progress` runs a callback-style function (e.g.
``predict_probability_map``) in a helper thread and yields what it reports, so the same
core function serves the CLI (callbacks), scripts (plain calls) and the viewer (a worker).
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["counts_per_step", "iter_progress", "progress_bar", "relay", "run", "steps_with_message", "within_step"]

T = TypeVar("T")
_DONE = object()
_MESSAGE_CHARS = 72  # a step's message beside the bar: cut at its end, never at its start


def iter_progress(fn: Callable[..., T], *args: Any, cancel: Callable[[], bool] | None = None,
                  **kwargs: Any) -> Generator[tuple, None, T]:
    """Call ``fn(*args, progress=..., cancel=cancel, **kwargs)``; yield each progress report.

    The generator's return value (``StopIteration.value``, or ``yield from``) is ``fn``'s
    result; an exception raised by ``fn`` is raised from the generator. Closing the
    generator early sets the cancel flag ``fn`` polls and waits for it to stop.
    """
    reports: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    closed = threading.Event()

    def should_stop() -> bool:
        return closed.is_set() or (cancel is not None and bool(cancel()))

    def target() -> None:
        try:
            outcome["value"] = fn(*args, progress=lambda *a: reports.put(a), cancel=should_stop, **kwargs)
        except BaseException as exc:  # handed to the consumer
            outcome["error"] = exc
        finally:
            reports.put(_DONE)

    thread = threading.Thread(target=target, name=f"iter_progress-{getattr(fn, '__name__', 'fn')}", daemon=True)
    thread.start()
    try:
        while (item := reports.get()) is not _DONE:
            yield item
    finally:
        closed.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def run(gen: Generator[Any, None, T], progress: Callable[[Any], None] | None = None) -> T:
    """Drive a generator of progress reports to its end; return its value (``progress``
    gets each report, or they are dropped)."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(item)


def relay(gen: Generator[Any, None, T], transform: Callable[[Any], Any]) -> Generator[Any, None, T]:
    """Yield ``transform(item)`` for each item of ``gen``; return ``gen``'s return value."""
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            yield transform(item)
    finally:
        gen.close()


def progress_bar(total: int | None, desc: str, unit: str):
    """A tqdm bar on stderr for the command line (shown even when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=False, mininterval=1.0)


def counts_per_step(bar) -> Callable[[Any], None]:
    """A ``progress(record)`` callback for the records of the project's generators
    (``{"phase", "slide", "member", "done" or "step", "total"}``): ``bar`` counts each step,
    restarted (with the step named after it) when phase, slide or member change."""
    step = None

    def progress(record: Any) -> None:
        nonlocal step
        if not isinstance(record, dict):
            return
        what = (record.get("phase"), record.get("slide"), record.get("member"))
        if what != step:  # a new step: a new count
            step = what
            bar.reset(total=record.get("total"))
            bar.set_postfix_str(" ".join(str(v) for v in what if v is not None), refresh=False)
        done = record.get("done", record.get("step"))
        if isinstance(done, int) and not isinstance(done, bool):
            bar.n = done
        bar.refresh()

    return progress


def steps_with_message(bar) -> Callable[[str], None]:
    """A ``progress(message)`` callback: one step of ``bar``, the message shown after it."""
    def progress(message: str) -> None:
        bar.set_postfix_str(_cut(message))
        bar.update(1)

    return progress


def within_step(bar) -> Callable[[str], None]:
    """A ``detail(message)`` callback: the message shown after ``bar`` without a step (what a
    long step is doing: "training epoch 3", "predicting slide_002 40 %"), at most once a
    second on the terminal (tqdm's ``mininterval``)."""
    def detail(message: str) -> None:
        bar.set_postfix_str(_cut(message), refresh=False)
        bar.update(0)

    return detail


def _cut(message: str) -> str:
    """A message beside the bar, cut at its end (never at its start) when too long."""
    return message if len(message) <= _MESSAGE_CHARS else message[: _MESSAGE_CHARS - 1] + "…"
