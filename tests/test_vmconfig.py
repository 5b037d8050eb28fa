"""EP-003's vm-energy-config.yaml: schema errors in one line, defaults, environment, flags over
the file, the shipped example, and serve with KEPLER_VM_ENERGY_ENABLED=false."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter_helpers import free_port, parse
from vmpower import cli
from vmpower.errors import InputError
from vmpower.serving import signing, vmconfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "vm-energy-config.yaml"


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv(vmconfig.ENV_ENABLED, raising=False)
    monkeypatch.delenv(vmconfig.ENV_MODEL_PATH, raising=False)
    yield
    signing.configure(None)


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "vm-energy-config.yaml"
    p.write_text(text)
    return p


def test_shipped_example_is_valid_and_reads_every_section():
    cfg = vmconfig.load(EXAMPLE)
    assert cfg.source == str(EXAMPLE) and cfg.enabled
    assert cfg.get("collection_interval") == "5s" and vmconfig.seconds(cfg.get("collection_interval")) == 5.0
    assert cfg.python_server == vmconfig.PythonServer("localhost:50051", 5.0, 3, None, None, None)
    assert cfg.cpu_pinning == vmconfig.CpuPinning(False, (2, 3, 6, 7), True)
    assert cfg.get("validation.public_key_file") == "/etc/kepler/vm-model-signing.pub"


@pytest.mark.parametrize("text, message", [
    ("vm_energy_modeling:\n  colection_interval: 5s\n",
     "vm_energy_modeling.colection_interval: unknown key (did you mean collection_interval?)"),
    ("vm_energy_modeling:\n  python_server: {tls_cert: a}\n", "vm_energy_modeling.python_server.tls_cert: unknown key"),
    ("vm_energy_modeling:\n  validation: {confidence_threshold: 1.5}\n",
     "vm_energy_modeling.validation.confidence_threshold: 1.5 is greater than the maximum of 1"),
    ("vm_energy_modeling:\n  inference_method: grpc\n", "vm_energy_modeling.inference_method: 'grpc' is not one of"),
    ("vm_energy_modeling:\n  collection_interval: 5 seconds\n", "vm_energy_modeling.collection_interval:"),
    ("vm_energy_modeling:\n  enabled: maybe\n", "vm_energy_modeling.enabled: must be of type boolean"),
    ("enabled: true\n", "enabled: unknown key (known keys: vm_energy_modeling)"),
    ("vm_energy_modeling:\n  cpu_pinning:\n    isolated_cpus: [1, 1]\n", "isolated_cpus: [1, 1] has non-unique"),
])
def test_bad_key_or_value_is_one_line_naming_it(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as err:
        vmconfig.load(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_defaults_come_from_the_schema_and_flag_keys_stay_unset(tmp_path):
    cfg = vmconfig.load(_write(tmp_path, "vm_energy_modeling: {}\n"))
    assert cfg.enabled and cfg.get("inference_method") == "native"
    assert cfg.get("validation.keep_versions") == 3 and cfg.get("validation.rollback_after_ticks") == 3
    assert cfg.get("python_server.tls_key_file") is None and cfg.get("python_server.retry_attempts") == 3
    # keys a flag also sets have no default: unset, the flag's default applies
    assert cfg.get("collection_interval") is None and cfg.get("validation.confidence_threshold") is None


def test_missing_default_file_means_flags_only_and_explicit_missing_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(vmconfig, "DEFAULT_PATH", tmp_path / "absent.yaml")
    cfg = vmconfig.load(None)
    assert cfg.source is None and cfg.enabled and cfg.given == {}
    with pytest.raises(InputError, match="absent.yaml: config file not found"):
        vmconfig.load(tmp_path / "absent.yaml")


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    path = _write(tmp_path, "vm_energy_modeling:\n  enabled: true\n  model_path: /a\n")
    monkeypatch.setenv(vmconfig.ENV_ENABLED, "FALSE")
    monkeypatch.setenv(vmconfig.ENV_MODEL_PATH, "/models")
    cfg = vmconfig.load(path)
    assert not cfg.enabled and cfg.get("model_path") == "/models"
    monkeypatch.setenv(vmconfig.ENV_ENABLED, "nope")
    with pytest.raises(InputError, match="KEPLER_VM_ENERGY_ENABLED: must be true or false"):
        vmconfig.load(path)


def _serve_args(argv):
    return cli.build_parser("serve").parse_args(["serve", *argv])


def _apply(args, command="serve"):
    """apply on the flags' values, written back as cmd_serve does; the input mapping is left alone."""
    flags = vars(args)
    before = dict(flags)
    cfg, resolved = vmconfig.apply(flags, command)
    assert flags == before
    flags.update(resolved)
    return cfg


