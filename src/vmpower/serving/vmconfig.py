"""EP-003's ``vm-energy-config.yaml`` for ``vmpower serve`` and ``vmpower predict``.

``load(path)`` reads the file (top-level key ``vm_energy_modeling``), checks it against
schemas/vm-energy-config.schema.yaml (an unknown key or a bad value: one line naming it), fills
in the schema's defaults and applies the environment (``KEPLER_VM_ENERGY_ENABLED``,
``KEPLER_VM_MODEL_PATH``, as in the EP's DaemonSet). ``path=None`` reads the default location
if it exists and gives the defaults otherwise (flags only); an explicitly named missing file is
an error.

For the commands, ``add_arguments`` adds ``--config-file`` and ``--model-versions`` and marks
the flags the file can set; ``apply`` resolves the flags the user did not give from the file
(flags override the file, the file overrides the flags' defaults; the command writes them back
into its arguments) and configures the signature policy. Other code reads keys with ``cfg.get("python_server.url")`` or the typed sections
``cfg.python_server`` / ``cfg.cpu_pinning`` (durations in seconds).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path

from vmpower.errors import InputError
from vmpower.settings import Section

DEFAULT_PATH = Path("/etc/kepler/vm-energy-config.yaml")
SCHEMA = "vm-energy-config.schema.yaml"
ROOT = "vm_energy_modeling"
ENV_ENABLED = "KEPLER_VM_ENERGY_ENABLED"
ENV_MODEL_PATH = "KEPLER_VM_MODEL_PATH"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def seconds(value) -> float:
    """A schema-checked duration ("500ms", "5s", "1m", or a number) in seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclasses.dataclass(frozen=True)
class PythonServer(Section):
    url: str
    timeout: float  # seconds
    retry_attempts: int
    tls_cert_file: str | None
    tls_key_file: str | None
    bearer_token_file: str | None


@dataclasses.dataclass(frozen=True)
class CpuPinning(Section):
    enabled: bool
    isolated_cpus: tuple[int, ...]
    recommendation_mode: bool


@dataclasses.dataclass(frozen=True)
class VMConfig:
    """The file's ``vm_energy_modeling`` mapping: ``given`` as written (plus the environment),
    ``values`` with the schema's defaults filled in. ``source``: the file, or None."""

    source: str | None
    given: dict
    values: dict

    def get(self, key: str, default=None):
        """A dotted key, e.g. ``get("validation.public_key_file")``; ``default`` when unset."""
        node = self.values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def given_value(self, key: str):
        """A dotted key's value only if the file (or the environment) set it, else None."""
        node = self.given
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    @property
    def enabled(self) -> bool:
        return bool(self.values["enabled"])

    @property
    def python_server(self) -> PythonServer:
        d = dict(self.values["python_server"])
        d["timeout"] = seconds(d["timeout"])
        return PythonServer.build(d, self.source or "vm-energy-config")

    @property
    def cpu_pinning(self) -> CpuPinning:
        return CpuPinning.build(self.values["cpu_pinning"], self.source or "vm-energy-config")


@functools.cache
def _schema() -> dict:
    import yaml

    from vmpower.paths import SCHEMAS

    return yaml.safe_load((SCHEMAS / SCHEMA).read_text(encoding="utf-8"))


def _env(given: dict) -> dict:
    given = dict(given)
    flag = os.environ.get(ENV_ENABLED)
    if flag is not None:
        if flag.strip().lower() not in _TRUE | _FALSE:
            raise InputError(ENV_ENABLED, f"must be true or false, got {flag!r}")
        given["enabled"] = flag.strip().lower() in _TRUE
    path = os.environ.get(ENV_MODEL_PATH)
    if path:
        given["model_path"] = path
    return given


