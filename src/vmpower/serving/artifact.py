"""An exported model as serving loads it: the archive's files (directory or .zip), their
integrity (``manifest.sha256``), its ``metadata.json`` and one onnxruntime session per zone.

Only onnxruntime and ``metadata.json`` are used (feature order, zones, training ranges), never
pickles. Every load verifies the manifest and the consistency of metadata and ONNX graphs first;
a tampered or mismatched model is refused with a one-line InputError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vmpower.errors import InputError
from vmpower.names import MANIFEST

# The exported-model format (manifest, bounded reads) is the pipeline's: one definition.
from vmpower.pipeline.artifact import read_model_files, verify_manifest  # noqa: E402,F401
from vmpower.pipeline.selection import USABLE_STATUSES  # noqa: E402


def usable_status(meta: dict) -> bool:
    return meta.get("status", "trained") in USABLE_STATUSES


def read_artifact(path: str | Path, limits=None) -> dict[str, bytes]:
    """All files of an exported model (directory or .zip), by relative name, read once, with
    their sizes bounded by ``limits`` (vmpower.pipeline.artifact)."""
    return read_model_files(path, limits)


def read_metadata(path: Path, limits=None) -> dict:
    """metadata.json of a model dir or zip, unverified (selection only; the chosen one is verified),
    size- and depth-bounded by ``limits`` (default: the built-in ones)."""
    files = read_model_files(path, limits, names={"metadata.json"})
    if "metadata.json" not in files:
        raise InputError(path, "cannot read metadata.json (not in the model)")
    from vmpower.jsonguard import read_json  # numpy: only when a model is read

    return read_json(path, files["metadata.json"], limits, "metadata.json")


def _metadata(path: Path, data: bytes, limits) -> dict:
    from vmpower import jsonguard
    from vmpower import limits as limits_mod

    try:
        meta = jsonguard.loads(data, path, limits or limits_mod.defaults())
    except InputError as exc:
        raise InputError(path, f"metadata.json: {exc.problem}") from None
    if not isinstance(meta, dict):
        raise InputError(path, "metadata.json is not a JSON object")
    return meta


def _check_metadata(path: Path, meta: dict, files: dict[str, bytes]) -> tuple[list[str], list[str]]:
    """(features, zones) of a usable model whose metadata matches its ONNX files."""
    if not usable_status(meta):
        raise InputError(path, f"model is not usable (status {meta.get('status')}: {meta.get('reason')})")
    features, zones = meta.get("features"), meta.get("zones")
    if not features or not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise InputError(path, "metadata.json has no feature list")
    if not zones or not isinstance(zones, list):
        raise InputError(path, "metadata.json has no zone list")
    shape = (meta.get("input") or {}).get("shape") or [None, None]
    if len(shape) != 2 or shape[1] != len(features):
        raise InputError(path, f"metadata.json input shape {shape} does not match its {len(features)} features")
    onnx_files = {n for n in files if n.endswith(".onnx")}
    wanted = {f"{z}.onnx" for z in zones}
    if onnx_files - wanted:
        raise InputError(path, f"{sorted(onnx_files - wanted)[0]} is not a zone of metadata.json (zones: {', '.join(zones)})")
    if wanted - onnx_files:
        raise InputError(path, f"zone {sorted(wanted - onnx_files)[0][:-5]} of metadata.json has no ONNX file")
    return list(features), list(zones)


def _training_ranges(path: Path, meta: dict, features: list[str]):
    """(lo, hi) arrays of the training data's per-feature [min, max], or None (older export)."""
    import numpy as np

    ranges = (meta.get("training_data") or {}).get("feature_ranges")
    if not ranges:
        return None
    try:
        lo = np.array([float(ranges[f]["min"]) for f in features])
        hi = np.array([float(ranges[f]["max"]) for f in features])
    except (KeyError, TypeError, ValueError):
        raise InputError(path, "metadata.json training_data.feature_ranges does not give min/max for every feature") from None
    if not (lo <= hi).all():
        raise InputError(path, "metadata.json training_data.feature_ranges has a min above its max")
    return lo, hi


