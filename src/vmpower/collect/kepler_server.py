"""A stand-in Kepler /metrics endpoint on loopback, for tests and dry runs without a host Kepler.

It serves the exposition shapes real Kepler prints (0.10+: ``kepler_vm_cpu_watts`` gauges with
``hypervisor,node_name,state,vm_id,vm_name,zone``; 0.7: ``kepler_vm_<zone>_joules_total``
counters with ``mode,source,vm_id``), in plain text or OpenMetrics. Power follows this
machine's real CPU load from /proc/stat, is recomputed every ``update_interval`` seconds like
Kepler, and the first reading is 0. ``stop()``/``start()`` let a test kill and revive it on the
same port; ``mode`` switches to garbage or slow answers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# active watts at 100 % CPU of the whole machine, per zone
FULL_LOAD_WATTS = {"package": 40.0, "core": 30.0, "dram": 4.0}


def _cpu_jiffies() -> tuple[int, int]:
    with open("/proc/stat", encoding="ascii") as fh:
        vals = [int(x) for x in fh.readline().split()[1:9]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


@dataclass
class Vm:
    vm_id: str
    vm_name: str
    state: str = "running"
    share: float = 1.0  # share of the machine's active power attributed to this VM


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class FakeKepler:
    def __init__(self, vms: list[Vm], *, version: str = "0.10", openmetrics: bool = False,
                 update_interval: float = 5.0, zones=("package", "core", "dram"), node_name: str = "host-1",
                 port: int = 0, with_process_seconds: bool = False, fixed_watts: dict | None = None):
        self.vms = vms
        self.version = version
        self.openmetrics = openmetrics
        self.update_interval = update_interval
        self.zones = list(zones)
        self.node_name = node_name
        self.port = port
        self.with_process_seconds = with_process_seconds
        self.fixed_watts = fixed_watts  # constant power per zone instead of following the load
        self.mode = "ok"  # ok | garbage | slow | http500
        self.slow_seconds = 3.0
        self.requests = 0
        self._lock = threading.Lock()
        self._watts = {z: 0.0 for z in self.zones}  # Kepler's first reading is 0
        self._joules = {z: 0.0 for z in self.zones}
        self._last = None
        self._last_update = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._updater: threading.Thread | None = None
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    # -- power model ------------------------------------------------------------------------------
    def _update(self) -> None:
        busy, total = _cpu_jiffies()
        now = time.monotonic()
        with self._lock:
            if self._last is not None and total > self._last[1]:
                util = (busy - self._last[0]) / (total - self._last[1])
                dt = now - self._last_update
                for z in self.zones:
                    if self.fixed_watts is not None:
                        self._watts[z] = self.fixed_watts.get(z, 0.0)
                    else:
                        self._watts[z] = FULL_LOAD_WATTS.get(z, 2.0) * util
                    self._joules[z] += self._watts[z] * dt
            self._last = (busy, total)
            self._last_update = now

    def _update_loop(self) -> None:
        self._update()
        while not self._closed.wait(self.update_interval):
            self._update()

    def watts(self) -> dict[str, float]:
        with self._lock:
            return dict(self._watts)

    # -- exposition -------------------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        with self._lock:
            watts, joules = dict(self._watts), dict(self._joules)
        lines = [
            "# HELP kepler_build_info A metric with a constant '1' value labeled with version information",
            "# TYPE kepler_build_info gauge",
            'kepler_build_info{arch="amd64",branch="",goversion="go1.23",revision="test",'
            f'version="v{self.version}"}} 1',
        ]
        if self.version.startswith("0.7"):
            for z in self.zones:
                fam = f"kepler_vm_{z}_joules"
                name = fam if self.openmetrics else fam + "_total"  # OpenMetrics names the family
                lines.append(f"# HELP {name} Aggregated value in {z} value from vms")
                lines.append(f"# TYPE {name} counter")
                for vm in self.vms:
                    for mode, val in (("dynamic", joules[z] * vm.share), ("idle", 0.0)):
                        lines.append(f'{fam}_total{{mode="{mode}",source="rapl-sysfs",'
                                     f'vm_id="{_esc(vm.vm_id)}"}} {val:.3f}')
        else:
            lines += ["# HELP kepler_node_cpu_watts Power consumption of cpu at node level in watts",
                      "# TYPE kepler_node_cpu_watts gauge"]
            for z in self.zones:
                lines.append(f'kepler_node_cpu_watts{{node_name="{self.node_name}",path="/sys/class/powercap/'
                             f'intel-rapl:0",zone="{z}"}} {watts[z]:.6f}')
            lines += ["# HELP kepler_vm_cpu_watts Power consumption of cpu at vm level in watts",
                      "# TYPE kepler_vm_cpu_watts gauge"]
            for vm in self.vms:
                for z in self.zones:
                    val = watts[z] * vm.share if vm.state == "running" else 0.0
                    lines.append(f'kepler_vm_cpu_watts{{hypervisor="kvm",node_name="{self.node_name}",'
                                 f'state="{vm.state}",vm_id="{_esc(vm.vm_id)}",vm_name="{_esc(vm.vm_name)}",'
                                 f'zone="{z}"}} {val:.6f}')
        if self.with_process_seconds:
            fam = "kepler_process_cpu_seconds"
            name = fam if self.openmetrics else fam + "_total"
            lines.append(f"# HELP {name} Total user and system time of cpu at process level in seconds")
            lines.append(f"# TYPE {name} counter")
            busy, _ = _cpu_jiffies()
            lines.append(f'{fam}_total{{comm="stress-ng",pid="1",type="regular"}} {busy / 100.0:.2f}')
        if self.openmetrics:
            lines.append("# EOF")
            ctype = "application/openmetrics-text; version=1.0.0; charset=utf-8"
        else:
            ctype = "text/plain; version=0.0.4; charset=utf-8"
        return ("\n".join(lines) + "\n").encode(), ctype

    # -- server -----------------------------------------------------------------------------------
    def _handler(self):
        kepler = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                kepler.requests += 1
                mode = kepler.mode
                if mode == "slow":
                    time.sleep(kepler.slow_seconds)
                if mode == "http500":
                    self.send_error(500, "internal error")
                    return
                if mode == "garbage":
                    body, ctype = b"<html>\x00\xff not metrics {{{ 1 2 3\n", "text/plain"
                else:
                    body, ctype = kepler.exposition()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        return Handler

    def start(self) -> "FakeKepler":
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        if self._updater is None:
            self._updater = threading.Thread(target=self._update_loop, daemon=True)
            self._updater.start()
        return self

    def stop(self) -> None:
        """Kill the endpoint (connections refused) but keep the power state, like a restart."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.stop()
        self._closed.set()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m vmpower.collect.kepler_server --vm-name NAME [--port P] [--version 0.7]``"""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vm-name", action="append", default=[])
    p.add_argument("--port", type=int, default=28283)
    p.add_argument("--version", default="0.10")
    p.add_argument("--openmetrics", action="store_true")
    p.add_argument("--update-interval", type=float, default=5.0)
    a = p.parse_args(argv)
    vms = [Vm(vm_id=f"vm-{i}", vm_name=n) for i, n in enumerate(a.vm_name or ["vm"])]
    k = FakeKepler(vms, version=a.version, openmetrics=a.openmetrics, update_interval=a.update_interval,
                   port=a.port).start()
    print(f"serving {k.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        k.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
