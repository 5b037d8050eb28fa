"""``vmpower validate``: accuracy validation and drift detection of a running VM exporter.

Compares what ``vmpower serve`` in a VM published with what the host's Kepler measured for that
VM over the same window, per zone (MAE, MAPE, bias = mean of exporter - host, matched samples),
against the thresholds of config.yaml's ``validate`` section. Exit codes: 0 every compared zone
within the thresholds, 3 drift in at least one zone (for cron or CI to trigger retraining), 2 bad
input or too few matched samples (one line). Sources and alignment: validate_sources,
validate_align.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from vmpower import argtypes
from vmpower.errors import InputError

log = logging.getLogger("vmpower.validate")

EXIT_DRIFT = 3


def compare(exporter, host, cfg) -> dict:
    """The report of two ``Series`` (validate_sources) under ``ValidateSettings``."""
    from vmpower.serving.validate_align import best_shift, pair, score

    zones = [z for z in exporter.zones if z in host.zones]
    if not zones:
        raise InputError(exporter.name, f"no zone in common with {host.name} (exporter: "
                                        f"{','.join(exporter.zones) or 'none'}; host: {','.join(host.zones) or 'none'})")
    shift = best_shift(exporter.frame, host.frame, zones, cfg.bin_seconds, cfg.max_clock_skew_seconds)
    got = pair(exporter.frame, host.frame, zones, cfg.bin_seconds, shift)
    if got is None:
        raise InputError(exporter.name, f"its time range does not overlap {host.name}'s")
    e, h, counts = got
    zones_scored = score(e, h, cfg)
    verdicts = {r["verdict"] for r in zones_scored.values()}
    verdict = "drift" if "drift" in verdicts else ("insufficient" if verdicts == {"insufficient"} else "ok")
    return {
        "verdict": verdict,
        "zones": zones_scored,
        "zones_exporter_only": [z for z in exporter.zones if z not in host.zones],
        "zones_host_only": [z for z in host.zones if z not in exporter.zones],
        "alignment": {"bin_seconds": cfg.bin_seconds, "clock_offset_seconds": shift,
                      "max_clock_skew_seconds": cfg.max_clock_skew_seconds, **counts},
        "thresholds": {"max_mape_percent": cfg.max_mape_percent, "max_abs_bias_watts": cfg.max_abs_bias_watts,
                       "min_samples": cfg.min_samples, "mape_min_watts": cfg.mape_min_watts},
        "sources": {"exporter": {"source": exporter.name, **exporter.notes},
                    "host": {"source": host.name, **host.notes}},
    }


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def text_report(rep: dict) -> str:
    a = rep["alignment"]
    lines = [f"validate: {rep['verdict'].upper()}  ({a['matched_bins']} matched {a['bin_seconds']:g} s bins over "
             f"{a['overlap_seconds']:g} s, exporter clock offset {a['clock_offset_seconds']:+.2f} s)",
             f"{'zone':<8} {'samples':>7} {'MAE W':>8} {'MAPE %':>8} {'bias W':>8} {'host W':>8}  verdict"]
    for zone, r in rep["zones"].items():
        lines.append(f"{zone:<8} {r['samples']:>7} {_num(r['mae_watts'], '8.3f')} {_num(r['mape_percent'], '8.2f')} "
                     f"{_num(r['bias_watts'], '+8.3f')} {_num(r['host_mean_watts'], '8.3f')}  {r['verdict']}"
                     + (f" ({'; '.join(r['reasons'])})" if r["reasons"] else ""))
    for key, what in (("zones_exporter_only", "only the exporter has"), ("zones_host_only", "only the host has")):
        if rep[key]:
            lines.append(f"not compared: {what} {', '.join(rep[key])}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where validate's two series come from (its command line): a URL is scraped for
    ``duration`` s every ``interval`` s (None: the validate section's), a file is read."""

    exporter: str
    host: str
    vm_name: list[str]
    vm_pattern: list[str]
    duration: float | None
    interval: float | None
    save_exporter: str | None
    save_host: str | None


