"""A stand-in Kepler /metrics endpoint on loopback, for tests and dry runs without a host Kepler.

It serves the metric families a real Kepler serves on a KVM host, with their real names, labels,
types and help texts, in plain text or OpenMetrics:

* 0.10+: ``kepler_vm_cpu_watts`` *and* ``kepler_vm_cpu_joules_total`` (labels
  ``hypervisor,node_name,state,vm_id,vm_name,zone``; ``state`` is running or terminated), the
  node, process (the VMs' qemu processes among them) and cpu_info families, build info, and the
  Go/process collectors' own metrics (``process_cpu_seconds_total`` is Kepler's own CPU time).
* 0.7: ``kepler_vm_<zone>_joules_total{mode,source,vm_id}`` for every energy name 0.7 registers
  (package, core, uncore, dram, other, platform, and gpu with ``gpu=True``; ``mode`` dynamic
  and idle, as with RAPL where 0.7 turns idle power on; a zone the hardware lacks stays 0), with libvirt
  vm ids ``machine-qemu-<n>-<name>``, the node, process and container energy families and the
  ``*_bpf_cpu_time_ms_total`` counters.

Power follows this machine's real CPU load from /proc/stat, is recomputed every
``update_interval`` seconds like Kepler, and the first reading is 0. ``stop()``/``start()`` let a
test kill and revive it on the same port; ``mode`` switches to broken answers: ``garbage`` (not
an exposition), ``slow``, ``http500``, ``truncate`` (the connection closes mid-body) and
``badstatus`` (a status line that is not HTTP).
"""

from __future__ import annotations

import platform
import resource
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# active watts at 100 % CPU of the whole machine, per zone
FULL_LOAD_WATTS = {"package": 40.0, "core": 30.0, "dram": 4.0, "uncore": 1.0}
# node idle watts per zone (never attributed to VMs: Kepler reports their active share)
IDLE_WATTS = {"package": 12.0, "core": 6.0, "dram": 2.0, "uncore": 0.5}
RAPL_PATHS = {"package": "/sys/class/powercap/intel-rapl:0", "core": "/sys/class/powercap/intel-rapl:0:0",
              "uncore": "/sys/class/powercap/intel-rapl:0:1", "dram": "/sys/class/powercap/intel-rapl:0:2"}
# every energy name Kepler 0.7 registers, in its order (only the first four are CPU zones)
ZONES_07 = ("package", "core", "uncore", "dram", "other", "gpu", "platform")
QEMU = ("qemu-system-x86", "/usr/bin/qemu-system-x86_64")


