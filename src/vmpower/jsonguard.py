"""Depth and width of JSON text, measured before it is parsed (issue 19).

A file nested thousands of levels deep crashes recursive parsers (pyarrow's reader segfaulted,
``json`` raises RecursionError), and one with a million distinct keys makes a million columns.
``check`` measures both in vectorised numpy passes over the bytes (no Python per character):
the structural characters outside strings give the nesting depth, and the strings followed by
``:`` are the keys, hashed to count the distinct ones. Malformed JSON is left to the parser.

Speed (the merge reads 300 MB files): a chunk without backslashes (every collector file) is
scanned on its structural characters only (``bytes.translate`` drops the rest in C), and a key
is hashed 8 bytes at a time through an unaligned uint64 view; a chunk with a backslash takes
the general path that resolves escapes.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
from pathlib import Path

import numpy as np

from vmpower.errors import InputError

_QUOTE, _BACKSLASH, _COLON = 34, 92, 58
_LUT = np.zeros(256, bool)
_LUT[[34, 58, 91, 93, 123, 125]] = True  # " : [ ] { }
_OTHERS = bytes(i for i in range(256) if not _LUT[i])  # deleted by translate: the rest stays
_NOT_DEPTH = bytes(i for i in range(256) if i not in (34, 91, 93, 123, 125))  # keeps " [ ] { }
_SPACE = np.array([9, 10, 13, 32], np.uint8)
_STEP = np.zeros(256, np.int8)
_STEP[[91, 123]], _STEP[[93, 125]] = 1, -1
_MAX_KEY_BYTES = 4096  # longer keys are told apart by this prefix and their length
_M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)
_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [(1 << 64) - 1], np.uint64)  # low n bytes
_WORDS = 4  # words hashed for every key at once (keys up to 32 bytes); longer ones loop on


_CHUNK = 1 << 22  # bytes scanned per step: a file that breaks a limit early fails early


def measure(data, max_columns: int | None = None, max_depth: int | None = None) -> tuple[int, int]:
    """(deepest nesting, distinct keys) of JSON text (bytes, mmap or a uint8 array), scanned in
    chunks; it stops early once ``max_depth`` or ``max_columns`` is exceeded."""
    part = scan_part(data, (False, 0), max_columns, max_depth)
    return part.deepest, len(part.keys)


@dataclasses.dataclass
class Part:
    """What scan_part found in a piece of JSON text: the state at its end (in a string, depth),
    the deepest level and the distinct key hashes (empty when keys are not counted)."""

    end: tuple[bool, int]
    deepest: int
    keys: np.ndarray


def scan_part(data, start: tuple[bool, int], max_columns: int | None, max_depth: int | None) -> Part:
    """measure's scan of a piece of a text that begins in state ``start`` (in a string, depth):
    pieces cut where the state is known can be scanned at once and combined (combine)."""
    b = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    (in_string, depth), deepest = start, start[1]
    seen = np.zeros(0, np.uint64)
    lo = 0
    while lo < len(b):
        hi = _cut(b, lo + _CHUNK)
        chunk = b[lo:hi].tobytes()
        scan = _scan if _BACKSLASH_BYTE in chunk else _scan_plain
        in_string, depth, top, hashes = scan(chunk, in_string, depth, max_columns is not None)
        deepest = max(deepest, top)
        if hashes is not None and hashes.size:
            seen = np.union1d(seen, hashes)
        lo = hi
        if (max_depth is not None and deepest > max_depth) or (max_columns is not None and len(seen) > max_columns):
            break
    return Part((in_string, depth), deepest, seen)


def combine(parts: list[Part]) -> tuple[int, int]:
    """(deepest nesting, distinct keys) of consecutive pieces scanned by scan_part."""
    return max(p.deepest for p in parts), len(np.unique(np.concatenate([p.keys for p in parts])))


_BACKSLASH_BYTE = b"\\"


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


def _scan_plain(chunk: bytes, in_string: bool, depth: int, keys: bool):
    """_scan of a chunk without backslashes, where every quote is real (a string is open after
    an odd number of them). Depth: on its quotes and brackets only (``bytes.translate`` drops the
    rest), without adjacent quote pairs (a string holding no bracket: dropping a pair leaves every
    other character on its side of a string)."""
    carry = int(in_string)
    s = np.frombuffer(chunk.translate(None, _NOT_DEPTH).replace(b'""', b""), np.uint8)
    quote = s == _QUOTE
    count = np.cumsum(quote, dtype=np.int64) + carry  # quotes so far, with the carry
    steps = np.cumsum(_STEP[s[~quote & (count % 2 == 0)]], dtype=np.int64) + depth
    top = int(steps.max()) if steps.size else depth
    end_depth = int(steps[-1]) if steps.size else depth
    in_string = bool(count[-1] % 2) if count.size else in_string
    return in_string, end_depth, top, _plain_keys(chunk, carry) if keys else None


def _plain_keys(chunk: bytes, carry: int) -> np.ndarray:
    """Key hashes of a chunk without backslashes: a key is a string whose closing quote is
    followed by ':' (a closing quote followed by whitespace: the structural stream decides)."""
    b = np.frombuffer(chunk, np.uint8)
    qpos = np.flatnonzero(b == _QUOTE)
    i = np.arange(1 - carry, len(qpos), 2)  # closing quotes (a key begun in the previous chunk is not counted)
    i = i[i >= 1]
    nxt = b[np.minimum(qpos[i] + 1, len(b) - 1)]
    if (np.isin(nxt, _SPACE) | (qpos[i] + 1 >= len(b))).any():
        s = np.frombuffer(chunk.translate(None, _OTHERS), np.uint8)  # whitespace before ':' dropped
        quote = s == _QUOTE
        count = np.cumsum(quote, dtype=np.int64) + carry
        k = np.flatnonzero(quote[:-1] & (s[1:] == _COLON) & (count[:-1] % 2 == 0))
        i = count[k] - carry - 1  # the closing quote's index among the chunk's quotes
        i = i[i >= 1]
    else:
        i = i[nxt == _COLON]
    return _key_hashes(chunk, qpos[i - 1] + 1, qpos[i])


def _scan(chunk: bytes, in_string: bool, depth: int, keys: bool):
    """One chunk: (in_string, depth at its end, deepest level, hashes of its keys or None)."""
    b = np.frombuffer(chunk, np.uint8)
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
        quotes, colons = qpos[real], pos[outside & (c == _COLON)]
        if colons.size and quotes.size:
            j = np.searchsorted(quotes, colons) - 1  # the key's closing quote
            j = j[j >= 1]
            j = j[closing[j]]  # (a key begun in the previous chunk is not counted)
            hashes = _key_hashes(chunk, quotes[j - 1] + 1, quotes[j])
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


def _key_hashes(chunk: bytes, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distinct 64-bit hashes of the keys ``chunk[start:end]`` (their raw bytes, up to
    _MAX_KEY_BYTES, and their length), read 8 bytes at a time through an unaligned uint64 view:
    a key of 8 bytes or more as words from its start, the last one ending at its end (no mask);
    a shorter one as one masked word."""
    if not start.size:
        return np.zeros(0, np.uint64)
    padded = chunk + bytes(8)
    words = np.ndarray((len(chunk) + 1,), np.uint64, padded, 0, (1,))  # words[p]: bytes p..p+7; words[-1]: 0
    full = end - start
    n = np.minimum(full, _MAX_KEY_BYTES)
    last = np.where(n >= 8, start + n - 8, -1)  # the last word's start (a short key: the zero word)
    with np.errstate(over="ignore"):
        h = (full.astype(np.uint64) * _M1 ^ (words[start] & _MASKS[np.minimum(n, 8)])) * _M2
        at = np.empty_like(start)
        for k in range(1, _WORDS):  # every key at once (in place: these arrays are the cost)
            np.minimum(np.add(start, 8 * k, out=at), last, out=at)
            np.multiply(np.bitwise_xor(h, words[at], out=h), _M2, out=h)
        idx = np.flatnonzero(n > 8 * _WORDS)
        k = _WORDS
        while idx.size:  # the longer keys, a word at a time
            h[idx] = (h[idx] ^ words[np.minimum(start[idx] + 8 * k, last[idx])]) * _M2
            k += 1
            idx = idx[n[idx] > 8 * k]
        h ^= h >> np.uint64(31)
    return np.unique(h)


def check(data, source, limits) -> None:
    """One-line InputError when JSON text is nested deeper than limits.max_json_depth or has
    more distinct keys than limits.max_columns."""
    judge(measure(data, limits.max_columns, limits.max_json_depth), source, limits)


def judge(shape: tuple[int, int], source, limits) -> None:
    """One-line InputError when a measured (depth, distinct keys) breaks the limits."""
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
    judge(shape, path, limits)


def loads(text: str | bytes, source, limits):
    """json.loads after the depth/width check; any failure is one InputError line."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    check(data, source, limits)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InputError(source, f"not valid JSON ({' '.join(str(exc).split())[:120]})") from None


def read_json(path, data: bytes, limits, what: str):
    """Bounded JSON of one input (``limits``: vmpower.limits.Limits, None for the defaults):
    "cannot read <what> (<problem>)", one line naming the file, on any problem."""
    from vmpower import limits as limits_mod

    try:
        return loads(data, path, limits or limits_mod.defaults())
    except InputError as exc:
        raise InputError(path, f"cannot read {what} ({exc.problem})") from None
