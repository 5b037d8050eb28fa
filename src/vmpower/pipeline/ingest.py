"""Read the collectors' raw files into columnar DataFrames, with one-line errors for bad input.

* VM feature files: a JSON array or JSON Lines (a killed collector leaves JSON Lines whose last
  line may be cut off; that partial line is not a sample and is skipped).
* Host power files: CSV or a JSON array.

Parsing is done by pyarrow's C++ readers: no Python object is built per row.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vmpower.errors import InputError

# pyarrow is imported in the functions that read files: `vmpower serve` imports this module's
# contract but never reads a file, and pyarrow alone is ~35 MB of its RSS (docs/performance.md).

ZONE_PREFIX = "total_cpu_watts_"
HOST_DROP = ("vms", "vm_filter")  # nested / text columns the pipeline does not use


@dataclass
class RawTable:
    """A parsed raw file plus what reading it noticed."""

    path: Path
    df: pd.DataFrame
    notes: dict = field(default_factory=dict)


def _json_array_bounds(path: Path, size: int) -> tuple[int, int] | None:
    """(offset of '[', offset after ']') when the file holds a JSON array, None when it does not
    start with '['. Reads only the file's head and tail."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
        if head[:1] != b"[":
            return None
        start = fh.seek(0) or 0
        while True:  # leading whitespace can be longer than one chunk
            chunk = fh.read(1 << 16)
            stripped = chunk.lstrip()
            if stripped:
                start += len(chunk) - len(stripped)
                break
            start += len(chunk)
        end = size
        while end > start:
            fh.seek(max(start, end - 4096))
            tail = fh.read(end - max(start, end - 4096))
            stripped = tail.rstrip()
            if stripped:
                end = end - (len(tail) - len(stripped))
                break
            end -= len(tail)
        fh.seek(end - 1)
        if fh.read(1) != b"]":
            raise InputError(path, "truncated JSON array (no closing ']')")
    return start, end


