"""Depth and width of JSON text, measured before it is parsed (issue 19).

A file nested thousands of levels deep crashes recursive parsers (pyarrow's reader segfaulted,
``json`` raises RecursionError), and one with a million distinct keys makes a million columns.
``check`` measures both in vectorised numpy passes over the bytes (no Python per character):
the structural characters outside strings give the nesting depth, and the strings followed by
``:`` are the keys, hashed to count the distinct ones. Malformed JSON is left to the parser.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np

from vmpower.errors import InputError

_QUOTE, _BACKSLASH, _COLON = 34, 92, 58
_LUT = np.zeros(256, bool)
_LUT[[34, 58, 91, 93, 123, 125]] = True  # " : [ ] { }
_STEP = np.zeros(256, np.int8)
_STEP[[91, 123]], _STEP[[93, 125]] = 1, -1
_HASH_BASE = np.uint64(1099511628211)
_MAX_KEY_BYTES = 4096  # longer keys are told apart by this prefix and their length
with np.errstate(over="ignore"):
    _POWER = np.r_[np.uint64(1), np.cumprod(np.full(_MAX_KEY_BYTES - 1, _HASH_BASE, np.uint64))]


_CHUNK = 1 << 22  # bytes scanned per step: a file that breaks a limit early fails early


def measure(data, max_columns: int | None = None, max_depth: int | None = None) -> tuple[int, int]:
    """(deepest nesting, distinct keys) of JSON text (bytes, mmap or a uint8 array), scanned in
    chunks; it stops early once ``max_depth`` or ``max_columns`` is exceeded."""
    b = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    in_string, depth, deepest = False, 0, 0
    seen = np.zeros(0, np.uint64)
    lo = 0
    while lo < len(b):
        hi = _cut(b, lo + _CHUNK)
        in_string, depth, top, hashes = _scan(b[lo:hi], in_string, depth, max_columns is not None)
        deepest = max(deepest, top)
        if hashes is not None:
            seen = np.union1d(seen, hashes)
        lo = hi
        if (max_depth is not None and deepest > max_depth) or (max_columns is not None and len(seen) > max_columns):
            break
    return deepest, len(seen)


def _cut(b: np.ndarray, target: int) -> int:
    """A chunk end at or after ``target``: after a newline when one is near (never inside a valid
    JSON string), and never right after a backslash (a quote's escape stays in its chunk)."""
    if target >= len(b):
        return len(b)
    window = b[target : target + 65536]
    nl = np.flatnonzero(window == 10)
    if nl.size:
        return target + int(nl[0]) + 1
    while target < len(b):  # past a run of backslashes (one step per 64 KiB of them)
        plain = np.flatnonzero(b[target - 1 : target + 65535] != _BACKSLASH)
        if plain.size:
            return target + int(plain[0])
        target += 65536
    return len(b)


def _scan(b: np.ndarray, in_string: bool, depth: int, keys: bool):
    """One chunk: (in_string, depth at its end, deepest level, hashes of its keys or None)."""
    pos = np.flatnonzero(_LUT[b])
    c = b[pos]
    quote = c == _QUOTE
    qpos = pos[quote]
    real = _unescaped(b, qpos)
    # Inside a string when an odd number of real quotes (plus one if the chunk starts in one) precede.
    is_real = np.zeros(len(pos), bool)
    is_real[np.flatnonzero(quote)[real]] = True
    count = np.cumsum(is_real) + int(in_string)
    outside = ~quote & (count % 2 == 0)
    steps = np.cumsum(_STEP[c[outside]], dtype=np.int64) + depth
    top = int(steps.max()) if steps.size else depth
    end_depth = int(steps[-1]) if steps.size else depth
    in_string = bool((int(is_real.sum()) + int(in_string)) % 2)
    hashes = None
    if keys:
        # Real quotes that close a string: an even count (with the carry) at the quote itself.
        closing = (count[is_real] % 2 == 0)
        hashes = _key_hashes(b, pos[outside & (c == _COLON)], qpos[real], closing)
    return in_string, end_depth, top, hashes


def _unescaped(b: np.ndarray, qpos: np.ndarray) -> np.ndarray:
    """Which quotes are real (not preceded by an odd run of backslashes)."""
    real = np.ones(len(qpos), bool)
    cand = np.flatnonzero((qpos > 0) & (b[np.maximum(qpos - 1, 0)] == _BACKSLASH))
    if cand.size:
        bsl = np.flatnonzero(b == _BACKSLASH)
        starts = bsl[np.r_[True, np.diff(bsl) != 1]]  # first backslash of each run
        q = qpos[cand]
        run = q - starts[np.searchsorted(starts, q - 1, side="right") - 1]
        real[cand] = run % 2 == 0
    return real


def _key_hashes(b, colons, quotes, closing) -> np.ndarray:
    """Hashes of the distinct strings followed by ':' (object keys) of one chunk."""
    if not colons.size or not quotes.size:
        return np.zeros(0, np.uint64)
    j = np.searchsorted(quotes, colons) - 1  # the key's closing quote
    j = j[j >= 1]
    j = j[closing[j]]  # (a key begun in the previous chunk is not counted)
    end, start = quotes[j], quotes[j - 1] + 1
    full = end - start
    lens = np.minimum(full, _MAX_KEY_BYTES)
    out = [np.zeros(1, np.uint64)] if (lens <= 0).any() else []  # the empty key
    start, full, lens = start[lens > 0], full[lens > 0], lens[lens > 0]
    if lens.size:
        with np.errstate(over="ignore"):
            first = np.r_[0, np.cumsum(lens)[:-1]]
            within = np.arange(int(lens.sum())) - np.repeat(first, lens)
            vals = b[np.repeat(start, lens) + within].astype(np.uint64) + np.uint64(1)
            h = np.add.reduceat(vals * _POWER[within], first)
            h ^= full.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            h[h == 0] = 1  # 0 is the empty key
        out.append(np.unique(h))
    return np.unique(np.concatenate(out)) if out else np.zeros(0, np.uint64)


def check(data, source, limits) -> None:
    """One-line InputError when JSON text is nested deeper than limits.max_json_depth or has
    more distinct keys than limits.max_columns."""
    _judge(measure(data, limits.max_columns, limits.max_json_depth), source, limits)


def _judge(shape: tuple[int, int], source, limits) -> None:
    depth, width = shape
    if depth > limits.max_json_depth:
        raise InputError(source, f"JSON nested {depth} levels deep, more than limits.max_json_depth "
                                 f"({limits.max_json_depth}): not a collector file")
    if width > limits.max_columns:
        raise InputError(source, f"JSON has more than {limits.max_columns} distinct keys (limits.max_columns): "
                                 "too many columns")


def check_file(path: str | Path, limits) -> None:
    """``check`` on a file, read through mmap (no copy)."""
    path = Path(path)
    if path.stat().st_size == 0:
        return
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        shape = measure(mm, limits.max_columns, limits.max_json_depth)  # no view of mm outlives this
    _judge(shape, path, limits)


def loads(text: str | bytes, source, limits):
    """json.loads after the depth/width check; any failure is one InputError line."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    check(data, source, limits)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InputError(source, f"not valid JSON ({' '.join(str(exc).split())[:120]})") from None
