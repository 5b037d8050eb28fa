"""The ``vmpower`` command (the CLI layer). Each stage module registers its own subcommand(s);
the collectors' subcommands are in vmpower.cli.collect.

Stage modules keep heavy imports (pandas, sklearn, onnx, ...) inside functions so that
``vmpower --help`` and every job start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# One BLAS/OpenMP thread per job, set before numpy loads: results must not depend on how many
# cores a job gets (`--cores 1` and `--cores 2` give the same bytes), and Snakemake already runs
# jobs in parallel, so threaded BLAS would only oversubscribe the CPUs.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from vmpower.errors import InputError

# Subcommand -> module that registers it (``register(subparsers)``, setting ``func``, which is
# called with the parsed args and returns an exit code). A job imports only its own module, so
# the collectors run where the pipeline's libraries are not installed, and steps start faster.
COMMANDS = {
    "merge": "vmpower.pipeline.merge",
    "merge-dataset": "vmpower.pipeline.merge",
    "isolate": "vmpower.pipeline.isolate",
    "train": "vmpower.pipeline.train",
    "train-cross": "vmpower.pipeline.cross_node_type",
    "export": "vmpower.pipeline.export",
    "select": "vmpower.pipeline.selection",
    "summary": "vmpower.pipeline.selection",
    "export-kepler-db": "vmpower.pipeline.kepler_db",
    "report": "vmpower.pipeline.report",
    "report-paths": "vmpower.pipeline.report",
    "synth": "vmpower.demo.synth",
    "collect": "vmpower.cli.collect",
    "check-images": "vmpower.ops.runtime",
    "check-layout": "vmpower.pipeline.layout",
    "predict": "vmpower.serving.predict",
    "serve": "vmpower.serving.predict",
    "validate": "vmpower.serving.validate",
    "sign": "vmpower.serving.signing",
    "gate": "vmpower.ops.gate",
    "accept-models": "vmpower.ops.gate",
    "changelog": "vmpower.ops.gate",
    "worker": "vmpower.ops.worker",
    "report-quality": "vmpower.pipeline.report",
    "report-models": "vmpower.pipeline.report",
    "report-provenance": "vmpower.pipeline.report",
    "pinning": "vmpower.pipeline.pinning",
}


def _global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--provenance", metavar="FILE", help="after success, record where the step ran (image digest, packages) here"
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmpower", description="Build Kepler power models for VMs from paired VM-feature / host-power runs."
    )
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in wanted:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if command is None or exc.name == name:
                continue  # help listing: skip stages whose libraries are not installed here
            raise
        module.register(sub)
    return parser


def command_of(argv: list[str] | None) -> str | None:
    """The subcommand a command line names (None: none), without importing any stage."""
    pre = argparse.ArgumentParser(add_help=False)
    _global_options(pre)
    pre.add_argument("command", nargs="?")
    known, _ = pre.parse_known_args(argv)
    return known.command


def main(argv: list[str] | None = None) -> int:
    from vmpower import lifeline

    lifeline.arm()  # inside a build: this step dies with it (no-op otherwise)
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        if code == 0 and args.provenance:
            from vmpower.ops import provenance
            from vmpower.io import write_json

            write_json({"command": args.command, "environment": provenance.environment()}, args.provenance)
        return code
    except InputError as err:
        print(f"vmpower {args.command}: error: {err}", file=sys.stderr)
        return 2
