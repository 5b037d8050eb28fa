"""A large JSON array file read in pieces at once (ingest's VM and host JSON files).

pyarrow parses a JSON array on one core (the array is one value). A collector writes one
sample per line (the original collectors: ``json.dump(indent=2)``), so the file is cut between
samples (``},\\n{`` or ``},\\n  {``): a prefix of about
PREFIX_BYTES, the rest of the first half, and the second half. The whole file's nesting depth
is checked by jsonguard (deep nesting crashes the parser); the prefix is checked for distinct
keys too and parsed, and its columns and types are the explicit schema of the other two
pieces, parsed on two threads with any other key or type an error: so the file has no more
columns than its prefix, without hashing every key. Should the explicit parse fail (a key or a
type the first samples lack), the whole file's keys are counted and the pieces parsed by
inference. The pieces are joined in file order: the same table as one parse.

``read`` returns None, and ingest parses the file whole, when no boundary is found, when the
first half does not end between two samples (depth 1, outside a string), when a limit is broken
(the whole-file check then says so), when a piece fails to parse, or when the pieces' column
types differ in a way one parse would not unify.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from vmpower import jsonguard
from vmpower.pipeline.parallel import threaded

MIN_BYTES = 32 << 20  # smaller files are parsed whole: two threads would not pay off
PREFIX_BYTES = 1 << 20  # the first samples, whose columns and types the rest must have
# Between two samples: vmpower's collectors write one per line, the original ones json.dump(indent=2).
_BOUNDARIES = (b"},\n{", b"},\n  {")
_PREFIX = b'{"rows":'
_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


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
            mid = (start + end) // 2
            split = _boundary(mm, mid, end) or _boundary(mm, start, mid, forward=False)
            if split is None or not _checked(mm, split[1], limits, keys=False):
                return None
            (head_end, cut) = split
            # The prefix: the samples up to a boundary past PREFIX_BYTES (else the first half).
            prefix_end, stop = _boundary(mm, min(start + PREFIX_BYTES, cut), cut) or split
            if not _checked(mm, stop, limits, stop=stop):
                return None
        pieces = [_wrapped(fh, start, prefix_end, b"", b"]}"), _wrapped(fh, cut, end, b"[", b"}")]
        if stop < cut:
            pieces.insert(1, _wrapped(fh, stop, head_end, b"[", b"]}"))
        first = _parse(pieces[0])
        if first is None:
            return None
        rest = _parse_all(pieces[1:], pa.struct(list(first.schema)))
        if rest is None:  # a key or type the prefix lacks: every key counted, then inferred
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                if not _checked(mm, cut, limits):
                    return None
            rest = _parse_all(pieces[1:], None)
    return None if rest is None else _join([first, *rest])


def _boundary(mm, lo: int, hi: int, forward: bool = True) -> tuple[int, int] | None:
    """(end of the sample before, offset of the next sample's '{') of the first boundary between
    two samples within lo..hi (the last one when not ``forward``), or None."""
    found = [(mm.find(p, lo, hi) if forward else mm.rfind(p, lo, hi), p) for p in _BOUNDARIES]
    found = [(at, p) for at, p in found if at >= 0]
    if not found:
        return None
    at, pattern = (min if forward else max)(found)
    return at + 1, at + len(pattern) - 1


def _checked(mm, cut: int, limits, keys: bool = True, stop: int | None = None) -> bool:
    """The text up to ``stop`` (the whole file by default) within limits: its nesting depth,
    and its distinct keys when ``keys`` (one scan: it stops early at a broken limit); and the
    text up to ``cut`` ending between two samples (depth 1, outside a string)."""
    columns = limits.max_columns if keys else None
    b = np.frombuffer(mm, np.uint8)
    try:
        parts = [jsonguard.scan_part(b[:cut], (False, 0), columns, limits.max_json_depth)]
        if parts[0].end != (False, 1):
            return False
        if stop is None or stop > cut:
            parts.append(jsonguard.scan_part(b[cut:stop], parts[0].end, columns, limits.max_json_depth))
    finally:
        del b  # no view of the mmap may outlive it
    depth, width = jsonguard.combine(parts)
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


def _parse_all(pieces: list[bytearray], row_type: pa.DataType | None) -> list[pa.Table] | None:
    """The pieces parsed, the last on a second thread (with ``row_type`` as the explicit
    schema of a sample, any other key or type an error); None when any fails."""
    tables = threaded(lambda piece: _parse(piece, row_type), pieces)
    return None if any(t is None for t in tables) else tables


def _parse(buf: bytearray, row_type: pa.DataType | None = None) -> pa.Table | None:
    if not buf or len(buf) >= 2**31 - 1:
        return None
    options = {"newlines_in_values": True}
    if row_type is not None:
        options.update(explicit_schema=pa.schema([("rows", pa.list_(row_type))]), unexpected_field_behavior="error")
    try:
        table = pajson.read_json(
            pa.BufferReader(pa.py_buffer(buf)),
            read_options=pajson.ReadOptions(block_size=len(buf) + 1, use_threads=False),
            parse_options=pajson.ParseOptions(**options),
        )
        rows = table.column("rows").combine_chunks()
        if len(rows) == 0 or not pa.types.is_struct(rows.type.value_type) or rows.type.value_type.num_fields == 0:
            return None
        return pa.Table.from_struct_array(rows.flatten())
    except _ERRORS:
        return None


def _join(tables: list[pa.Table]) -> pa.Table | None:
    """The pieces stacked with columns in order of first appearance (as one parse gives), when
    every shared column's types are ones one parse unifies to the promoted type."""
    if any(len(set(t.column_names)) != t.num_columns for t in tables):
        return None
    types: dict = {}
    for t in tables:
        if not all(_unifies(types[f.name], f.type) for f in t.schema if f.name in types):
            return None
        types.update({f.name: f.type for f in t.schema if f.name not in types or pa.types.is_null(types[f.name])})
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except _ERRORS:
        return None


def _unifies(a: pa.DataType, b: pa.DataType) -> bool:
    return a == b or pa.types.is_null(a) or pa.types.is_null(b) or {a, b} == {pa.int64(), pa.float64()}
