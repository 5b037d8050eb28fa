"""serve's own health metrics, published whether VM energy modelling is enabled or not
(vm-energy-config ``enabled`` / ``KEPLER_VM_ENERGY_ENABLED``)."""

from __future__ import annotations

import logging
import threading

from vmpower.errors import InputError

log = logging.getLogger("vmpower.serving.health")


def gauges(registry, enabled: bool) -> None:
    """kepler_vm_energy_enabled (1/0) and kepler_vm_exporter_up (1) on ``registry``."""
    from prometheus_client import Gauge

    Gauge("kepler_vm_energy_enabled", "1: VM energy modelling is enabled (vm-energy-config enabled and "
          "KEPLER_VM_ENERGY_ENABLED)", registry=registry).set(1 if enabled else 0)
    Gauge("kepler_vm_exporter_up", "1 while the exporter runs", registry=registry).set(1)


def serve_disabled(address: str, port: int, limits) -> int:
    """enabled: false: no model; /metrics has only kepler_vm_energy_enabled 0 and kepler_vm_exporter_up 1."""
    from prometheus_client import CollectorRegistry

    from vmpower.collect.common import stop_on_signals
    from vmpower.serving import metrics_http

    r = CollectorRegistry()
    gauges(r, enabled=False)
    try:
        server, thread = metrics_http.start(r, address, port, limits)
    except OSError as exc:
        raise InputError(f"{address}:{port}", f"cannot listen ({exc.strerror or exc})") from None
    log.warning("VM energy modelling is disabled (vm-energy-config enabled / KEPLER_VM_ENERGY_ENABLED): "
                "serving health metrics only on http://%s:%d/metrics", address, port)
    done = threading.Event()
    with stop_on_signals(done.set):
        while not done.wait(1.0):
            pass
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    return 0

