"""serve's CPU pinning metrics (EP-003 FR5, "CPU pinning and isolation metrics"), from the guest's view.

* ``kepler_vm_cpu_pinning_enabled``: the ``cpu_pinning.enabled`` setting when given; otherwise
  detected: 1 when steal time stayed 0 over the last ``window`` samples (the host never ran
  something else on these vCPUs: dedicated cores), 0 when it did. Not published before
  ``min_samples`` samples, nor when the guest kernel reports no steal time.
* ``kepler_vm_cpu_isolation_ratio``: the share of the guest's online CPUs isolated from the
  scheduler: ``cpu_pinning.isolated_cpus`` when given, else the kernel's isolcpus list
  (/sys/devices/system/cpu/isolated).
* ``kepler_vm_pinning_recommendation_score``: the EP's score (vmpower.pipeline.pinning) of the
  live window: steal-time and context-switch variability (the model-residual term needs host
  power and scores 0 here; ``vmpower pinning`` adds it offline).
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

from vmpower.pipeline.pinning import recommend, window_metrics

ISOLATED = Path("/sys/devices/system/cpu/isolated")


def parse_cpu_list(text: str) -> set[int]:
    """The kernel's CPU list format ("0-3,8,10-11"; empty: none)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def isolation_ratio(isolated_cpus=None, isolated_file: Path = ISOLATED, online: int | None = None) -> float:
    """Isolated CPUs / online CPUs (configured list first, else the kernel's)."""
    online = online or os.cpu_count() or 1
    if isolated_cpus is None:
        try:
            isolated_cpus = parse_cpu_list(isolated_file.read_text())
        except (OSError, ValueError):
            isolated_cpus = set()
    return min(1.0, len(set(isolated_cpus)) / online)


class PinningMonitor:
    """Keeps the last ``window`` live samples and publishes the three pinning gauges."""

    def __init__(self, registry, *, enabled: bool | None = None, isolated_cpus=None, window: int = 60,
                 min_samples: int = 10, isolated_file: Path = ISOLATED):
        from prometheus_client import Gauge

        self.configured, self.min_samples, self.registry = enabled, min_samples, registry
        self.samples: deque = deque(maxlen=window)
        self.enabled = None  # registered once known: an unknown state is no series, not a 0
        self.isolation = Gauge("kepler_vm_cpu_isolation_ratio",
                               "Share of the guest's online CPUs isolated from the scheduler", registry=registry)
        self.score = Gauge("kepler_vm_pinning_recommendation_score",
                           "EP-003's pinning recommendation score of the live window (0..1; > 0.5: pin)",
                           registry=registry)
        self.isolation.set(isolation_ratio(isolated_cpus, isolated_file))
        if enabled is not None:
            self._set_enabled(enabled)

    def _set_enabled(self, pinned: bool) -> None:
        from prometheus_client import Gauge

        if self.enabled is None:
            self.enabled = Gauge("kepler_vm_cpu_pinning_enabled", "1 if the VM's vCPUs are pinned "
                                 "(cpu_pinning.enabled, or no steal time over the window)", registry=self.registry)
        self.enabled.set(1 if pinned else 0)

    def update(self, record: dict) -> None:
        """One live collector record (cpu_steal and cpu_utilization in %, sys_context_switches_rate)."""
        def num(key):
            v = record.get(key)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")

        self.samples.append((num("cpu_steal"), num("cpu_utilization"), num("sys_context_switches_rate")))
        if len(self.samples) < self.min_samples:
            return
        steal, util, cs = zip(*self.samples)
        metrics = window_metrics(steal, util, cs)
        self.score.set(recommend(metrics)["confidence"])
        if self.configured is None and metrics["steal_mean"] is not None:
            self._set_enabled(max(s for s in steal if s == s) == 0)
