"""``vmpower predict`` (batch) and ``vmpower serve`` (Prometheus exporter): their commands.

The parts: vmpower.serving.artifact (loading and verifying an exported model),
vmpower.serving.live (the pipeline's feature contract, and ``LiveFeatures`` for serve),
vmpower.serving.selection (which model), vmpower.serving.fallback (the chain predict and serve
walk), vmpower.serving.exporter (serve's metrics and loop). Selection, the fallback chain,
confidence and the machine distance are documented in docs/deploy.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vmpower import argtypes
from vmpower.configcheck import check_file
from vmpower.errors import InputError
from vmpower.names import power_column
from vmpower.serving.artifact import Model, read_artifact, verify_manifest  # noqa: F401 (the command module names them too)
from vmpower.serving.fallback import DEFAULT_CONFIDENCE_THRESHOLD
from vmpower.serving.live import for_model, frame_features, load_settings, model_matrix, perf_inputs
from vmpower.serving.selection import DEFAULT_OUTPUT_TYPE

log = logging.getLogger("vmpower.serving.predict")


def predict_file(model, input_path: str | Path, settings, limits=None):
    """Per-sample watts per zone for a VM features file (JSON array or JSON Lines), one model."""
    import numpy as np
    import pandas as pd

    from vmpower.pipeline import ingest

    raw = ingest.read_vm_features(input_path, limits)
    settings = for_model(settings, model)
    feats, drop = frame_features(raw, settings)
    X = model_matrix(model, feats, drop, settings, raw.path)
    watts = model.predict(X)
    out = pd.DataFrame({c: raw.df[c] for c in ("timestamp_absolute", "timestamp_iso") if c in raw.df.columns})
    for j, zone in enumerate(model.zones):
        out[power_column(zone)] = watts[:, j]
    reason = pd.Series(pd.NA, index=out.index, dtype="string")
    incomplete = ~np.isfinite(X).all(axis=1)
    reason[incomplete] = drop[incomplete].fillna("missing_features")
    out["skip_reason"] = reason
    # The first sample never has rates (rate_warmup, as in training): not worth a warning.
    unexpected = incomplete & drop.ne("rate_warmup").fillna(True).to_numpy(bool)
    if unexpected.any():
        lacking = ~np.isfinite(X[unexpected]).all(axis=0)
        names = [f for f, bad in zip(model.features, lacking) if bad]
        log.warning("%s: %d of %d samples lack feature(s) %s: no watts for them", raw.path, int(unexpected.sum()),
                    len(out), ", ".join(names[:5]))
    return out


def write_output(out, line: str, target: Path | None) -> None:
    """CSV on stdout and the summary on stderr, or the frame into target (.csv or .parquet)."""
    import sys

    from vmpower.io import atomic_path, write_parquet

    if target is None:
        try:
            out.to_csv(sys.stdout, index=False, float_format="%.6f")
        except BrokenPipeError:  # e.g. piped into head
            pass
        print(line, file=sys.stderr)
        return
    if target.suffix == ".parquet":
        write_parquet(out, target)
    else:
        with atomic_path(target) as tmp:
            out.to_csv(tmp, index=False, float_format="%.6f")
    print(f"{line} -> {target}")


# ---------------------------------------------------------------- commands


def cmd_predict(args) -> int:
    from vmpower import limits as limits_mod
    from vmpower.serving import vmconfig
    from vmpower.serving.fallback import ChainSpec, predict_chain

    _cfg, resolved = vmconfig.apply(vars(args), "predict")  # the VM's config file (flags win)
    vars(args).update(resolved)
    if args.model_versions:  # the chain options; each version's path replaces the store's
        placeholder = ChainSpec.from_flags({**vars(args), "model": args.model_versions})
        args.model = vmconfig.pick_version(args.model_versions, placeholder)

    target = Path(args.output) if args.output else None
    if target is not None and target.suffix not in (".csv", ".parquet"):
        raise InputError(target, "output must end in .csv or .parquet")
    if args.config:  # a bad config fails first, in one line
        check_file(args.config)
    limits = limits_mod.load(args.config)
    # predict names its models in the output and summary: loading them is not news.
    models = ChainSpec.from_flags(vars(args)).load(level=logging.DEBUG, limits=limits)
    settings = [load_settings(args.config, m.metadata) for m in models]
    out, line = predict_chain(models, settings, args.input, threshold=args.confidence_threshold,
                              low_confidence=args.low_confidence, limits=limits)
    write_output(out, line, target)
    return 0


def _pinning(cfg) -> dict:
    """The config file's cpu_pinning settings (None: not set, so serve detects pinning from the
    guest's view)."""
    cpus = cfg.given_value("cpu_pinning.isolated_cpus")
    return {"enabled": cfg.given_value("cpu_pinning.enabled"), "isolated_cpus": None if cpus is None else list(cpus)}


