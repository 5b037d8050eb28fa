"""The collectors' file formats, written column-wise (Arrow string kernels, no loop over rows).

Shared by both profiles: literal helpers (floats as json/csv print them, JSON strings, ISO
times), the JSON-array/JSON-Lines record writer and the host JSON's ``vms`` list. The demo
profile's writers are here too; the seed collectors' (``legacy``) writers are in legacy.py.
"""

from __future__ import annotations

import hashlib
import json

from vmpower.demo.simulate import US

# --------------------------------------------------------------------------------------- literals


def fmt_float(x):
    """Floats as Python's json/csv modules print them (repr), rounded to 6 decimals; vectorised."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    x = np.round(np.asarray(x, dtype=np.float64), 6) + 0.0  # + 0.0 turns -0.0 into 0.0
    if not np.isfinite(x).all():
        raise ValueError("non-finite value in synthetic data")
    s = pc.cast(pa.array(x), pa.string())
    s = pc.if_else(pc.match_substring_regex(s, r"[.e]"), s, pc.binary_join_element_wise(s, ".0", ""))
    # repr() writes 1e-06 .. 9.9e-05 in exponent form; Arrow writes them positionally.
    small = (x != 0) & (np.abs(x) < 1e-4)
    if small.any():
        k = np.round(np.abs(x) * 1e6).astype(np.int64)
        sign = np.where(x < 0, "-", "")
        d1, d2 = k // 10, k % 10
        mant = np.where(k < 10, k.astype(str), np.where(d2 == 0, d1.astype(str),
                                                        np.char.add(np.char.add(d1.astype(str), "."), d2.astype(str))))
        exp = np.where(k < 10, "e-06", "e-05")
        alt = np.char.add(np.char.add(sign, mant), exp)
        s = pc.if_else(pa.array(small), pa.array(alt.astype(object), pa.string()), s)
    return s


def fmt_repr(x):
    """Floats exactly as repr() (json.dump, csv) prints them, vectorised: Arrow gives the same
    shortest digits and differs only in layout, fixed up here for 1e-6 <= |x| < 1e10."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    x = np.asarray(x, dtype=np.float64) + 0.0  # -0.0 -> 0.0
    ax = np.abs(x)
    if not np.isfinite(x).all() or ((ax >= 1e10) | ((ax < 1e-6) & (ax > 0))).any():
        raise ValueError("value outside the range the legacy writer formats")
    s = pc.cast(pa.array(x), pa.string())
    s = pc.if_else(pc.match_substring_regex(s, r"[.e]"), s, pc.binary_join_element_wise(s, ".0", ""))
    # Arrow writes 1e-6 <= |x| < 1e-4 positionally; repr writes d.ddde-0N.
    s = pc.replace_substring_regex(s, r"^(-?)0\.00000([1-9])(\d*)$", r"\1\2.\3e-06")
    s = pc.replace_substring_regex(s, r"^(-?)0\.0000([1-9])(\d*)$", r"\1\2.\3e-05")
    s = pc.replace_substring_regex(s, r"\.e", "e")
    return pc.replace_substring_regex(s, r"e-([1-9])$", r"e-0\1")


def fmt_int(x):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pa.array(np.asarray(x, dtype=np.int64)), pa.string())


def fmt_str(values):
    """JSON string literals via the few distinct values (json.dumps on each distinct one)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    lits = np.array([json.dumps(str(u)) for u in uniques], dtype=object)
    return pa.array(lits[codes], pa.string())


def join(parts: list, sep: str):
    """Row-wise concatenation of string arrays and constant strings."""
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(*parts, sep)


def iso_us(abs_us, offset_us: int):
    """ISO times with microseconds of epoch microseconds in a fixed UTC offset."""
    import numpy as np

    return np.datetime_as_string((np.asarray(abs_us) + offset_us).astype("datetime64[us]"), unit="us")


def iso_local(epoch, offset_seconds: float):
    """datetime.fromtimestamp(t).isoformat() in a fixed UTC offset: microseconds rounded half
    to even from the float, and no fraction at all when they are 0 (as isoformat does)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    t = np.asarray(epoch, dtype=np.float64)
    sec = np.floor(t)
    us = np.round((t - sec) * 1e6).astype(np.int64)  # t - floor(t) is exact; np.round is half-even
    total_us = (sec.astype(np.int64) + int(round(offset_seconds))) * 1_000_000 + us
    s = pa.array(np.datetime_as_string(total_us.astype("datetime64[us]"), unit="us"), pa.string())
    return pc.replace_substring_regex(s, r"\.000000$", "")


def vm_id(seed, nt_name: str) -> str:
    """The VM's libvirt UUID in the host files: fixed by the seed and node type."""
    import uuid

    return str(uuid.UUID(bytes=hashlib.sha256(f"{seed}\x1f{nt_name}\x1fvm_id".encode()).digest()[:16], version=4))


def vm_filter_cell(vm_name: str) -> str:
    """The host CSV's vm_filter cell (repr of a set), quoted as csv.writer quotes it."""
    cell = repr({vm_name})
    if "," in cell or '"' in cell:
        cell = '"' + cell.replace('"', '""') + '"'
    return cell


def offset_us(cfg) -> int:
    return int(round(float(cfg["utc_offset_hours"]) * 3600 * US))