def _sources(src: Sources, cfg):
    from vmpower import limits
    from vmpower.collect.kepler import VmFilter
    from vmpower.serving import validate_sources as vs

    lim = limits.defaults()
    live = {k: v for k, v in (("exporter", src.exporter), ("host", src.host)) if vs.is_url(v)}
    if live and not (src.vm_name or src.vm_pattern) and "host" in live:
        log.info("no --vm-name: summing every running VM Kepler reports")
    got = {}
    if live:
        scraper = vs.Scraper(live.get("exporter"), live.get("host"), VmFilter.of(src.vm_name, src.vm_pattern),
                             cfg.exporter_series, lim.max_http_response_bytes)
        window = src.duration or cfg.window_seconds
        interval = src.interval or cfg.scrape_interval_seconds
        log.info("scraping %s for %g s every %g s", ", ".join(live.values()), window, interval)
        got = scraper.run(window, interval)
    exporter = got.get("exporter") or vs.exporter_file(src.exporter)
    host = got.get("host") or vs.host_file(src.host, lim)
    if src.save_exporter:
        vs.save(exporter, src.save_exporter, "power_")
    if src.save_host:
        vs.save(host, src.save_host, "total_cpu_watts_")
    return exporter, host


def cmd_validate(args) -> int:
    from vmpower import settings
    from vmpower.io import write_json
    from vmpower.paths import CONFIG
    from vmpower.serving.validate_align import ValidateSettings

    config = args.config or CONFIG
    cfg = ValidateSettings.build(settings.load(config)["validate"], str(config))
    overrides = {k: v for k, v in (("bin_seconds", args.bin_seconds), ("max_clock_skew_seconds", args.max_clock_skew),
                                   ("exporter_series", args.exporter_series)) if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    exporter, host = _sources(Sources(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Sources)}), cfg)
    rep = compare(exporter, host, cfg)
    if args.json:
        write_json(rep, args.json)
    print(text_report(rep))
    if rep["verdict"] == "insufficient":
        raise InputError(exporter.name, f"fewer than validate.min_samples ({cfg.min_samples}) matched samples in "
                                        "every zone: run longer or lower bin_seconds")
    return EXIT_DRIFT if rep["verdict"] == "drift" else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="compare a VM exporter's watts with the host Kepler's (drift: exit 3)",
                       description=sys.modules[__name__].__doc__.split("\n\n")[1])
    p.add_argument("--exporter", required=True, metavar="URL|FILE",
                   help="the VM's `vmpower serve` /metrics URL (scraped), or a file of its watts "
                        "(timestamp_absolute + power_<zone> or joules_<zone>: --save-exporter, predict output)")
    p.add_argument("--host", required=True, metavar="URL|FILE",
                   help="the host Kepler's /metrics URL, or the `vmpower collect host` output (.csv/.json)")
    p.add_argument("--vm-name", action="append", default=[], help="the VM as Kepler names it (exact; repeatable)")
    p.add_argument("--vm-pattern", action="append", default=[], help="glob on Kepler's VM names (repeatable)")
    p.add_argument("--duration", type=argtypes.positive, help="live: seconds to scrape (default: validate.window_seconds)")
    p.add_argument("--interval", type=argtypes.positive, help="live: seconds between scrapes "
                                                      "(default: validate.scrape_interval_seconds)")
    p.add_argument("--bin-seconds", type=argtypes.positive, help="override validate.bin_seconds")
    p.add_argument("--max-clock-skew", type=argtypes.non_negative, help="override validate.max_clock_skew_seconds (0: no search)")
    p.add_argument("--exporter-series", choices=("joules", "watts"), help="override validate.exporter_series")
    p.add_argument("--config", help="config.yaml with the validate thresholds (default: the checkout's)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--save-exporter", metavar="FILE", help="write the exporter's watts (CSV) for a later offline run")
    p.add_argument("--save-host", metavar="FILE", help="write the host's watts (CSV, collector columns)")
    p.set_defaults(func=cmd_validate)