def _read_json_array(path: Path, start: int, end: int) -> pa.Table:
    """Parse a JSON array file in one columnar pass: the array is wrapped as one object
    ``{"rows": [...]}`` in a single buffer filled straight from the file (one copy of the input,
    no Python object per row)."""
    import pyarrow as pa
    import pyarrow.json as pajson

    prefix, suffix = b'{"rows":', b"}\n"
    n = end - start
    buf = bytearray(len(prefix) + n + len(suffix))
    view = memoryview(buf)
    view[: len(prefix)] = prefix
    with open(path, "rb") as fh:
        fh.seek(start)
        got = fh.readinto(view[len(prefix) : len(prefix) + n])
    if got != n:
        raise InputError(path, "file changed while reading")
    view[len(prefix) + n :] = suffix
    del view
    if len(buf) >= 2**31 - 1:
        raise InputError(path, "JSON array larger than 2 GiB: write JSON Lines instead")
    try:
        table = pajson.read_json(
            pa.BufferReader(pa.py_buffer(buf)),
            read_options=pajson.ReadOptions(block_size=len(buf) + 1, use_threads=False),
            parse_options=pajson.ParseOptions(newlines_in_values=True),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(path, f"malformed JSON array ({_short(exc)})") from None
    del buf
    rows = table.column("rows").combine_chunks()
    if len(rows) == 0 or rows.type.value_type.num_fields == 0:
        raise InputError(path, "JSON array holds no samples")
    return pa.Table.from_struct_array(rows.flatten())


def _read_json_file(path: Path, limits=None) -> tuple[pa.Table, dict]:
    from vmpower import jsonguard
    from vmpower import limits as limits_mod
    from vmpower.pipeline import jsonarray

    size = path.stat().st_size
    if size == 0:
        raise InputError(path, "empty file")
    limits = limits or limits_mod.defaults()
    if size >= jsonarray.MIN_BYTES:
        table = jsonarray.read_file(path, size, limits, _json_array_bounds)  # pieces at once
        if table is not None:
            return table, {}
    # Depth and width first: deep nesting crashes the parser, a huge width makes it crawl.
    jsonguard.check_file(path, limits)
    bounds = _json_array_bounds(path, size)
    if bounds is not None:
        return _read_json_array(path, *bounds), {}
    return _read_json_bytes(path, path.read_bytes())


def _read_json_bytes(path: Path, data: bytes) -> tuple[pa.Table, dict]:
    import pyarrow as pa
    import pyarrow.json as pajson

    notes: dict = {}
    stripped = data.strip()
    if not stripped:
        raise InputError(path, "empty file")
    if stripped[:1] == b"[":
        if stripped[-1:] != b"]":
            raise InputError(path, "truncated JSON array (no closing ']')")
        # Wrap the array in one object so pyarrow parses it in a single columnar pass.
        wrapped = b'{"rows":' + stripped + b"}"
        try:
            table = pajson.read_json(
                io.BytesIO(wrapped),
                read_options=pajson.ReadOptions(block_size=len(wrapped) + 1, use_threads=False),
                parse_options=pajson.ParseOptions(newlines_in_values=True),
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InputError(path, f"malformed JSON array ({_short(exc)})") from None
        rows = table.column("rows").combine_chunks()
        if len(rows) == 0 or rows.type.value_type.num_fields == 0:
            raise InputError(path, "JSON array holds no samples")
        return pa.Table.from_struct_array(rows.flatten()), notes
    if stripped[:1] != b"{":
        raise InputError(path, "not JSON: expected an array '[...]' or JSON Lines '{...}'")
    # JSON Lines. A collector killed mid-write leaves a partial last line: drop only that one.
    body = data.rstrip(b"\n")
    last_nl = body.rfind(b"\n")
    last = body[last_nl + 1 :]
    if not _is_complete_object(last):
        notes["incomplete_last_line"] = 1
        body = body[: max(last_nl, 0)]
        if not body.strip():
            raise InputError(path, "truncated JSON Lines: no complete sample")
    body = body + b"\n"
    try:
        table = pajson.read_json(
            io.BytesIO(body),
            read_options=pajson.ReadOptions(block_size=len(body) + 1, use_threads=False),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(path, f"malformed JSON Lines ({_short(exc)})") from None
    return table, notes


def _is_complete_object(line: bytes) -> bool:
    import json

    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160]


def _to_frame(table: pa.Table, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    import pyarrow as pa

    keep = [name for name in table.column_names if name not in drop]
    table = table.select(keep)
    # Nested values (lists, structs) are bookkeeping, not features.
    nested = [f.name for f in table.schema if pa.types.is_nested(f.type)]
    table = table.drop_columns(nested)
    # Numbers and booleans become float64 in Arrow (one pass, no pandas copy per column).
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal)
    columns = [
        col.cast(pa.float64()) if any(test(col.type) for test in numeric) and col.type != pa.float64() else col
        for col in table.columns
    ]
    table = pa.Table.from_arrays(columns, names=table.column_names)
    return table.to_pandas(split_blocks=True, self_destruct=True)


def read_vm_features(path: str | Path, limits=None) -> RawTable:
    """``limits``: vmpower.limits.Limits (default: the built-in ones)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    table, notes = _read_json_file(path, limits)
    df = _to_frame(table)
    # All-null columns come back as object dtype; they are numeric features that were absent.
    for name in df.columns:
        if df[name].dtype == object and df[name].isna().all():
            df[name] = np.nan
    return RawTable(path, df, notes)


def read_host_power(path: str | Path, limits=None) -> RawTable:
    import pyarrow as pa

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.suffix == ".json":
        table, notes = _read_json_file(path, limits)
        return RawTable(path, _to_frame(table, drop=HOST_DROP), notes)
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    with open(path, "rb") as fh:
        header = fh.readline()
        cuts = _repeated_headers(fh, header.rstrip(b"\r\n"))
    text = header.decode("utf-8", "replace").strip()
    names = [h.strip().strip('"') for h in text.split(",")]
    keep = [n for n in names if n not in HOST_DROP] or None
    if not cuts:
        table, notes = _read_csv(path, path, keep)
    else:
        # Two collector outputs concatenated: each part is read with its own header line.
        data = path.read_bytes()
        bounds = [0, *cuts, len(data)]
        parts = [_read_csv(path, pa.py_buffer(data[a:b]), keep) for a, b in zip(bounds, bounds[1:])]
        table = pa.concat_tables([t for t, _ in parts], promote_options="default")
        notes = {"repeated_headers": len(cuts), **parts[-1][1]}
    if table.num_rows == 0:
        raise InputError(path, "CSV has a header but no rows")
    return RawTable(path, _to_frame(table, drop=HOST_DROP), notes)


def _repeated_headers(fh, header: bytes) -> list[int]:
    """Byte offsets of the lines (after the first) equal to the header line: one file written by
    two collector runs. Searched with mmap.find (no Python loop per row, no copy of the file)."""
    import mmap

    if not header:
        return []
    needle, cuts = b"\n" + header, []
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        i = mm.find(needle)
        while i >= 0:
            end = i + len(needle)
            if end == len(mm) or mm[end : end + 1] in (b"\n", b"\r"):
                cuts.append(i + 1)
            i = mm.find(needle, i + 1)
    return cuts


def _read_csv(path: Path, source, keep) -> tuple[pa.Table, dict]:
    """One CSV (a file, or one part of a concatenated file) as an Arrow table."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    notes: dict = {}

    def read(iso_type):
        return pacsv.read_csv(
            pa.BufferReader(source) if isinstance(source, pa.Buffer) else source,
            read_options=pacsv.ReadOptions(use_threads=True, block_size=1 << 24),
            convert_options=pacsv.ConvertOptions(
                column_types={"timestamp_iso": iso_type, "vm_filter": pa.string()},
                strings_can_be_null=True,
                include_columns=keep,
                include_missing_columns=True,
            ),
        )

    def parse():
        try:
            # Naive ISO times parsed by Arrow's C++ parser (no Python string per row); any
            # other form (offsets, bad values) is read as text and checked by naive_seconds.
            return read(pa.timestamp("ns"))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return read(pa.string())

    try:
        table = parse()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        cut = _cut_last_line(source)
        if cut is None:
            raise InputError(path, f"malformed CSV ({_short(exc)})") from None
        # A collector killed mid-write leaves a partial last line: the rows before it are kept.
        source, notes = cut, {"incomplete_last_line": 1}
        try:
            table = parse()
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc2:
            raise InputError(path, f"malformed CSV ({_short(exc2)})") from None
    return table, notes


def _cut_last_line(source) -> pa.Buffer | None:
    """The CSV (a path or a buffer) without its last line when that line lacks its newline."""
    import pyarrow as pa

    data = source.to_pybytes() if isinstance(source, pa.Buffer) else Path(source).read_bytes()
    if not data or data[-1:] == b"\n":
        return None
    end = data.rfind(b"\n")
    return pa.py_buffer(data[: end + 1]) if end > 0 else None


def zones_in(df: pd.DataFrame) -> list[str]:
    return [c[len(ZONE_PREFIX) :] for c in df.columns if c.startswith(ZONE_PREFIX)]


_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")


def naive_seconds(iso: pd.Series, path: Path) -> np.ndarray:
    """Naive ISO wall-clock strings to float seconds on the same naive scale (not epoch)."""
    if pd.api.types.is_datetime64_dtype(iso.dtype):
        return _ns_seconds(iso.astype("datetime64[ns]").to_numpy())
    fast = _arrow_naive(iso)
    if fast is not None:
        return fast
    values = iso.astype("string")
    bad = ~values.str.match(_ISO).fillna(False)
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(path, f"timestamp_iso is not an ISO date-time at row {first}: {values.iloc[first]!r}")
    stamps = pd.to_datetime(values, format="ISO8601")
    if getattr(stamps.dt, "tz", None) is not None:
        # An offset-aware ISO string is an absolute time; compare it on the UTC scale.
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    return _ns_seconds(stamps.astype("datetime64[ns]").to_numpy())


def _ns_seconds(stamps: np.ndarray) -> np.ndarray:
    return (stamps.astype("int64") / 1e9).astype("float64")


def _arrow_naive(iso: pd.Series) -> np.ndarray | None:
    """Naive 'YYYY-mm-dd[T ]HH:MM:SS[.f]' strings parsed by Arrow (C++); None when any value is
    something else (offsets, missing, malformed), which the checked pandas path then reports."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        arr = pa.array(iso, type=pa.string(), from_pandas=True)
        if arr.null_count or len(arr) == 0:
            return None
        if pc.min(pc.utf8_length(arr)).as_py() < 19:
            return None
        stamps = arr.cast(pa.timestamp("ns"))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return _ns_seconds(stamps.to_numpy(zero_copy_only=False))


def time_columns(raw: RawTable) -> dict[str, np.ndarray]:
    """The absolute-time columns a file offers: 'epoch' and/or 'naive' (local wall clock)."""
    df, out = raw.df, {}
    if "timestamp_absolute" in df.columns and df["timestamp_absolute"].notna().any():
        col = df["timestamp_absolute"].to_numpy(dtype="float64")
        if np.isnan(col).any():
            raise InputError(raw.path, f"timestamp_absolute is missing in {int(np.isnan(col).sum())} rows")
        out["epoch"] = col
    if "timestamp_iso" in df.columns and df["timestamp_iso"].notna().any():
        iso = df["timestamp_iso"]
        if iso.isna().any():
            raise InputError(raw.path, f"timestamp_iso is missing in {int(iso.isna().sum())} rows")
        out["naive"] = naive_seconds(iso, raw.path)
    if not out:
        raise InputError(
            raw.path,
            "no absolute time: needs timestamp_absolute or timestamp_iso (the relative 'timestamp' cannot be aligned)",
        )
    return out


def check_finite(df: pd.DataFrame, columns: list[str], path: Path) -> None:
    """Error on NaN/inf in columns that must be complete (power, times)."""
    for name in columns:
        col = df[name].to_numpy(dtype="float64")
        bad = ~np.isfinite(col)
        if bad.any():
            raise InputError(
                path,
                f"column {name} has {int(bad.sum())} NaN/empty/infinite values (first at row {int(np.flatnonzero(bad)[0])})",
            )
