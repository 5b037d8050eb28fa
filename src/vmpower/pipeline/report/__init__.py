"""The build report.

* ``vmpower report``: a plain-text report (results/report.md);
* ``vmpower report-quality`` / ``report-models`` / ``report-provenance``: per node_type figures
  (matplotlib, PNG) and HTML tables for ``snakemake --report results/report.html`` (rules in
  rules/report.smk, captions in report/*.rst): data quality per run, predicted vs measured
  power on held-out runs, residuals, the metrics of every trainer and feature group, feature
  importance of the tree models, and the provenance (image digests, lock hashes, input
  checksums);
* ``vmpower report-paths`` for ``make run``.

Figures are deterministic: the Agg backend, fixed fonts and styles, no dates or software
version in the PNG metadata, so rebuilding gives the same bytes.
"""

from __future__ import annotations

import argparse

from vmpower.pipeline.report import markdown, models, paths, provenance, quality


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the markdown build report")
    p.add_argument("--summary", required=True)
    p.add_argument("--best", required=True)
    p.add_argument("--datasets", nargs="*", default=[])
    p.add_argument("--isolation", nargs="*", default=[])
    p.add_argument("--layout-problems", nargs="*", default=[], help="one line per broken run (not built)")
    p.add_argument("--pinning", nargs="*", default=[], help="the node_types' pinning sections (vmpower pinning --markdown)")
    p.add_argument("--output", required=True)
    p.set_defaults(func=markdown.cmd_report)

    r = sub.add_parser("report-quality", help="data quality per run of a node_type: figure and table")
    r.add_argument("--node-type", required=True)
    r.add_argument("--quality", nargs="+", required=True, help="the runs' .quality.json files")
    r.add_argument("--figure", required=True, help="PNG")
    r.add_argument("--table", required=True, help="HTML")
    r.set_defaults(func=quality.cmd_quality)

    m = sub.add_parser("report-models", help="held-out predictions, residuals, feature importance, metrics of a node_type")
    m.add_argument("--node-type", required=True)
    m.add_argument("--summary", required=True)
    m.add_argument("--best", required=True)
    m.add_argument("--holdouts", nargs="*", default=[], help="results/train/<nt>/<ot>/<fg>/<trainer>/holdout.parquet")
    m.add_argument("--tree-models", nargs="*", default=[], help="model.joblib of the tree trainers")
    m.add_argument("--heldout-figure", required=True)
    m.add_argument("--residuals-figure", required=True)
    m.add_argument("--importance-figure", required=True)
    m.add_argument("--metrics-table", required=True)
    m.set_defaults(func=models.cmd_models)

    v = sub.add_parser("report-provenance", help="image digests, lock hashes and input checksums of a node_type")
    v.add_argument("--node-type", required=True)
    v.add_argument("--inputs", nargs="*", default=[], help="the node_type's raw files")
    v.add_argument("--records", nargs="*", default=[], help="the node_type's job provenance records")
    v.add_argument("--locks", nargs="*", default=[], help="environment lock files")
    v.add_argument("--image-lock", default=None, help="containers/images.lock.json")
    v.add_argument("--json", required=True)
    v.add_argument("--html", required=True)
    v.set_defaults(func=provenance.cmd_provenance)

    q = sub.add_parser("report-paths", help="print where the models, metrics and report are")
    q.add_argument("--config", default="config.yaml")
    q.set_defaults(func=paths.cmd_paths)