def _cpu_jiffies() -> tuple[int, int]:
    with open("/proc/stat", encoding="ascii") as fh:
        vals = [int(x) for x in fh.readline().split()[1:9]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def _cpu_info() -> list[dict[str, str]]:
    """kepler_node_cpu_info's labels, one per logical CPU, from this machine's /proc/cpuinfo."""
    out, cur = [], {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if not key and cur:
                    out.append(cur)
                    cur = {}
                elif key in ("processor", "vendor_id", "model name", "physical id", "core id"):
                    cur[key.replace(" ", "_")] = val
        if cur:
            out.append(cur)
    except OSError:
        pass
    keys = ("core_id", "model_name", "physical_id", "processor", "vendor_id")
    return [{k: c.get(k, "") for k in keys} for c in out]


@dataclass
class Vm:
    vm_id: str  # Kepler 0.10's vm_id (the QEMU -uuid)
    vm_name: str
    state: str = "running"  # 0.10: running | terminated (0.7 serves running VMs only)
    share: float = 1.0  # share of the machine's active power attributed to this VM
    libvirt_id: str | None = None  # Kepler 0.7's vm_id; default machine-qemu-<n>-<vm_name>


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return repr(float(value))


class FakeKepler:
    def __init__(self, vms: list[Vm], *, version: str = "0.10", openmetrics: bool = False,
                 update_interval: float = 5.0, zones=("package", "core", "dram"), node_name: str = "host-1",
                 port: int = 0, fixed_watts: dict | None = None, gpu: bool = False):
        self.vms = vms
        self.version = version
        self.openmetrics = openmetrics
        self.update_interval = update_interval
        self.zones = list(zones)  # the RAPL zones this "hardware" has
        self.node_name = node_name
        self.port = port
        self.fixed_watts = fixed_watts  # constant active power per zone instead of following the load
        self.gpu = gpu  # 0.7 serves its gpu energy only with a GPU enabled
        self.mode = "ok"  # ok | garbage | slow | http500 | truncate | badstatus
        self.slow_seconds = 3.0
        self.requests = 0
        self._lock = threading.Lock()
        self._watts = {z: 0.0 for z in self.zones}  # active watts; Kepler's first reading is 0
        self._joules = {z: 0.0 for z in self.zones}  # active joules
        self._idle_joules = {z: 0.0 for z in self.zones}
        self._busy_seconds = 0.0
        self._util = 0.0
        self._last = None
        self._last_update = None
        self._cpu_info = _cpu_info()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._updater: threading.Thread | None = None
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    @property
    def is_07(self) -> bool:
        return self.version.startswith("0.7")

    def libvirt_id(self, i: int, vm: Vm) -> str:
        return vm.libvirt_id or f"machine-qemu-{i + 1}-{vm.vm_name}"

    # -- power model ------------------------------------------------------------------------------
    def _update(self) -> None:
        busy, total = _cpu_jiffies()
        now = time.monotonic()
        with self._lock:
            if self._last is not None and total > self._last[1]:
                util = (busy - self._last[0]) / (total - self._last[1])
                dt = now - self._last_update
                self._util = util
                self._busy_seconds += (busy - self._last[0]) / 100.0
                for z in self.zones:
                    if self.fixed_watts is not None:
                        self._watts[z] = self.fixed_watts.get(z, 0.0)
                    else:
                        self._watts[z] = FULL_LOAD_WATTS.get(z, 2.0) * util
                    self._joules[z] += self._watts[z] * dt
                    self._idle_joules[z] += IDLE_WATTS.get(z, 1.0) * dt
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
    def _family(self, families: list, name: str, kind: str, help_text: str, samples) -> None:
        """One metric family as client_golang writes it; counters are ``<name>_total`` in the text
        format and family ``<name>`` with ``<name>_total`` samples in OpenMetrics."""
        samples = list(samples)
        if not samples:  # Kepler's const-metric collectors write no family without samples
            return
        lines: list[str] = []
        families.append((name, lines))
        fam = name[:-6] if (self.openmetrics and kind == "counter" and name.endswith("_total")) else name
        lines.append(f"# HELP {fam} {help_text}")
        lines.append(f"# TYPE {fam} {kind}")
        sample_name = fam + "_total" if (self.openmetrics and kind == "counter") else name
        for labels, value in samples:
            text = ",".join(f'{k}="{_esc(str(v))}"' for k, v in sorted(labels.items()))
            lines.append(f"{sample_name}{{{text}}} {_num(value)}" if text else f"{sample_name} {_num(value)}")

    def _runtime_families(self, fams: list) -> None:
        """What Go's and the process collector add to every Kepler /metrics."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._family(fams, "go_goroutines", "gauge", "Number of goroutines that currently exist.",
                     [({}, threading.active_count())])
        self._family(fams, "go_info", "gauge", "Information about the Go environment.",
                     [({"version": "go1.23.10"}, 1)])
        self._family(fams, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
                     [({}, usage.ru_utime + usage.ru_stime)])
        self._family(fams, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                     [({}, usage.ru_maxrss * 1024)])

    def _exposition_010(self, fams, watts, joules, idle_joules, util, busy_s) -> None:
        node = {"node_name": self.node_name}
        self._family(fams, "kepler_build_info", "gauge",
                     "A metric with a constant '1' value labeled with version information",
                     [({"arch": "amd64", "branch": "", "goversion": "go1.23.10", "revision": "loopback",
                        "version": f"v{self.version}"}, 1)])
        self._family(fams, "kepler_node_cpu_info", "gauge", "CPU information from procfs",
                     [(c, 1) for c in self._cpu_info])
        idle_w = {z: IDLE_WATTS.get(z, 1.0) for z in self.zones}
        zl = {z: {**node, "path": RAPL_PATHS.get(z, ""), "zone": z} for z in self.zones}
        for name, kind, what, values in (
                ("kepler_node_cpu_active_joules_total", "counter", "Energy consumption of cpu in active state at node level in joules", joules),
                ("kepler_node_cpu_active_watts", "gauge", "Power consumption of cpu in active state at node level in watts", watts),
                ("kepler_node_cpu_idle_joules_total", "counter", "Energy consumption of cpu in idle state at node level in joules", idle_joules),
                ("kepler_node_cpu_idle_watts", "gauge", "Power consumption of cpu in idle state at node level in watts", idle_w),
                ("kepler_node_cpu_joules_total", "counter", "Energy consumption of cpu at node level in joules",
                 {z: joules[z] + idle_joules[z] for z in self.zones}),
                ("kepler_node_cpu_watts", "gauge", "Power consumption of cpu at node level in watts",
                 {z: watts[z] + idle_w[z] for z in self.zones})):
            self._family(fams, name, kind, what, [(zl[z], values[z]) for z in self.zones])
        self._family(fams, "kepler_node_cpu_usage_ratio", "gauge", "CPU usage ratio of a node (value between 0.0 and 1.0)",
                     [(node, util)])
        # processes: each running VM's qemu, and the rest of the host's activity
        rest = max(0.0, 1.0 - sum(vm.share for vm in self.vms if vm.state == "running"))
        procs = [(str(4000 + i), *QEMU, "vm", vm.vm_id, vm.share) for i, vm in enumerate(self.vms)
                 if vm.state == "running"]
        procs.append(("1", "systemd", "/usr/lib/systemd/systemd", "regular", "", rest))
        plabels = [{**node, "pid": pid, "comm": comm, "exe": exe, "type": typ, "container_id": "", "vm_id": vm_id}
                   for pid, comm, exe, typ, vm_id, _ in procs]
        for name, kind, what, values in (
                ("kepler_process_cpu_joules_total", "counter", "Energy consumption of cpu at process level in joules", joules),
                ("kepler_process_cpu_watts", "gauge", "Power consumption of cpu at process level in watts", watts)):
            self._family(fams, name, kind, what,
                         [({**pl, "state": "running", "zone": z}, values[z] * share)
                          for pl, (*_, share) in zip(plabels, procs) for z in self.zones])
        self._family(fams, "kepler_process_cpu_seconds_total", "counter",
                     "Total user and system time of cpu at process level in seconds",
                     [(pl, busy_s * max(share, 0.01)) for pl, (*_, share) in zip(plabels, procs)])
        vml = [{**node, "hypervisor": "kvm", "state": vm.state, "vm_id": vm.vm_id, "vm_name": vm.vm_name}
               for vm in self.vms]
        for name, kind, what, values in (
                ("kepler_vm_cpu_joules_total", "counter", "Energy consumption of cpu at vm level in joules", joules),
                ("kepler_vm_cpu_watts", "gauge", "Power consumption of cpu at vm level in watts", watts)):
            self._family(fams, name, kind, what,
                         [({**vl, "zone": z}, (values[z] * vm.share if vm.state == "running" or kind == "counter" else 0.0))
                          for vl, vm in zip(vml, self.vms) for z in self.zones])

    def _exposition_07(self, fams, joules, idle_joules, busy_s) -> None:
        def zone_joules(z: str, values: dict) -> float:
            if z in self.zones:
                return values[z]
            if z == "platform":  # the whole machine: more than package + dram
                return 1.3 * sum(values.get(k, 0.0) for k in ("package", "dram"))
            if z == "other":
                return 0.1 * values.get("package", 0.0)
            if z == "gpu":
                return 0.5 * values.get("package", 0.0)
            return 0.0  # CPU zones this hardware lacks: served, never moving

        def source(z: str) -> str:
            return "nvidia-nvml" if z == "gpu" else "rapl-sysfs"

        self._family(fams, "kepler_exporter_build_info", "gauge",
                     "A metric with a constant '1' value labeled by version, revision, branch, os and arch "
                     "from which kepler_exporter was built.",
                     [({"arch": "amd64", "branch": "", "os": "linux", "revision": "loopback",
                        "version": f"v{self.version}"}, 1)])
        self._family(fams, "kepler_node_info", "counter", "Aggregated value in info value from os",
                     [({"cpu_architecture": platform.machine() or "unknown", "components_power_source": "rapl-sysfs",
                        "platform_power_source": "none", "source": "os"}, 1)])
        running = [(i, vm) for i, vm in enumerate(self.vms) if vm.state == "running"]
        rest = max(0.0, 1.0 - sum(vm.share for _, vm in running))
        procs = [(str(4000 + i), QEMU[0], self.libvirt_id(i, vm), vm.share) for i, vm in running]
        procs.append(("1", "systemd", "", rest))
        for z in (z for z in ZONES_07 if z != "gpu" or self.gpu):
            src = {"source": source(z)}
            self._family(fams, f"kepler_node_{z}_joules_total", "counter",
                         f"Aggregated value in {z} value from {source(z)}",
                         [({**src, "instance": self.node_name, "mode": "dynamic", "package": "0"}, zone_joules(z, joules)),
                          ({**src, "instance": self.node_name, "mode": "idle", "package": "0"},
                           zone_joules(z, idle_joules))])
            self._family(fams, f"kepler_process_{z}_joules_total", "counter",
                         f"Aggregated value in {z} value from {source(z)}",
                         [({**src, "command": cmd, "container_id": "", "mode": mode, "pid": pid, "vm_id": vm_id},
                           zone_joules(z, values) * share)
                          for pid, cmd, vm_id, share in procs
                          for mode, values in (("dynamic", joules), ("idle", idle_joules))])
            self._family(fams, f"kepler_container_{z}_joules_total", "counter",
                         f"Aggregated value in {z} value from {source(z)}",
                         [({**src, "container_id": "system_processes", "container_name": "system_processes",
                            "container_namespace": "system", "mode": mode, "pod_name": "system_processes"},
                           zone_joules(z, values) * rest) for mode, values in (("dynamic", joules), ("idle", idle_joules))])
            # VMs get idle joules only where idle power estimation is on; a share of it here
            self._family(fams, f"kepler_vm_{z}_joules_total", "counter", f"Aggregated value in {z} value from {source(z)}",
                         [({**src, "mode": mode, "vm_id": self.libvirt_id(i, vm)}, zone_joules(z, values) * vm.share)
                          for i, vm in running for mode, values in (("dynamic", joules), ("idle", idle_joules))])
        bpf = {"source": "bpf"}
        self._family(fams, "kepler_process_bpf_cpu_time_ms_total", "counter", "Aggregated value in bpf_cpu_time_ms value from bpf",
                     [({**bpf, "command": cmd, "container_id": "", "pid": pid, "vm_id": vm_id}, 1000.0 * busy_s * max(share, 0.01))
                      for pid, cmd, vm_id, share in procs])
        self._family(fams, "kepler_vm_bpf_cpu_time_ms_total", "counter", "Aggregated value in bpf_cpu_time_ms value from bpf",
                     [({**bpf, "vm_id": self.libvirt_id(i, vm)}, 1000.0 * busy_s * vm.share) for i, vm in running])

    def exposition(self) -> tuple[bytes, str]:
        with self._lock:
            watts, joules, idle_joules = dict(self._watts), dict(self._joules), dict(self._idle_joules)
            util, busy_s = self._util, self._busy_seconds
        families: list = []
        self._runtime_families(families)
        if self.is_07:
            self._exposition_07(families, joules, idle_joules, busy_s)
        else:
            self._exposition_010(families, watts, joules, idle_joules, util, busy_s)
        # the registry's Gather() sorts families by name
        lines = [line for _, fam in sorted(families, key=lambda f: f[0]) for line in fam]
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
                if mode == "badstatus":  # not HTTP at all (e.g. something else listens there now)
                    self.wfile.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
                    self.close_connection = True
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
                    if mode == "truncate":  # Kepler dies mid-answer: half the promised body, then EOF
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
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
    """``python -m kepler_server --vm-name NAME [--port P] [--version 0.7]``"""
    import argparse
    import uuid

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vm-name", action="append", default=[])
    p.add_argument("--port", type=int, default=28283)
    p.add_argument("--version", default="0.10")
    p.add_argument("--openmetrics", action="store_true")
    p.add_argument("--update-interval", type=float, default=5.0)
    a = p.parse_args(argv)
    vms = [Vm(vm_id=str(uuid.uuid5(uuid.NAMESPACE_DNS, n)), vm_name=n) for n in (a.vm_name or ["vm"])]
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
