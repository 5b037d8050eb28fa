"""The ``vmpower`` command. Each stage module registers its own subcommand(s).

Stage modules keep heavy imports (pandas, sklearn, onnx, ...) inside functions so that
``vmpower --help`` and every job start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vmpower.errors import InputError

# Modules that provide subcommands, in help order. Each defines ``register(subparsers)``
# which adds parsers and sets ``func`` (called with the parsed args; returns an exit code).
STAGE_MODULES = (
    "vmpower.merge",
    "vmpower.isolate",
    "vmpower.train",
    "vmpower.export",
    "vmpower.report",
    "vmpower.synth",
    "vmpower.collect",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmpower", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--provenance", metavar="FILE", help="after success, record where the step ran (image digest, packages) here"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # stage not present in this checkout
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
            from vmpower import provenance
            from vmpower.io import write_json

            write_json({"command": args.command, "environment": provenance.environment()}, args.provenance)
        return code
    except InputError as err:
        print(f"vmpower {args.command}: error: {err}", file=sys.stderr)
        return 2
