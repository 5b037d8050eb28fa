"""This machine's hardware, as machine_spec.json records it and model selection matches it."""

from __future__ import annotations

import os


def machine_spec() -> dict:
    """The host hardware for machine_spec.json: processor, cores, chips, memory (GiB), frequency (MHz)."""
    import psutil

    processor, chips, mhz = "", set(), None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "model name" and not processor:
                    processor = val
                elif key == "physical id":
                    chips.add(val)
                elif key == "cpu MHz" and mhz is None:
                    mhz = float(val)
    except OSError:
        pass
    freq = None
    try:
        f = psutil.cpu_freq()
        freq = (f.max or f.current) if f else None
    except Exception:  # not available in some VMs/containers
        freq = None
    freq = freq or mhz
    return {
        "processor": processor or os.uname().machine,
        "cores": psutil.cpu_count(logical=False) or psutil.cpu_count() or 1,
        "chips": max(1, len(chips)),
        "memory": round(psutil.virtual_memory().total / 1024 ** 3),
        "frequency": round(freq) if freq else None,
    }
