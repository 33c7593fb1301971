"""Whether a process runs, and since when: a pid alone names another program once the
system reuses it, so locks and temporary files judged by pid also compare start times.

Linux reads ``/proc/<pid>/stat`` (state and start time in clock ticks since boot, with
the boot id: a restarted machine counts from zero again); other POSIX systems ask ``ps``
(``stat`` and ``lstart``, to the second); Windows asks the kernel through ``ctypes``
(``OpenProcess``, ``GetExitCodeProcess``, ``GetProcessTimes``). No psutil. Where none of
these answers, the start is unknown (None) and a process is judged by its pid alone.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

__all__ = ["probe", "running", "start_of"]


def probe(pid: int) -> tuple[bool, str | None]:
    """``(running, start)`` of process ``pid``: ``start`` is an opaque text that differs
    between two processes that had the same pid (None when it cannot be told).

    A zombie (killed, not yet reaped by its parent) does not run. A pid that is not a
    positive int names no process.

    Examples
    --------
    >>> probe(os.getpid())[0]
    True
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False, None
    if sys.platform == "win32":  # pragma: no cover (not run on the Linux test machines)
        return _probe_windows(pid)
    if os.path.isdir("/proc/self"):
        return _probe_proc(pid)
    return _probe_ps(pid)  # pragma: no cover (macOS, BSD)


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (never signals it: ``os.kill(pid, 0)`` ends it on Windows)."""
    return probe(pid)[0]


def start_of(pid: int) -> str | None:
    """The start of a running process ``pid`` (see :func:`probe`); None when it does not run
    or its start cannot be told."""
    alive, start = probe(pid)
    return start if alive else None


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def _probe_proc(pid: int) -> tuple[bool, str | None]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read(4096)
    except (FileNotFoundError, ProcessLookupError):
        return False, None
    except OSError:  # hidden by hidepid: it exists
        return True, None
    # "pid (comm) state ... starttime ...": comm may hold spaces and parentheses
    fields = stat[stat.rfind(b")") + 2:].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return False, None
    return True, f"{_boot_id()}:{fields[19].decode()}"  # field 22 of stat: ticks since boot


def _probe_ps(pid: int) -> tuple[bool, str | None]:  # pragma: no cover (macOS, BSD)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        pass  # another user's live process
    try:
        out = subprocess.run(["ps", "-o", "stat=,lstart=", "-p", str(pid)], capture_output=True, text=True,
                             timeout=10, env={**os.environ, "LC_ALL": "C"}, check=False).stdout.split(None, 1)
    except (OSError, subprocess.SubprocessError):
        return True, None
    if len(out) != 2:
        return True, None
    return (False, None) if out[0].startswith("Z") else (True, " ".join(out[1].split()))


def _probe_windows(pid: int) -> tuple[bool, str | None]:  # pragma: no cover (Windows)
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    kernel32.GetProcessTimes.argtypes = [wintypes.HANDLE] + [ctypes.POINTER(wintypes.FILETIME)] * 4
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    query_limited_information, still_active, access_denied = 0x1000, 259, 5
    handle = kernel32.OpenProcess(query_limited_information, False, pid)
    if not handle:
        return ctypes.get_last_error() == access_denied, None  # denied: it exists
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value != still_active:
            return False, None
        times = [wintypes.FILETIME() for _ in range(4)]
        if not kernel32.GetProcessTimes(handle, *(ctypes.byref(t) for t in times)):
            return True, None
        return True, str(times[0].dwHighDateTime << 32 | times[0].dwLowDateTime)  # creation, 100 ns since 1601
    finally:
        kernel32.CloseHandle(handle)
