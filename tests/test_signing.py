"""Model security: Ed25519 signatures with real keys (vmpower sign), 0600 exports, archives
naming files outside the model refused."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import zipfile

import pytest

from bench.predict_artifacts import build
from vmpower import cli
from vmpower.errors import InputError
from vmpower.serving import signing
from vmpower.serving.artifact import Model

SYS_LR = ("AbsPower", "SystemOnly", "LinearRegression")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return build(tmp_path_factory.mktemp("signing"))


@pytest.fixture(autouse=True)
def _policy():
    signing.configure(None)
    signing._warned.clear()
    yield
    signing.configure(None)


@pytest.fixture
def keys(tmp_path):
    assert cli.main(["sign", "--generate-key", "--key", str(tmp_path / "k")]) == 0
    assert cli.main(["sign", "--generate-key", "--key", str(tmp_path / "other")]) == 0
    return tmp_path / "k", tmp_path / "k.pub", tmp_path / "other.pub"


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_generated_private_key_is_0600_and_never_overwritten(keys):
    private, public, _ = keys
    assert _mode(private) == 0o600 and b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(InputError, match="exists: refusing to overwrite"):
        signing.generate_key(private)


def test_exported_model_files_and_archives_are_0600(art):
    model = art["models"][SYS_LR]
    assert _mode(model) == 0o700
    assert {_mode(p) for p in model.iterdir()} == {0o600}
    assert _mode(model.with_suffix(".zip")) == 0o600


def _copy(art, tmp_path, name="m"):
    src = art["models"][SYS_LR]
    d = tmp_path / name
    shutil.copytree(src, d)
    z = tmp_path / f"{name}.zip"
    shutil.copy(src.with_suffix(".zip"), z)
    return d, z


def test_signed_model_loads_with_the_key_and_unsigned_or_foreign_signed_is_refused(art, tmp_path, keys):
    private, public, other = keys
    d, z = _copy(art, tmp_path)
    signing.configure(public)
    for path in (d, z):
        with pytest.raises(InputError, match=r"unsigned model \(no manifest.sha256.sig\) and a public key is configured"):
            Model.load(path)
    assert cli.main(["sign", "--key", str(private), str(d), str(z)]) == 0
    assert _mode(d / signing.SIGNATURE) == 0o600 and _mode(z) == 0o600
    assert Model.load(d).zones == Model.load(z).zones == ["package", "core", "dram", "uncore"]
    with zipfile.ZipFile(z) as zf, zipfile.ZipFile(art["models"][SYS_LR].with_suffix(".zip")) as orig:
        for info in orig.infolist():  # signing adds a member, changes none
            assert zf.read(info.filename) == orig.read(info.filename)
    signing.configure(other)  # a key that did not sign it
    for path in (d, z):
        with pytest.raises(InputError, match="is not a valid signature of manifest.sha256 by the configured key"):
            Model.load(path)


def test_attacker_rewriting_file_and_manifest_is_caught_by_the_signature(art, tmp_path, keys):
    import hashlib

    private, public, _ = keys
    d, _z = _copy(art, tmp_path)
    signing.sign_model(signing.load_private(private), d)
    meta = d / "metadata.json"
    meta.write_text(meta.read_text().replace('"status": "trained"', '"status": "trained" '))
    lines = [f"{hashlib.sha256(meta.read_bytes()).hexdigest()}  metadata.json" if ln.endswith("  metadata.json")
             else ln for ln in (d / "manifest.sha256").read_text().splitlines()]
    (d / "manifest.sha256").write_text("\n".join(lines) + "\n")
    Model.load(d)  # the manifest alone no longer detects it
    signing.configure(public)
    with pytest.raises(InputError, match="not a valid signature"):
        Model.load(d)
    (d / signing.SIGNATURE).write_text("not base64!\n")
    with pytest.raises(InputError, match="not a valid signature"):
        Model.load(d)


def test_without_a_key_unsigned_models_load_with_one_warning(art, tmp_path, caplog):
    d, _ = _copy(art, tmp_path)
    with caplog.at_level(logging.WARNING, logger="vmpower.serving.signing"):
        Model.load(d)
        Model.load(d)
    warnings = [r.getMessage() for r in caplog.records if r.name == "vmpower.serving.signing"]
    assert warnings == [f"{d}: unsigned (no validation.public_key_file configured): accepted"]


def test_predict_refuses_unsigned_models_when_the_config_file_names_a_key(art, tmp_path, keys, capsys):
    private, public, _ = keys
    d, _ = _copy(art, tmp_path)
    cfg = tmp_path / "vm.yaml"
    cfg.write_text(f"vm_energy_modeling:\n  validation:\n    public_key_file: {public}\n")
    vm = art["vm_files"]["run02-mix"]
    argv = ["predict", "--config-file", str(cfg), "--model", str(d), "--config", str(art["config"]), "--input",
            str(vm), "--output", str(tmp_path / "w.csv")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unsigned model" in err[0]
    signing.sign_model(signing.load_private(private), d)
    assert cli.main(argv) == 0 and (tmp_path / "w.csv").stat().st_size > 0


@pytest.mark.parametrize("name, why", [("../evil.json", "climbs out"), ("a/../../evil", "climbs out"),
                                       ("/etc/passwd", "absolute path"), ("C:/x", "absolute path"),
                                       ("a\\..\\b", "backslash")])
def test_archive_members_outside_the_model_are_refused(art, tmp_path, name, why):
    z = tmp_path / "m.zip"
    shutil.copy(art["models"][SYS_LR].with_suffix(".zip"), z)
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr(name, b"x")
    with pytest.raises(InputError, match=f"member .* {why}.*refused \\(path traversal\\)"):
        Model.load(z)
    assert not (tmp_path.parent / "evil.json").exists()


def test_sign_errors_are_one_line(tmp_path, keys, capsys):
    private, public, _ = keys
    assert cli.main(["sign", "--key", str(public), str(tmp_path)]) == 2  # a public key cannot sign
    assert cli.main(["sign", "--key", str(private), str(tmp_path)]) == 2  # not a model
    (tmp_path / "x.zip").write_bytes(b"no zip")
    assert cli.main(["sign", "--key", str(private), str(tmp_path / "x.zip")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("vmpower sign: error: ") for line in err)
    assert "not an unencrypted PEM private key" in err[0] and "no manifest.sha256" in err[1]
