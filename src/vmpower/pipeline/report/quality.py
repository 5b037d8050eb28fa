"""``vmpower report-quality``: data quality per run of a node_type (figure and table)."""

from __future__ import annotations

import json
from pathlib import Path

from vmpower.io import write_text
from vmpower.pipeline.report.html import html_page, html_table, pyplot, save_png


def quality_rows(quality_files: list[str]) -> list[dict]:
    rows = []
    for p in sorted(quality_files):
        q = json.loads(Path(p).read_text())
        rows.append({"run": Path(p).name.removesuffix(".quality.json"), **q})
    return rows


def _clock_offset(q: dict) -> float:
    """Guest clock offset used for a run: configured plus estimated (kepler_interval)."""
    return float(q.get("vm_clock_offset_seconds") or 0.0) + float((q.get("kepler") or {}).get("clock_offset_seconds") or 0.0)


def plot_quality(nt: str, rows: list[dict], path) -> None:
    """Per run: match rate, time differences, rows kept and dropped, clocks."""
    plt = pyplot()
    runs = [r["run"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.4), constrained_layout=True,
                             gridspec_kw={"width_ratios": [1, 1, 1, 0.8]})
    x = list(range(len(runs)))
    ax = axes[0]
    ax.bar(x, [100.0 * (r.get("match_rate") or 0.0) for r in rows], color="#1f77b4")
    ax.set_ylim(0, 105)
    ax.set_title("match rate: VM samples with host power (%)")
    ax = axes[1]
    w = 0.38
    ax.bar([i - w / 2 for i in x], [r.get("time_diff_mean") or 0.0 for r in rows], w, label="mean", color="#2ca02c")
    ax.bar([i + w / 2 for i in x], [r.get("time_diff_max") or 0.0 for r in rows], w, label="max", color="#ff7f0e")
    ax.set_title("VM sample vs host reading time difference (s)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.30), ncol=2, fontsize=7, frameon=False)
    ax = axes[2]
    reasons = sorted({k for r in rows for k in (r.get("rows_dropped") or {})})
    bottom = [float(r.get("rows_kept") or 0) for r in rows]
    ax.bar(x, bottom, color="#7f7f7f", label="kept")
    cmap = plt.get_cmap("tab10")
    for n, reason in enumerate(reasons):
        vals = [float((r.get("rows_dropped") or {}).get(reason, 0)) for r in rows]
        ax.bar(x, vals, bottom=bottom, color=cmap((n + 3) % 10), label=f"dropped: {reason}")
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title("rows kept and dropped (by reason)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.30), ncol=2, fontsize=7, frameon=False)
    ax = axes[3]
    w3 = 0.26
    ax.bar([i - w3 for i in x], [(r.get("vm_utc_offset_seconds") or 0.0) / 3600.0 for r in rows], w3,
           label="guest UTC offset (h)", color="#17becf")
    ax.bar(x, [_clock_offset(r) for r in rows], w3, label="guest clock offset (s)", color="#bcbd22")
    ax.bar([i + w3 for i in x], [(r.get("lag") or {}).get("lag_seconds") or 0.0 for r in rows], w3,
           label="label lag per sample (s)", color="#9467bd")
    ax.set_title("clocks: UTC offset, clock offset, label lag")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.30), ncol=2, fontsize=7, frameon=False)
    for ax in axes:
        ax.set_xticks(x, runs, rotation=30, ha="right")
    fig.suptitle(f"{nt}: data quality per run")
    save_png(fig, path)


def quality_table(nt: str, rows: list[dict], path) -> None:
    """The per-run quality numbers and warnings (HTML)."""
    header = ["run", "time base", "alignment", "VM samples", "rows kept", "match rate", "mean time diff (s)",
              "max time diff (s)", "guest UTC offset (s)", "guest clock offset (s)", "label lag (s)", "overlap (s)",
              "dropped", "warnings"]
    table = [
        [r["run"], r.get("time_base", "-"), r.get("alignment", "-"), r.get("vm_samples"), r.get("rows_kept"),
         r.get("match_rate"), r.get("time_diff_mean"), r.get("time_diff_max"), r.get("vm_utc_offset_seconds"),
         _clock_offset(r), (r.get("lag") or {}).get("lag_seconds"), r.get("overlap_seconds"),
         ", ".join(f"{k}={v}" for k, v in sorted((r.get("rows_dropped") or {}).items())) or "-",
         "; ".join(r.get("warnings") or []) or "-"]
        for r in rows
    ]
    body = [
        "<p>Per run: how many VM samples found host power (match rate), the time difference between a "
        "VM sample and the host readings it was paired with (with <code>kepler_interval</code> alignment: "
        "the uncertainty of Kepler's update times), the guest's UTC offset, the guest clock offset "
        "(configured <code>merge.vm_clock_offset_seconds</code> plus the offset estimated per run), how "
        "late the labels are against the per-sample features (cross-correlation), the rows or "
        "intervals dropped with their reasons, and the run's warnings (<code>merge.quality_warnings</code>: "
        "the seed's match-rate and time-difference indicators, repaired rows, dropped features).</p>",
        html_table(header, table, left=3),
    ]
    write_text(html_page(f"{nt}: data quality per run", body), path)


def cmd_quality(args) -> int:
    rows = quality_rows(args.quality)
    plot_quality(args.node_type, rows, args.figure)
    quality_table(args.node_type, rows, args.table)
    return 0
