"""``vmpower report-paths``: where ``make run`` put the models, metrics and report."""

from __future__ import annotations

from pathlib import Path

from vmpower import settings
from vmpower.errors import InputError


def cmd_paths(args) -> int:
    cfg = settings.load(args.config)
    if "results_dir" not in cfg:
        raise InputError(args.config, "no results_dir: not a workflow config")
    res = Path(cfg["results_dir"])
    print("vmpower build finished:")
    print(f"  models (ONNX + Kepler archives): {res / 'models'}/<output_type>/<feature_group>/")
    print(f"  best models:                     {res / 'best.json'}")
    print(f"  metrics of every model:          {res / 'summary.csv'}")
    print(f"  report:                          {res / 'report.md'}")
    print(f"  HTML report (figures):           snakemake --report {res / 'report.html'}")
    return 0
