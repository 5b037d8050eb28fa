"""The workload-sequence grammar shared by the guest collector and the demo generator.

    sequence := phase ("," phase)*        e.g. cpu_cycling:60,cpu_intensive:45
    phase    := name [":" seconds]        whitespace around names and numbers is ignored
    name     := [A-Za-z0-9_.-]+
    seconds  := a positive decimal number (60, 45.5, .5)

A phase without seconds is open: the open phases share what the fixed ones leave of the run
(:func:`resolve`), so ``a,b`` splits the run equally. The sequence loops until the run ends.
Which names exist is the caller's business (stress-ng workloads in collect, the synth config's
workloads in demo); so are aliases.
"""

from __future__ import annotations

import re

from vmpower.errors import InputError

NAME = re.compile(r"[A-Za-z0-9_.-]+")
SECONDS = re.compile(r"(\d+(\.\d*)?|\.\d+)")
# An open phase of a sequence of several when the run has no length: each runs this long.
OPEN_PHASE_SECONDS = 60.0


def parse(spec: str, where: str, aliases: dict[str, str] | None = None) -> list[tuple[str, float | None]]:
    """[(name, seconds | None)] of ``spec``; a malformed phase is one InputError naming ``where``."""
    aliases = aliases or {}
    out: list[tuple[str, float | None]] = []
    for part in str(spec).split(","):
        name, colon, secs = (s.strip() for s in part.partition(":"))
        if not NAME.fullmatch(name):
            raise InputError(where, f"bad workload sequence {spec!r}: phase {part.strip()!r} needs a name "
                                    "(name or name:seconds, separated by commas)")
        name = aliases.get(name, name)
        if colon and not secs:
            out.append((name, None))  # "name:" is an open phase, as it always was
            continue
        if colon and not SECONDS.fullmatch(secs):
            raise InputError(where, f"bad duration {secs!r} for {name} in workload sequence {spec!r}")
        length = float(secs) if colon else None
        if length is not None and not length > 0:
            raise InputError(where, f"duration for {name} must be > 0, got {secs} (workload sequence {spec!r})")
        out.append((name, length))
    return out


def check_names(items: list[tuple[str, float | None]], known, where: str) -> None:
    """One InputError for the first name of ``items`` not in ``known``."""
    for name, _ in items:
        if name not in known:
            raise InputError(where, f"unknown workload {name!r} (known: {', '.join(known)})")


def resolve(items: list[tuple[str, float | None]], total: float | None) -> list[tuple[str, float]]:
    """Every phase with a length: the open ones share what the fixed ones leave of ``total``
    (at least 1 s each); without ``total`` one open phase runs until stopped (inf) and several
    run OPEN_PHASE_SECONDS each."""
    open_count = sum(1 for _, s in items if s is None)
    if not open_count:
        return [(n, float(s)) for n, s in items]
    fixed = sum(s for _, s in items if s is not None)
    if total:
        share = max(1.0, (total - fixed) / open_count) if total > fixed else max(1.0, total / len(items))
    elif len(items) == 1:
        share = float("inf")
    else:
        share = OPEN_PHASE_SECONDS
    return [(n, s if s is not None else share) for n, s in items]


def timeline(items: list[tuple[str, float]], total: float) -> list[tuple[str, float, float]]:
    """Phases (name, start, end) in seconds from the run's start: the sequence loops until ``total``."""
    out, t, i = [], 0.0, 0
    while t < total:
        name, d = items[i % len(items)]
        out.append((name, t, min(t + d, total)))
        t += d
        i += 1
    return out