def load(path: str | Path | None = None) -> VMConfig:
    """The config (see the module's doc). Raises a one-line InputError for a bad file."""
    from vmpower.configcheck import check_file
    from vmpower.settings import _fill_defaults

    explicit = path is not None
    path = Path(path) if explicit else DEFAULT_PATH
    if not explicit and not path.exists():
        doc, source = {}, None
    else:
        doc, source = check_file(path, SCHEMA), str(path)
        if ROOT not in doc:
            raise InputError(path, f"{ROOT}: required key missing")
        doc = doc[ROOT] or {}
    schema = _schema()
    inner = schema["properties"][ROOT]
    given = _env(doc)
    return VMConfig(source, given, _fill_defaults(given, inner, schema.get("$defs", {})))


# ---------------------------------------------------------------- the commands' flags


class _Unset:
    """argparse default of a flag the file may set: tells "not given" from "given the default"."""

    def __init__(self, default):
        self.default = default

    def __repr__(self) -> str:
        return repr(self.default)


# flag dest -> (file key, conversion of the file's value to the flag's)
_LOW = {"estimation": "report", "disable": "drop"}
FLAGS = {
    "serve": {"interval": ("collection_interval", seconds),
              "confidence_threshold": ("validation.confidence_threshold", float),
              "low_confidence": ("validation.fallback_method", _LOW.__getitem__),
              "no_perf": ("feature_config.perf_counters_enabled", lambda v: not v),
              "model_versions": ("model_path", str)},
    "predict": {"confidence_threshold": ("validation.confidence_threshold", float),
                "low_confidence": ("validation.fallback_method", _LOW.__getitem__),
                "model_versions": ("model_path", str)},
}


def add_arguments(parser, command: str) -> None:
    """``--config-file`` and ``--model-versions`` on serve/predict; marks the flags the file sets."""
    parser.add_argument("--config-file", metavar="FILE",
                        help=f"EP-003's vm-energy-config.yaml (default: {DEFAULT_PATH} if it exists); flags "
                             "override it")
    parser.add_argument("--model-versions", metavar="DIR",
                        help="a directory of model versions (vm-energy-config model_path; docs/deploy.md): "
                             + ("the newest good one serves, new ones are picked up live, failing ones rolled back"
                                if command == "serve" else "the newest one that loads is used"))
    for action in parser._actions:
        if action.dest in FLAGS[command]:
            action.default = _Unset(action.default)
        if action.dest == "model":
            action.required = False  # --model, --model-versions or model_path: checked in apply


def apply(flags: Mapping, command: str) -> tuple[VMConfig, dict]:
    """(the config, the flag values it resolves) for the command's flag values (``vars(args)``):
    a flag the user did not give (an ``_Unset`` default) takes the file's value, else its own
    default; --model and --model-versions are checked (a --model flag overrides the file's
    model_path: model_versions becomes None). Configures the signature policy. Flags built without
    ``add_arguments`` are left as they are."""
    from vmpower.serving import signing

    cfg = load(flags.get("config_file"))
    values = {}
    for dest, (key, convert) in FLAGS[command].items():
        value = flags.get(dest)
        if isinstance(value, _Unset):
            given = cfg.given_value(key)
            values[dest] = value.default if given is None else convert(given)
    versions = values.get("model_versions", flags.get("model_versions"))
    model_flag = flags.get("model")
    if model_flag and versions and versions != cfg.given_value("model_path"):
        raise InputError("--model", "give --model or --model-versions, not both")
    if model_flag:
        values["model_versions"] = None  # a flag overrides the file's model_path
    elif not versions and (cfg.enabled or command == "predict"):
        raise InputError("--model", f"required (or --model-versions DIR, or {ROOT}.model_path in the config file)")
    signing.configure(cfg.get("validation.public_key_file"), warn=cfg.source is not None)
    return cfg, values


def pick_version(root: str | Path, spec) -> str:
    """predict --model-versions: the path of the newest version under ``root`` whose chain loads
    (``spec``: predict's chain options, a vmpower.serving.fallback.ChainSpec; its model is each
    version's path in turn)."""
    from vmpower.serving import versions

    def load(path):
        spec.for_model(path).load(level=10)

    return str(versions.newest_loadable(root, load).path)
