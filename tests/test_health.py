"""serving/health.py: serve's health gauges and the disabled-serve path's listen error."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from vmpower.errors import InputError
from vmpower.serving import health


@pytest.mark.parametrize("enabled, value", [(True, 1.0), (False, 0.0)])
def test_gauges(enabled, value):
    r = CollectorRegistry()
    health.gauges(r, enabled)
    assert r.get_sample_value("kepler_vm_energy_enabled") == value
    assert r.get_sample_value("kepler_vm_exporter_up") == 1.0
    names = {m.name for m in r.collect()}
    assert names == {"kepler_vm_energy_enabled", "kepler_vm_exporter_up"}
    assert b"kepler_vm_energy_enabled " + str(value).encode() in generate_latest(r)


def test_gauges_twice_on_one_registry_is_refused():
    r = CollectorRegistry()
    health.gauges(r, True)
    with pytest.raises(ValueError):
        health.gauges(r, True)


def test_serve_disabled_on_a_busy_port_is_one_line_naming_the_address():
    from vmpower import limits

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(InputError) as exc:
            health.serve_disabled("127.0.0.1", port, limits.defaults())
    assert exc.value.path == f"127.0.0.1:{port}"
    assert exc.value.problem.startswith("cannot listen")
    assert "\n" not in str(exc.value)
