"""demo.formats: the collectors' literals and records, as Python's json/csv modules write them."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone

import numpy as np

from vmpower.demo import formats

VALUES = [0.0, -0.0, 1.0, -2.5, 1e-6, 2.5e-5, -9.9e-5, 0.0001, 123456.789012, 3.0000004, 1234567890.5, 0.1]


def test_fmt_float_is_repr_of_the_rounded_value():
    got = formats.fmt_float(VALUES).to_pylist()
    assert got == [repr(round(v, 6) + 0.0) for v in VALUES]


def test_fmt_repr_is_repr():
    x = np.random.default_rng(3).uniform(-1e4, 1e4, 500)
    vals = [*VALUES[:6], *x, 1.5e-6, 7e-5, 9999999999.0]
    assert formats.fmt_repr(vals).to_pylist() == [repr(float(v) + 0.0) for v in vals]


def test_fmt_str_and_int():
    assert formats.fmt_str(["a", 'q"uote', "a"]).to_pylist() == ['"a"', json.dumps('q"uote'), '"a"']
    assert formats.fmt_int([1, -2, 3]).to_pylist() == ["1", "-2", "3"]


def test_iso_local_is_isoformat_in_the_offset():
    t = [1_700_000_000.0, 1_700_000_000.1234565, 1_700_000_001.999999]
    tz = timezone(timedelta(hours=-4))
    want = [datetime.fromtimestamp(v, tz).replace(tzinfo=None).isoformat() for v in t]
    assert formats.iso_local(t, -4 * 3600).to_pylist() == want


def test_records_text_is_json_dump_and_json_lines():
    fields = [("a", formats.fmt_int([1, 2])), ("b", '"const"'), ("zones", ["x", "y"]),
              ("c", formats.fmt_float([0.5, 2.0]))]
    rows = [{"a": 1, "b": "const", "zones": ["x", "y"], "c": 0.5}, {"a": 2, "b": "const", "zones": ["x", "y"], "c": 2.0}]
    assert formats.records_text(fields, lines=False) == json.dumps(rows, indent=2)
    assert formats.records_text(fields, lines=True) == "".join(json.dumps(r) + "\n" for r in rows)


def test_vm_filter_cell_is_what_csv_writes():
    for name in ("vm1", "vm,2", 'v"m'):
        buf = io.StringIO()
        csv.writer(buf).writerow([repr({name})])
        assert formats.vm_filter_cell(name) == buf.getvalue().rstrip("\r\n")


def test_vms_array_nests_like_json_dump():
    cfg = {"vm_name": "vm", "hypervisor": "kvm"}
    watts = {"core": formats.fmt_float([1.5]), "package": formats.fmt_float([2.0])}
    text = formats.vms_array(cfg, formats.vm_id(1, "nt"), "node", ["core", "package"], watts).to_pylist()[0]
    vms = json.loads(text)
    assert [v["zone"] for v in vms] == ["core", "package"] and vms[1]["watts"] == 2.0
    assert '"vms": ' + text in json.dumps([{"vms": vms}], indent=2)  # a record's field in a JSON array
    assert formats.vm_id(1, "nt") == formats.vm_id(1, "nt") != formats.vm_id(2, "nt")