def cmd_serve(args) -> int:
    import socket

    from vmpower import limits as limits_mod
    from vmpower.collect.common import stop_on_signals
    from vmpower.serving import reload, vmconfig
    from vmpower.serving.exporter import ServeOptions, run_exporter
    from vmpower.serving.fallback import ChainSpec
    from vmpower.serving.footprint import defer

    defer()  # pandas only when used: serve's live path does not (vmpower.serving.footprint)
    cfg, resolved = vmconfig.apply(vars(args), "serve")  # the VM's config file (flags win), KEPLER_VM_ENERGY_ENABLED
    vars(args).update(resolved)
    if args.config:  # a bad config fails first, in one line
        check_file(args.config)
    limits = limits_mod.load(args.config)
    if not cfg.enabled:
        from vmpower.serving.health import serve_disabled

        return serve_disabled(args.address, args.port, limits)
    use_perf = not args.no_perf
    if args.model_versions:  # live model updates with rollback (serving/reload.py)
        placeholder = ChainSpec.from_flags({**vars(args), "model": args.model_versions})
        models, make_exporter, spec = reload.start(args.model_versions, placeholder, cfg, limits, use_perf=use_perf)
        args.model = str(spec.request.model)  # the version serving first: its directory has the idle power
    else:
        spec = ChainSpec.from_flags(vars(args))
        models, make_exporter = spec.load(use_perf=use_perf, limits=limits), reload.static()
    settings = [load_settings(args.config, m.metadata) for m in models]
    if args.no_perf:
        for m, s in zip(models, settings):
            need = perf_inputs(s, m.features)
            if need:
                log.warning("%s needs perf counters (%s) and --no-perf is set: it will serve no zone", m.name,
                            ", ".join(need[:3]))
    options = ServeOptions(port=args.port, address=args.address, interval=args.interval,
                           node_name=args.node_name or socket.gethostname(), use_perf=use_perf,
                           kepler_url=args.kepler_url, threshold=args.confidence_threshold,
                           low_confidence=args.low_confidence, idle_source=args.model,
                           powercap_dir=args.powercap_dir, pinning=_pinning(cfg))
    if args.grpc:  # the same chain over TLS + token; ends with the process
        from vmpower.serving import grpc_bridge

        tls = grpc_bridge.files(cfg, cert_file=args.grpc_tls_cert, key_file=args.grpc_tls_key,
                                token_file=args.grpc_token_file)
        bridge = grpc_bridge.Options(spec, args.confidence_threshold, args.low_confidence, use_perf)
        grpc_bridge.serve(args.grpc, models, bridge, limits=limits, **tls)
    stoppers: list = []
    with stop_on_signals(lambda: [s() for s in stoppers]):
        run_exporter(models, settings, options, stop=stoppers, limits=limits, make_exporter=make_exporter)
    return 0


def _model_args(p) -> None:
    p.add_argument("--model", required=True,
                   help="exported model directory or .zip, or a results directory with best.json or model "
                        "archives (then selects)")
    p.add_argument("--node-type", help="with a results directory: the node_type whose best model to use")
    p.add_argument("--machine-spec", metavar="FILE",
                   help="with a results directory: machine_spec.json to match (default: read this machine)")
    p.add_argument("--output-type", default=DEFAULT_OUTPUT_TYPE, help="with a results directory (default: AbsPower)")
    p.add_argument("--feature-group", help="with a results directory (default: the group with the lowest MAE)")
    p.add_argument("--config", help="config.yaml the models were built with, for its ingest settings (default: the "
                        "settings recorded in the model's metadata.json, else ./config.yaml)")


def _chain_args(p) -> None:
    """The fallback chain's options: predict and serve walk the same chain (vmpower.serving.fallback)."""
    p.add_argument("--no-fallback", action="store_true",
                   help="with a results directory: use only the selected model (no fallback to other groups)")
    p.add_argument("--confidence-threshold", type=argtypes.fraction, default=DEFAULT_CONFIDENCE_THRESHOLD,
                   help="a model answers for a zone only if this share of its features lies inside its training "
                        "range (default: 0.7, the seed's validation.confidence_threshold)")
    p.add_argument("--low-confidence", choices=("report", "drop"), default="report",
                   help="when only models below the threshold have their features: report the first "
                        "anyway (default) or drop the zone (serve counts both in kepler_vm_low_confidence_total)")


def _serve_args(s) -> None:
    s.add_argument("--port", type=int, default=9102, help="HTTP port for /metrics (default: 9102)")
    s.add_argument("--address", default="0.0.0.0", help="bind address (default: 0.0.0.0)")
    s.add_argument("--interval", type=argtypes.positive, default=1.0, help="feature collection interval (default: 1.0 s)")
    s.add_argument("--node-name", help="node_name label (default: the host name)")
    s.add_argument("--no-perf", action="store_true",
                   help="do not read perf counters (their features are absent; selection skips models needing them)")
    s.add_argument("--kepler-url", default="none",
                   help="Kepler inside the VM for process CPU seconds (default: none)")


def register(sub: argparse._SubParsersAction) -> None:
    from vmpower.serving import vmconfig

    p = sub.add_parser("predict", help="per-zone watts for a VM features file with an exported ONNX model")
    _model_args(p)
    p.add_argument("--input", required=True, help="vm_features file (JSON array or JSON Lines)")
    p.add_argument("--output", help=".csv or .parquet (default: CSV on stdout)")
    _chain_args(p)
    vmconfig.add_arguments(p, "predict")
    p.set_defaults(func=cmd_predict)

    s = sub.add_parser("serve", help="Prometheus exporter: live VM features in, kepler_node_cpu_watts out")
    _model_args(s)
    _serve_args(s)
    _chain_args(s)
    s.add_argument("--powercap-dir", metavar="DIR",
                   help="keep a RAPL-shaped powercap tree of the modelled energy in DIR (use it as "
                        "/sys/class/powercap for RAPL readers; see docs/deploy.md)")
    from vmpower.serving.grpc_bridge import add_arguments as grpc_arguments

    grpc_arguments(s)
    vmconfig.add_arguments(s, "serve")
    s.set_defaults(func=cmd_serve)
