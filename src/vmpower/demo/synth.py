"""``vmpower synth``: write the built-in demo data set as raw runs in the collectors' formats.

Latent load signals per workload phase drive both the guest features and the true per-zone
active power; the host file carries Kepler's view of that power (5 s updates, lagging, noisy,
first reading 0). docs/demo-data.md documents the generating model and the noise floor.
Everything is derived from the ``synth:`` section of the config and its seed: the same config
gives byte-identical files, and unchanged files are not rewritten (Snakemake sees no change).

The demo package: config.py (the synth: section), simulate.py (latent load, true power),
session.py and guest.py (one collection session), formats.py (file writers), generate.py (the
driver and its profiles), legacy.py and legacy_model.py (the seed collectors' format).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from vmpower.errors import InputError

log = logging.getLogger(__name__)
NOISE_TABLE_ZONES = ("package", "core", "dram", "uncore")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write the built-in demo data set (raw runs in the collectors' formats)",
        description="Generate demo runs (<out>/<node_type>/<run_id>/) from the config's synth: section.",
    )
    p.add_argument("--config", required=True, action="append",
                   help="config.yaml with a synth: section; repeat to overlay files (later ones win, "
                        "dicts merge key by key as in snakemake --configfile a b)")
    p.add_argument("--out", required=True, help="raw data directory, e.g. data/raw")
    p.add_argument("--seed", type=int, default=None, help="override synth.seed")
    p.add_argument("--node-type", action="append", default=None, dest="node_types",
                   help="generate only this node_type of synth.node_types (repeatable)")
    p.add_argument("--noise-table", action="store_true",
                   help="also print the noise-floor table of docs/demo-data.md (Markdown) for the data written")
    p.set_defaults(func=cmd_synth)


def noise_floor_table(out: Path, node_types: list[str], zones: list[str]) -> str:
    """The Markdown noise-floor table of docs/demo-data.md, from the synth_noise_floor.json files."""
    lines = ["| node_type | zone | σ (W) | noise floor MAE (W) | empirical | window-truth MAE | label mean | label max |",
             "|---|---|---|---|---|---|---|---|"]
    for nt in node_types:
        floor = json.loads((out / nt / "synth_noise_floor.json").read_text())["zones"]
        for z in (z for z in zones if z in floor):  # legacy node_types have core and package only
            f = floor[z]
            lines.append(f"| {nt} | {z} | {f['sigma_watts']:g} | {f['noise_floor_mae_watts']:.3f} | "
                         f"{f['empirical_noise_mae_watts']:.3f} | {f['window_truth_mae_watts']:.2f} | "
                         f"{f['label_mean_watts']:.1f} | {f['label_max_watts']:.1f} |")
    return "\n".join(lines) + "\n"


def select(cfg: dict, seed: int | None, node_types: list[str] | None, where: str) -> dict:
    """The config with --seed and --node-type applied (one-line errors naming ``where``)."""
    cfg = dict(cfg)
    if seed is not None:
        if seed < 0:
            raise InputError(where, "--seed must be >= 0")
        cfg["seed"] = seed
    if node_types:
        unknown = sorted(set(node_types) - set(cfg["node_types"]))
        if unknown:
            raise InputError(where, f"--node-type: no such synth.node_types entry: {', '.join(unknown)}")
        cfg["node_types"] = {k: v for k, v in cfg["node_types"].items() if k in node_types}
    return cfg


def cmd_synth(args: argparse.Namespace) -> int:
    import time

    from vmpower.demo.config import load_config
    from vmpower.demo.generate import generate

    cfg = select(load_config(args.config), args.seed, args.node_types, args.config[-1])
    t0 = time.perf_counter()
    summary = generate(cfg, Path(args.out))
    log.info(
        "synth: %d node types, %d runs, %d VM samples, %d host samples; %d files written, "
        "%d unchanged, %d stale removed (%.1f s)",
        summary["node_types"], summary["runs"], summary["vm_rows"], summary["host_rows"],
        summary["written"], summary["unchanged"], summary["removed"], time.perf_counter() - t0,
    )
    if args.noise_table:
        print(noise_floor_table(Path(args.out), list(cfg["node_types"]), list(NOISE_TABLE_ZONES)), end="")
    return 0
