"""A step never outlives its build, and a step whose build has ended never publishes an output.

The Snakefile names the build's process in $VMPOWER_BUILD (buildstate.claim): host boot id, pid
namespace, pid and start time, which together name one process on one machine (a later process
that reuses the pid has another start time). ``arm()`` watches it, and any other processes the
step depends on (the worker's children: the client and the server), with pidfds from a daemon
thread; when one ends, the step kills itself at once: its process group when it leads one (the
worker's children), else its descendants and itself. ``check()`` runs just before an output is
renamed into place (io.atomic_path), so even a step the kill has not reached yet publishes nothing.

A step on another machine or in another pid namespace (a docker job) cannot see the build and
is not watched: SLURM kills a job's processes itself, and Snakemake keeps the outputs of jobs
it did not see finish marked incomplete (profiles/default: rerun-incomplete).
Standard library only: it runs in the worker's client too.
"""

from __future__ import annotations

import os
import select
import signal
import threading

ENV = "VMPOWER_BUILD"
PR_SET_PDEATHSIG = 1
_watched: list[tuple[int, str]] = []  # (pid, start time) of every process the step needs


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None if gone."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 and fields[0] not in ("Z", "X") else None


def _machine() -> str:
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = "?"
    return f"{_read('/proc/sys/kernel/random/boot_id')}:{pidns}"


def token(pid: int | None = None) -> str:
    """The value of $VMPOWER_BUILD naming process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{_machine()}:{pid}:{_start_time(pid)}"


def _from_env() -> tuple[int, str] | None:
    """(pid, start time) of the build named in $VMPOWER_BUILD, if it is on this machine and pid namespace."""
    parts = os.environ.get(ENV, "").rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit() or parts[0] != _machine():
        return None
    return int(parts[1]), parts[2]


def alive() -> bool:
    """Whether every watched process still runs (True when nothing is watched)."""
    return all(_start_time(pid) == start for pid, start in _watched)


def check() -> None:
    """End this step now if its build has ended (before an output is published)."""
    if not alive():
        _die(next(pid for pid, start in _watched if _start_time(pid) != start))


def arm(*pids: int) -> None:
    """Watch the build in $VMPOWER_BUILD and ``pids``; end this step as soon as one of them ends."""
    wanted = [(pid, _start_time(pid)) for pid in pids]
    build = _from_env()
    if build:
        wanted.append(build)
    new = [w for w in wanted if w not in _watched]
    if not new:
        return
    _watched.extend(new)
    fds = {}
    for pid, start in new:
        fd = None
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            pass  # gone (then the check below ends the step), or no pidfds: polled instead
        if start is None or _start_time(pid) != start:  # checked after the open: no reused pid is watched
            _die(pid)
        fds[pid] = fd
    threading.Thread(target=_watch, args=(fds,), name="vmpower-lifeline", daemon=True).start()


def _watch(fds: dict[int, int | None]) -> None:
    poller = select.poll()
    by_fd = {fd: pid for pid, fd in fds.items() if fd is not None}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    polled = len(by_fd) < len(fds)
    while True:
        for fd, _event in poller.poll(500 if polled else None):
            _die(by_fd[fd])
        if polled and not alive():
            check()


def _die(pid: int) -> None:
    """Kill this step (never returns)."""
    try:
        os.write(2, f"vmpower: the build's process {pid} has ended: stopping this step, which publishes nothing\n".encode())
    except OSError:
        pass
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            child.kill()
    except Exception:  # noqa: BLE001 - best effort: the step itself dies below either way
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """In a fresh child: get ``sig`` when the parent ends (Linux prctl), and exit now if it
    already has (``parent``: its pid before the fork)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)
