"""vmpower.collect.machine: this machine's spec, as machine_spec.json records it."""

import os

import psutil

from vmpower.collect.machine import machine_spec


def test_machine_spec_describes_this_machine():
    spec = machine_spec()
    assert set(spec) == {"processor", "cores", "chips", "memory", "frequency"}
    assert spec["processor"] and isinstance(spec["processor"], str)
    assert 1 <= spec["cores"] <= (os.cpu_count() or 1) and spec["chips"] >= 1
    assert spec["memory"] == round(psutil.virtual_memory().total / 1024 ** 3)
    assert spec["frequency"] is None or spec["frequency"] > 0
    assert machine_spec() == spec
