"""glibc's malloc keeps freed memory in the data-heavy pipeline steps.

``vmpower merge`` allocates and frees numpy and Arrow blocks of tens to hundreds of MB. glibc
gives every freed block over 32 MiB back to the kernel, and maps the next one afresh, page by
zeroed page: on 518 MB of input that was about 1 s of kernel time in a 5 s step, and most of its
run-to-run spread (docs/performance.md). MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ keep
freed memory in the heap for the next block. glibc reads them only when a process starts, so
the step re-executes itself once with them set (``python -m vmpower`` only: never a process
that called ``cli.main`` itself). Results do not change: only where memory comes from.
"""

from __future__ import annotations

import os
import sys

COMMANDS = ("merge", "merge-dataset")
TUNING = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


def reexec(command: str | None) -> None:
    """Start this process again, the same command line, with TUNING set, when ``command`` is a
    data-heavy step and the variables are not set yet (a user's own values win)."""
    if command not in COMMANDS or any(k in os.environ for k in TUNING) or not _glibc():
        return
    os.environ.update(TUNING)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)
