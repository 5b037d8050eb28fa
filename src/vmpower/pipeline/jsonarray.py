"""A large JSON array file read in two halves at once (ingest's VM and host JSON files).

pyarrow parses a JSON array on one core (the array is one value). A collector writes one
sample per line, so the file is cut at a sample boundary (``},\\n{``) near the middle; the
whole file is checked by jsonguard, then each half is parsed on its own thread, and the halves
are joined in file order: the same table as one parse. ``read`` returns None, and ingest parses the file
whole, when no boundary is found, when the first half does not end between two samples
(depth 1, outside a string), when a limit is broken (the whole-file check then says so), when a
half fails to parse, or when the halves' column types differ in a way one parse would not unify.
"""

from __future__ import annotations

import mmap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from vmpower import jsonguard

MIN_BYTES = 32 << 20  # smaller files are parsed whole: two threads would not pay off
_BOUNDARY = b"},\n{"
_PREFIX = b'{"rows":'


def read_file(path: Path, size: int, limits, array_bounds) -> pa.Table | None:
    """read() of a file that holds a JSON array (``array_bounds``: ingest's finder of its
    '[' and ']'); None for anything else, which ingest then checks and reads as before."""
    from vmpower.errors import InputError

    try:
        bounds = array_bounds(path, size)
    except InputError:
        return None
    return None if bounds is None else read(path, *bounds, limits)


def read(path: Path, start: int, end: int, limits) -> pa.Table | None:
    """The array ``[...]`` at bytes start..end of ``path`` as a table of its samples, or None."""
    with open(path, "rb") as fh:
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            cut = _boundary(mm, start, end)
            if cut is None or not _checked(mm, cut, limits):
                return None
        first = _wrapped(fh, start, cut - 2, b"", b"]}")  # '[' ... '}'
        second = _wrapped(fh, cut, end, b"[", b"}")  # '{' ... ']'
    with ThreadPoolExecutor(1, thread_name_prefix="json-half") as pool:
        later = pool.submit(_parse, second)
        head = _parse(first)
        tail = later.result()
    if head is None or tail is None:
        return None
    return _join(head, tail)


def _boundary(mm, start: int, end: int) -> int | None:
    """Offset of the '{' of the sample after a ``},\\n{`` boundary near the middle, or None."""
    mid = (start + end) // 2
    at = mm.find(_BOUNDARY, mid, end)
    if at < 0:
        at = mm.rfind(_BOUNDARY, start, mid)
    return None if at < 0 else at + 3


def _checked(mm, cut: int, limits) -> bool:
    """The whole file within limits (one scan: it stops early at a broken limit) and the first
    half ending between two samples (depth 1, outside a string)."""
    b = np.frombuffer(mm, np.uint8)
    try:
        head = jsonguard.scan_part(b[:cut], (False, 0), limits.max_columns, limits.max_json_depth)
        if head.end != (False, 1):
            return False
        tail = jsonguard.scan_part(b[cut:], head.end, limits.max_columns, limits.max_json_depth)
    finally:
        del b  # no view of the mmap may outlive it
    depth, width = jsonguard.combine([head, tail])
    return depth <= limits.max_json_depth and width <= limits.max_columns


def _wrapped(fh, lo: int, hi: int, opening: bytes, suffix: bytes) -> bytearray:
    """``{"rows":`` + opening + the file's bytes lo..hi + suffix in one buffer, read into it."""
    head = _PREFIX + opening
    n = hi - lo
    buf = bytearray(len(head) + n + len(suffix))
    buf[: len(head)] = head
    fh.seek(lo)
    with memoryview(buf) as view:
        got = fh.readinto(view[len(head) : len(head) + n])
    buf[len(head) + n :] = suffix
    return buf if got == n else bytearray()  # (a file changing while read: parsed whole instead)


def _parse(buf: bytearray) -> pa.Table | None:
    if not buf or len(buf) >= 2**31 - 1:
        return None
    try:
        table = pajson.read_json(
            pa.BufferReader(pa.py_buffer(buf)),
            read_options=pajson.ReadOptions(block_size=len(buf) + 1, use_threads=False),
            parse_options=pajson.ParseOptions(newlines_in_values=True),
        )
        rows = table.column("rows").combine_chunks()
        if len(rows) == 0 or not pa.types.is_struct(rows.type.value_type) or rows.type.value_type.num_fields == 0:
            return None
        return pa.Table.from_struct_array(rows.flatten())
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None


def _join(head: pa.Table, tail: pa.Table) -> pa.Table | None:
    """The halves stacked with columns in order of first appearance (as one parse gives), when
    every shared column's types are ones one parse unifies to the promoted type."""
    if len(set(head.column_names)) != head.num_columns or len(set(tail.column_names)) != tail.num_columns:
        return None
    types = {f.name: f.type for f in head.schema}
    if not all(_unifies(types[f.name], f.type) for f in tail.schema if f.name in types):
        return None
    try:
        return pa.concat_tables([head, tail], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None


def _unifies(a: pa.DataType, b: pa.DataType) -> bool:
    return a == b or pa.types.is_null(a) or pa.types.is_null(b) or {a, b} == {pa.int64(), pa.float64()}
