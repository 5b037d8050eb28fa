"""The merge's threads: how many, and one way to run a few numpy/pyarrow calls at once."""

from __future__ import annotations

import os

# A merge job has two cores (it parses, scans and searches on two threads), fewer when the
# process may use fewer (a SLURM job's CPU set).
THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def threaded(fn, items: list) -> list:
    """[fn(item) for item in items], the items after the first on threads (numpy and pyarrow
    release the GIL), in order."""
    from concurrent.futures import ThreadPoolExecutor

    if len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(len(items) - 1, thread_name_prefix="vmpower-merge") as pool:
        later = [pool.submit(fn, item) for item in items[1:]]
        return [fn(items[0]), *[f.result() for f in later]]
