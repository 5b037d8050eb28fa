"""``vmpower serve --grpc ADDR``: EP-003's Python bridge, the gRPC ``PowerEstimationService``
(EstimatePower, LoadModels, GetModelInfo; src/vmpower/serving/proto/power_estimation.proto).

The bridge serves the same model chain as the exporter, loaded and selected by the same code as
``vmpower predict`` (vmpower.serving.fallback / selection), and answers each zone with the same
rule (``fallback.choose``: first model of the chain with all its inputs and a confidence at or
above the threshold, then ``low_confidence``). Requests give model features by name; hinge
features are computed from their base feature as the pipeline does.

Transport security is not optional: the server listens only with TLS (certificate and key
files) and refuses every call whose ``authorization`` metadata is not ``Bearer <token>`` (token
file; compared in constant time) with UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

from vmpower.errors import InputError
from vmpower.serving import fallback
from vmpower.serving.selection import ModelRequest

log = logging.getLogger("vmpower.serving.grpc_bridge")

MAX_MESSAGE_BYTES = 1 << 20  # a request is a few hundred named doubles
DEFAULT_WORKERS = 4


# ---------------------------------------------------------------- inference (no gRPC types)


def _row(model, features: dict[str, float]):
    """[1, n_features] float64 in the model's order; NaN for an absent or non-finite input.
    A hinge input left out is max(0, base - k)**2 of its base (pipeline.engineer.hinges)."""
    import numpy as np

    from vmpower.pipeline.engineer import hinge_base

    x = np.full((1, len(model.features)), np.nan)
    for j, name in enumerate(model.features):
        v = features.get(name)
        if v is None and (hb := hinge_base(name)) and features.get(hb[0]) is not None:
            v = float(np.square(np.maximum(float(features[hb[0]]) - hb[1], 0.0)))
        if v is not None and math.isfinite(v):
            x[0, j] = float(v)
    return x


def estimate(models, features: dict[str, float], *, threshold: float, low_confidence: str = "report") -> dict:
    """{"zone_watts", "zone_models", "confidence", "missing_features"} for one sample: per zone,
    the model ``fallback.choose`` picks (as predict does for a file's rows) answers."""
    import numpy as np

    xs = [_row(m, features) for m in models]
    ok = [bool(np.isfinite(x).all()) for x in xs]
    conf = [(m.confidence(x[0]) if good else None) for m, x, good in zip(models, xs, ok)]
    conf = [math.nan if c is None else c for c in conf]
    watts, who, used = {}, {}, []
    for zone in dict.fromkeys(z for m in models for z in m.zones):
        cands = [i for i, m in enumerate(models) if zone in m.zones]
        pick = int(fallback.choose(np.array([[ok[i] for i in cands]]), np.array([[conf[i] for i in cands]]),
                                   threshold, low_confidence)[0])
        if pick < 0:
            continue
        i = cands[pick]
        watts[zone] = float(fallback._infer(models[i], zone, xs[i])[0])
        who[zone] = fallback.label(models[i])
        used.append(1.0 if math.isnan(conf[i]) else conf[i])
    missing = [f for f, v in zip(models[0].features, xs[0][0]) if not math.isfinite(v)]
    return {"zone_watts": watts, "zone_models": who, "confidence": min(used) if used else 0.0,
            "missing_features": missing}


@dataclass(frozen=True)
class Options:
    """serve's options the bridge answers with: its chain (LoadModels resolves a directory like
    it, taking what the request omits from it), the confidence rule and whether perf is read."""

    chain: fallback.ChainSpec
    threshold: float
    low_confidence: str
    use_perf: bool


class Chain:
    """The served model chain, swapped whole by LoadModels (readers never see half a chain)."""

    def __init__(self, models, where: dict):
        self._lock = threading.Lock()
        self._models, self.where = list(models), dict(where)

    @property
    def models(self) -> list:
        with self._lock:
            return self._models

    def replace(self, models, where: dict) -> None:
        with self._lock:
            self._models, self.where = list(models), dict(where)


def load_chain(model_directory: str, base: Options, *, node_type: str = "", feature_group: str = "",
               output_type: str = "", limits=None):
    """The chain of an exported model or results directory, resolved like serve's --model (same
    selection and fallback code, serve's --config and --no-fallback); the output type the request
    omits is serve's."""
    request = ModelRequest(model=Path(model_directory), node_type=node_type or None, machine_spec=None,
                           output_type=output_type or base.chain.request.output_type,
                           feature_group=feature_group or None)
    return fallback.resolve_chain(request, base.chain.config, fallback=base.chain.fallback, use_perf=base.use_perf,
                                  limits=limits)


# ---------------------------------------------------------------- gRPC


def _servicer_class():
    from vmpower.serving.proto import power_estimation_pb2 as pb
    from vmpower.serving.proto import power_estimation_pb2_grpc as pbg

    class Servicer(pbg.PowerEstimationServiceServicer):
        def __init__(self, chain: Chain, base: Options, limits):
            self.chain, self.base, self.limits = chain, base, limits

        def EstimatePower(self, request, context):
            import grpc

            try:
                r = estimate(self.chain.models, dict(request.features), threshold=self.base.threshold,
                             low_confidence=self.base.low_confidence)
            except InputError as exc:
                context.abort(grpc.StatusCode.INTERNAL, str(exc))
            return pb.EstimationResponse(model_version=self.chain.models[0].version, **r)

        def LoadModels(self, request, context):
            if not request.model_directory:
                return pb.LoadModelsResponse(success=False, message="model_directory is empty")
            try:
                models = load_chain(request.model_directory, self.base, node_type=request.node_type,
                                    feature_group=request.feature_group, output_type=request.output_type,
                                    limits=self.limits)
            except InputError as exc:  # a bad model keeps the served one
                log.warning("LoadModels refused: %s", exc)
                return pb.LoadModelsResponse(success=False, message=str(exc))
            self.chain.replace(models, {"node_type": request.node_type})
            log.info("LoadModels: now serving %s", " > ".join(fallback.label(m) for m in models))
            return pb.LoadModelsResponse(success=True, message=" > ".join(fallback.label(m) for m in models),
                                         model_version=models[0].version)

        def GetModelInfo(self, request, context):
            models = self.chain.models
            first = models[0]
            chain = [pb.ChainModel(model_name=m.name, feature_group=m.labels[1], version=m.version, zones=m.zones,
                                   features=m.features) for m in models]
            return pb.ModelInfoResponse(
                model_name=first.name, model_version=first.version, zones=list(dict.fromkeys(
                    z for m in models for z in m.zones)), features=first.features, feature_group=first.labels[1],
                node_type=str(first.metadata.get("node_type", "")),
                output_type=str(first.metadata.get("output_type", "")), chain=chain)

    return Servicer


def _token_interceptor(token: bytes):
    import grpc

    expected = b"Bearer " + token

    def refuse(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    refusal = grpc.unary_unary_rpc_method_handler(refuse)

    class TokenInterceptor(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):
            got = next((v for k, v in details.invocation_metadata or () if k == "authorization"), "")
            got = got.encode() if isinstance(got, str) else bytes(got)
            if hmac.compare_digest(got, expected):
                return continuation(details)
            return refusal

    return TokenInterceptor()


def _read(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read the {what} ({exc.strerror or exc})") from None
    if not data.strip():
        raise InputError(path, f"the {what} is empty")
    return data


def start(address: str, chain: Chain, base: Options, *, cert_file, key_file, token_file, limits=None,
          workers: int = DEFAULT_WORKERS):
    """Start the TLS gRPC server on ``address`` (host:port; port 0 picks one). Returns
    (server, port); stop it with ``server.stop(grace)``."""
    from concurrent import futures

    import grpc

    from vmpower.serving.proto import power_estimation_pb2_grpc as pbg

    if not (cert_file and key_file and token_file):
        raise InputError(address, "--grpc needs --grpc-tls-cert, --grpc-tls-key and --grpc-token-file "
                                  "(the bridge serves only over TLS with a bearer token)")
    token = _read(token_file, "bearer token file").strip()
    creds = grpc.ssl_server_credentials([(_read(key_file, "TLS key"), _read(cert_file, "TLS certificate"))])
    opts = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc-bridge"),
                         interceptors=[_token_interceptor(token)], options=opts)
    pbg.add_PowerEstimationServiceServicer_to_server(_servicer_class()(chain, base, limits), server)
    try:
        port = server.add_secure_port(address, creds)
    except RuntimeError as exc:
        raise InputError(address, f"cannot listen for gRPC ({exc})") from None
    if not port:
        raise InputError(address, "cannot listen for gRPC (address in use or invalid)")
    server.start()
    log.info("gRPC PowerEstimationService on %s (TLS, bearer token), port %d", address, port)
    return server, port


# ---------------------------------------------------------------- serve's options


def add_arguments(parser) -> None:
    g = parser.add_argument_group("gRPC bridge (EP-003 PowerEstimationService)")
    g.add_argument("--grpc", metavar="ADDR", help="also serve PowerEstimationService on ADDR (host:port), TLS only")
    g.add_argument("--grpc-tls-cert", metavar="FILE", help="PEM certificate (chain) of the gRPC server")
    g.add_argument("--grpc-tls-key", metavar="FILE", help="PEM private key of the gRPC server")
    g.add_argument("--grpc-token-file", metavar="FILE",
                   help="file holding the bearer token clients send as 'authorization: Bearer <token>'")


# vm-energy-config python_server keys giving the bridge its TLS files and token (no flag given).
FILE_KEYS = {"cert_file": "python_server.tls_cert_file", "key_file": "python_server.tls_key_file",
             "token_file": "python_server.bearer_token_file"}


def files(cfg, *, cert_file: str | None, key_file: str | None, token_file: str | None) -> dict:
    """start's cert_file, key_file and token_file: the flags' (--grpc-tls-cert, --grpc-tls-key,
    --grpc-token-file), else the config file's (``cfg``: vmpower.serving.vmconfig.VMConfig)."""
    given = {"cert_file": cert_file, "key_file": key_file, "token_file": token_file}
    return {k: cfg.given_value(FILE_KEYS[k]) if v is None else v for k, v in given.items()}


def serve(address: str, models, base: Options, *, limits=None, **tls):
    """serve's bridge on ``address`` (--grpc) serving ``models`` (the exporter's chain); ``tls``:
    ``files``. Returns the server (it ends with the process)."""
    chain = Chain(models, {"node_type": base.chain.request.node_type or ""})
    server, _port = start(address, chain, base, limits=limits, **tls)
    return server
