"""Functions for read processes to run in tests: importable by a spawned child, and
importing nothing heavy."""

import os


def exit_process(*args) -> None:
    """Die at once, as a process the out-of-memory killer takes does."""
    os._exit(3)


def hold_session(folder: str) -> None:
    """Open a session for writing and say "ready"; then for each line "save" on stdin, save
    and say "saved" or the error; close at the end of stdin."""
    import sys

    from napari_alregions.session import Session

    session = Session.open(folder)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "save":
            try:
                session.save()
                print("saved", flush=True)
            except Exception as exc:  # the parent reads what happened
                print(f"{type(exc).__name__}: {exc}", flush=True)
    session.close()


def die_saving_checkpoint(folder: str, name: str, size: str) -> None:
    """Open a session and be killed (SIGKILL) while a checkpoint of ``size`` bytes is
    being written, as a kill during training is."""
    import signal

    from napari_alregions._atomic import atomic_path
    from napari_alregions.session import Session

    session = Session.open(folder)
    with atomic_path(session.checkpoint_path(name)) as tmp:
        tmp.write_bytes(bytes(int(size)))
        os.kill(os.getpid(), signal.SIGKILL)


def try_to_open(folder: str) -> None:
    """Open a session for writing: say "opened" (then hold it until stdin ends) or "locked"."""
    import sys

    from napari_alregions.session import Session, SessionLocked

    try:
        session = Session.open(folder)
    except SessionLocked:
        print("locked", flush=True)
        return
    print("opened", flush=True)
    sys.stdin.read()
    session.close()


def spawn(name: str, *args: str, **popen):
    """Run ``tests.procs.<name>(*args)`` in a new interpreter (a real, separate process)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *sys.path])}
    code = f"import sys; from tests.procs import {name}; {name}(*sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, cwd=root, text=True, **popen)