# --------------------------------------------------------------------------------------- records


def records_text(fields, lines: bool) -> str:
    """JSON array as json.dump(list, indent=2) writes it, or JSON Lines as json.dumps per line.
    ``fields``: (name, arrow string array of JSON literals | constant literal | list of strings)."""
    parts = []
    for i, (name, val) in enumerate(fields):
        key = json.dumps(name)
        if isinstance(val, list):
            if lines:
                lit = json.dumps(val)
            else:
                lit = "[\n" + ",\n".join(" " * 6 + json.dumps(v) for v in val) + "\n    ]"
            val = lit
        if lines:
            prefix = ("{" if i == 0 else ", ") + key + ": "
        else:
            prefix = ("  {\n" if i == 0 else ",\n") + "    " + key + ": "
        if isinstance(val, str):
            parts.append(prefix + val)
        else:
            parts.append(prefix)
            parts.append(val)
    parts.append("}" if lines else "\n  }")
    rows = join(parts, "")
    if lines:
        return "\n".join(rows.to_pylist()) + "\n"
    return "[\n" + ",\n".join(rows.to_pylist()) + "\n]"


def vms_array(cfg, vm_uuid: str, node_name: str, zones, watts: dict):
    """The host JSON's ``vms`` list (one entry per zone) as json.dump(indent=2) nests it."""
    parts = ["[\n"]
    for i, z in enumerate(zones):
        head = "".join(
            f'{" " * 8}{json.dumps(k)}: {json.dumps(v)},\n'
            for k, v in (("vm_id", vm_uuid), ("vm_name", cfg["vm_name"]), ("hypervisor", cfg["hypervisor"]),
                         ("node_name", node_name), ("zone", z)))
        parts += [(",\n" if i else "") + " " * 6 + "{\n" + head + " " * 8 + '"watts": ', watts[z],
                  ",\n" + " " * 8 + '"state": "running"\n' + " " * 6 + "}"]
    parts.append("\n    ]")
    return join(parts, "")


# --------------------------------------------------------------------------------------- demo profile


def vm_file_text(cfg, run: dict, spec: dict, offset: int) -> str:
    """The guest collector's file (JSON array or JSON Lines, maybe cut off by a kill)."""
    vm = run["vm"]
    fields = [
        ("timestamp", fmt_float(vm["timestamp_us"] / US)),
        ("timestamp_absolute", fmt_float(vm["abs_us"] / US)),
        ("timestamp_iso", fmt_str(iso_us(vm["abs_us"], offset))),
        ("vm_hostname", json.dumps(cfg["vm_hostname"])),
        ("target_zones", list(cfg["target_zones"])),
        ("stress_workload", fmt_str(vm["workload"])),
    ]
    if spec.get("perf", True):  # older collectors (the perf-less runs here) have no such field
        fields.append(("perf_available", "true"))
    for name, (kind, values) in vm["cols"].items():
        fields.append((name, fmt_int(values) if kind == "int" else fmt_float(values)))
    fields.append(("collection_interval", json.dumps(float(cfg["vm_interval"]))))
    fields.append(("time_delta_seconds", fmt_float(vm["delta_us"] / US)))
    fmt = spec.get("vm_format", "json")
    text = records_text(fields, lines=(fmt == "jsonl"))
    if fmt == "jsonl" and spec.get("killed", False):
        # Killed mid-write: the last sample is cut off partway through its line.
        last_start = text.rstrip("\n").rfind("\n") + 1
        text = text[: last_start + (len(text) - last_start) // 2]
    return text


def host_csv_text(cfg, run: dict, zones: list[str]) -> str:
    import pyarrow as pa

    host = run["host"]
    cols = [fmt_float(host["rel_us"] / US), pa.array(iso_us(host["abs_us"], offset_us(cfg)), pa.string())]
    header = ["timestamp", "timestamp_iso"]
    for z in zones:
        header.append(f"total_cpu_watts_{z}")
        cols.append(fmt_float(host["vals"][z]))
    header += ["vm_count", "collection_interval", "vm_filter"]
    cols += ["1", repr(float(cfg["host_interval"])), vm_filter_cell(cfg["vm_name"])]
    return ",".join(header) + "\n" + "\n".join(join(cols, ",").to_pylist()) + "\n"


def host_json_text(cfg, run: dict, zones: list[str], nt_name: str) -> str:
    host = run["host"]
    fields = [
        ("timestamp", fmt_float(host["rel_us"] / US)),
        ("timestamp_absolute", fmt_float(host["abs_us"] / US)),
        ("timestamp_iso", fmt_str(iso_us(host["abs_us"], offset_us(cfg)))),
    ]
    watts = {z: fmt_float(host["vals"][z]) for z in zones}
    fields += [(f"total_cpu_watts_{z}", watts[z]) for z in zones]
    fields.append(("vm_count", "1"))
    fields.append(("vms", vms_array(cfg, vm_id(cfg["seed"], nt_name), f"{nt_name}-node", zones, watts)))
    fields.append(("collection_interval", repr(float(cfg["host_interval"]))))
    fields.append(("vm_filter", json.dumps(repr({cfg["vm_name"]}))))
    return records_text(fields, lines=False)