def test_flags_override_the_file_and_the_file_overrides_flag_defaults(tmp_path):
    path = _write(tmp_path, "vm_energy_modeling:\n  model_path: /store\n  collection_interval: 250ms\n"
                            "  feature_config: {perf_counters_enabled: false}\n"
                            "  validation: {confidence_threshold: 0.4, fallback_method: disable}\n")
    args = _serve_args(["--config-file", str(path)])
    _apply(args)
    assert (args.interval, args.confidence_threshold, args.low_confidence, args.no_perf, args.model_versions,
            args.model) == (0.25, 0.4, "drop", True, "/store", None)
    args = _serve_args(["--config-file", str(path), "--interval", "2", "--confidence-threshold", "0.9",
                        "--low-confidence", "report", "--model", "m.zip"])
    _apply(args)
    assert (args.interval, args.confidence_threshold, args.low_confidence, args.model, args.model_versions) == (
        2.0, 0.9, "report", "m.zip", None)
    # without a file: the flags' own defaults, and a model is required
    args = _serve_args(["--config-file", str(_write(tmp_path, "vm_energy_modeling: {}\n")), "--model", "m"])
    _apply(args)
    assert (args.interval, args.confidence_threshold, args.low_confidence, args.no_perf) == (1.0, 0.7, "report", False)
    with pytest.raises(InputError, match="--model: required"):
        _apply(_serve_args(["--config-file", str(_write(tmp_path, "vm_energy_modeling: {}\n"))]))


def test_apply_on_flags_without_the_config_options(tmp_path):
    """Flags built without add_arguments (no _Unset markers) resolve nothing; --model and
    --model-versions together are refused unless the versions are the file's model_path."""
    path = _write(tmp_path, "vm_energy_modeling:\n  model_path: /store\n  collection_interval: 250ms\n")
    cfg, resolved = vmconfig.apply({"config_file": str(path), "model": "m", "interval": 2.0}, "serve")
    assert cfg.get("model_path") == "/store" and resolved == {"model_versions": None}
    with pytest.raises(InputError, match="--model: give --model or --model-versions, not both"):
        vmconfig.apply({"config_file": str(path), "model": "m", "model_versions": "/other"}, "serve")
    assert vmconfig.apply({"config_file": str(path), "model": "m", "model_versions": "/store"}, "serve")[1] == {
        "model_versions": None}


def _cli(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "vmpower", *map(str, argv)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_cli_errors_are_one_line(tmp_path):
    res = _cli("serve", "--config-file", tmp_path / "none.yaml", "--port", "0")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"vmpower serve: error: {tmp_path / 'none.yaml'}: config file not found"]
    bad = _write(tmp_path, "vm_energy_modeling:\n  validation: {fallback_method: guess}\n")
    res = _cli("predict", "--config-file", bad, "--input", "x.json")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "vm_energy_modeling.validation.fallback_method: 'guess' is not one of" in res.stderr


def test_disabled_serve_publishes_only_its_health_metrics(tmp_path):
    """KEPLER_VM_ENERGY_ENABLED=false: no model is needed or loaded; /metrics has the health gauges only."""
    import time
    import urllib.request

    from exporter_helpers import stop_process

    port = free_port()
    cfg = _write(tmp_path, "vm_energy_modeling:\n  enabled: true\n  model_path: /nonexistent\n")
    proc = subprocess.Popen([sys.executable, "-m", "vmpower", "serve", "--config-file", str(cfg), "--address",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, vmconfig.ENV_ENABLED: "false"})
    try:
        deadline, text = time.monotonic() + 30, None
        while text is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    text = resp.read().decode()
            except OSError:
                time.sleep(0.1)
    finally:
        stderr = stop_process(proc)
    assert proc.returncode == 0, stderr
    m = parse(text)
    assert set(m) == {"kepler_vm_energy_enabled", "kepler_vm_exporter_up"}
    assert m["kepler_vm_energy_enabled"][0].value == 0 and m["kepler_vm_exporter_up"][0].value == 1
    assert "disabled" in stderr