def _session(path: Path, name: str, data: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One sample per call: thread pools cost more than they save and would compete with the VM.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise InputError(path, f"{name} is not a loadable ONNX model ({' '.join(str(exc).split())[:120]})") from None


def _sessions(path: Path, files: dict[str, bytes], zones: list[str], n_features: int, input_name: str):
    """({zone: session}, {zone: output name}), each graph checked to take the model's input."""
    sessions, outputs = {}, {}
    for zone in zones:
        fname = f"{zone}.onnx"
        sess = _session(path, fname, files[fname])
        inputs = sess.get_inputs()
        if len(inputs) != 1 or inputs[0].name != input_name or inputs[0].type != "tensor(double)":
            got = ", ".join(f"{i.name}:{i.type}" for i in inputs)
            raise InputError(path, f"{fname} input is {got}, metadata.json says {input_name}:tensor(double)")
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        if width != n_features:
            raise InputError(path, f"{fname} takes {width} features, metadata.json lists {n_features}")
        sessions[zone] = sess
        outputs[zone] = sess.get_outputs()[0].name
    return sessions, outputs


@dataclass
class Model:
    """An exported, verified model: one onnxruntime session per zone."""

    source: Path
    metadata: dict
    features: list[str]
    zones: list[str]
    version: str
    sessions: dict = field(repr=False)
    input_name: str = "features"
    output_names: dict = field(default_factory=dict, repr=False)
    ranges: tuple | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return str(self.metadata.get("model_name", self.source.name))

    @property
    def labels(self) -> tuple[str, str]:
        """(model_name, feature_group): the name alone is the same for one trainer in every group."""
        return self.name, str(self.metadata.get("feature_group", ""))

    @property
    def training_rows(self) -> int | None:
        return (self.metadata.get("training_data") or {}).get("rows")

    @property
    def last_training_time(self) -> float | None:
        return (self.metadata.get("training_data") or {}).get("last_sample_time")

    @classmethod
    def load(cls, path: str | Path, limits=None) -> "Model":
        path = Path(path)
        files = read_artifact(path, limits)
        version = verify_manifest(path, files)
        from vmpower.serving import signing

        signing.check(path, files)  # Ed25519 over the manifest when a public key is configured
        if "metadata.json" not in files:
            raise InputError(path, "no metadata.json")
        meta = _metadata(path, files["metadata.json"], limits)
        features, zones = _check_metadata(path, meta, files)
        ranges = _training_ranges(path, meta, features)
        input_name = (meta.get("input") or {}).get("name", "features")
        sessions, outputs = _sessions(path, files, zones, len(features), input_name)
        return cls(path, meta, features, zones, version, sessions, input_name, outputs, ranges)

    def predict_zone(self, zone: str, X):
        """Watts of one zone for complete rows (no NaN) of X [N, n_features] float64."""
        import numpy as np

        out = self.sessions[zone].run([self.output_names[zone]], {self.input_name: X})[0]
        return np.asarray(out, dtype="float64").reshape(len(X))

    def predict(self, X):
        """Watts [N, n_zones] in ``self.zones`` order; rows with a missing feature give NaN."""
        import numpy as np

        X = np.ascontiguousarray(X, dtype="float64")
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(f"expected [N, {len(self.features)}] features, got {X.shape}")
        ok = np.isfinite(X).all(axis=1)
        out = np.full((len(X), len(self.zones)), np.nan)
        if ok.any():
            Xok = X if ok.all() else X[ok]
            for j, zone in enumerate(self.zones):
                out[ok, j] = self.predict_zone(zone, Xok)
        return out

    def confidence(self, x) -> float | None:
        """Share of the features of one complete sample x [n_features] inside the training data's
        [min, max] (None for a model exported without training ranges)."""
        if self.ranges is None:
            return None
        lo, hi = self.ranges
        return float(((x >= lo) & (x <= hi)).sum()) / len(lo)
