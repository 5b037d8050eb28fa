"""Shared pieces of the collectors: drift-free scheduling, crash-safe writing, logs, signals."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger("vmpower.collect")


def iso_local(epoch: float) -> str:
    """Naive local wall-clock time, always with microseconds (the data-format contract)."""
    return _dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%dT%H:%M:%S.%f")


def file_stamp(epoch: float | None = None) -> str:
    return _dt.datetime.fromtimestamp(time.time() if epoch is None else epoch).strftime("%Y%m%d_%H%M%S")


class Schedule:
    """Deadlines at ``start + k * interval`` (absolute, so no drift accumulates).

    A deadline more than half an interval late is skipped rather than fired in a burst;
    windows stay correct because every sample records its measured length.
    With ``absolute=False`` (``--no-sync``) it sleeps ``interval`` after each tick instead.
    """

    def __init__(self, interval: float, duration: float | None, *, clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], bool] | None = None, absolute: bool = True):
        self.interval = float(interval)
        self.duration = float(duration) if duration else None
        self.clock = clock
        self._stop = threading.Event()
        # wait(seconds) returns True when stopped early.
        self.wait = wait or self._stop.wait
        self.absolute = absolute
        self.skipped = 0

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def ticks(self, start: float | None = None) -> Iterator[float]:
        """Yield the clock value at each tick; the first tick is ``start`` (now by default).

        A ``start`` already in the past (a collector that came up late for a common start) moves
        to the next point of its grid, so it stays in step with the other side; the run still
        ends at ``start + duration``."""
        now = self.clock()
        origin = start = now if start is None else start
        if start < now - 1e-3:
            missed = math.ceil((now - start) / self.interval)
            start += missed * self.interval
            self.skipped += missed
        if start > self.clock() and self.wait(start - self.clock()):
            return
        yield self.clock()
        k = 0
        last = start
        while not self._stop.is_set():
            if self.absolute:
                k += 1
                deadline = start + k * self.interval
                now = self.clock()
                # stalled (suspend, overload): skip to the next grid point rather than fire late
                # ticks back to back, so no window is shorter than half an interval
                if now - deadline > 0.5 * self.interval:
                    missed = math.ceil((now - deadline) / self.interval)
                    k += missed
                    self.skipped += missed
                    deadline = start + k * self.interval
            else:
                deadline = last + self.interval
            if self.duration is not None and deadline > origin + self.duration + 1e-9:
                return
            delay = deadline - self.clock()
            if delay > 0 and self.wait(delay):
                return
            if self._stop.is_set():
                return
            last = self.clock()
            yield last


class JsonlWriter:
    """Appends one JSON object per line and fsyncs, so a killed process loses at most the last line."""

    def __init__(self, path: str | os.PathLike, fsync_every: int = 1):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", encoding="utf-8")
        self.fsync_every = max(1, fsync_every)
        self.count = 0

    def write(self, obj: dict) -> None:
        self._fh.write(json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n")
        self.count += 1
        self._fh.flush()
        if self.count % self.fsync_every == 0:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()


def finalize_json_array(path: str | os.PathLike, records: list[dict]) -> None:
    """Replace the JSON Lines file by the final JSON array in one atomic rename."""
    from vmpower.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("[\n")
            fh.write(",\n".join(json.dumps(r, allow_nan=False) for r in records))
            fh.write("\n]\n" if records else "]\n")
            fh.flush()
            os.fsync(fh.fileno())


class ResponseTooLarge(ValueError):
    """An HTTP answer larger than limits.max_http_response_bytes (read no further)."""


def read_capped(resp, limit: int, deadline: float | None = None) -> bytes:
    """The body of an HTTP answer, at most ``limit`` bytes (ResponseTooLarge beyond: a huge
    answer must not take the collector's memory and time), read by ``deadline`` (monotonic s;
    a server dripping its answer is a TimeoutError, so a stop request is never held up)."""
    length = resp.headers.get("Content-Length", "")
    if length.strip().isdigit() and int(length) > limit:
        raise ResponseTooLarge(f"answer of {int(length)} bytes, more than limits.max_http_response_bytes ({limit})")
    chunks, total = [], 0
    while True:
        chunk = resp.read(min(1 << 16, limit + 1 - total))
        if not chunk:
            if length.strip().isdigit() and total < int(length):  # read(n) does not raise this itself
                import http.client

                raise http.client.IncompleteRead(b"".join(chunks), int(length) - total)
            return b"".join(chunks)
        total += len(chunk)
        chunks.append(chunk)
        if total > limit:
            raise ResponseTooLarge(f"answer larger than limits.max_http_response_bytes ({limit} bytes)")
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"answer not complete within the timeout ({total} bytes read)")


def clean_number(value):
    """JSON-safe number: NaN/inf become None (never written as NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def setup_file_log(path: str | os.PathLike | None, verbose: bool = False,
                   logger_name: str = "vmpower") -> logging.Handler | None:
    """Add a file handler for the collector logs (``logs/*.log`` as in the seed)."""
    logging.getLogger("vmpower").setLevel(logging.DEBUG if verbose else logging.INFO)
    logger = logging.getLogger(logger_name)
    if not path:
        return None
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(p, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.addHandler(handler)
    return handler


@contextlib.contextmanager
def stop_on_signals(on_stop: Callable[[], None]):
    """Call ``on_stop`` on SIGTERM/SIGINT/SIGHUP (main thread only); restore handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}

    def handler(signum, _frame):
        log.warning("received %s, stopping", signal.Signals(signum).name)
        on_stop()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def wait_until_epoch(epoch: float | None, stop: threading.Event) -> bool:
    """Sleep until the wall clock reaches ``epoch``; False when stopped first."""
    if epoch is None:
        return True
    delay = epoch - time.time()
    if delay > 0:
        return not stop.wait(delay)
    return not stop.is_set()


class Progress:
    """rich progress bar on a TTY, nothing otherwise."""

    def __init__(self, description: str, total: float | None, enabled: bool | None = None):
        import sys

        self.enabled = sys.stdout.isatty() if enabled is None else enabled
        self._progress = None
        if self.enabled:
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self._progress = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                          TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                                          TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self._task = self._progress.add_task(description, total=total or None, info="")
            self._progress.start()

    def update(self, elapsed: float, info: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=elapsed, info=info)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
