"""vmpower serve --grpc: a real gRPC client over loopback TLS (self-signed certificate made here)
against real exported models (built by the pipeline's own steps)."""

import dataclasses
import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import grpc
import numpy as np
import pandas as pd
import pytest

from bench import predict_artifacts
from exporter_helpers import Serve, free_port
from vmpower import cli
from vmpower.errors import InputError
from vmpower.pipeline import ingest
from vmpower.serving import fallback, grpc_bridge, predict, vmconfig
from vmpower.serving.selection import ModelRequest
from vmpower.serving.proto import power_estimation_pb2 as pb
from vmpower.serving.proto import power_estimation_pb2_grpc as pbg

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "src" / "vmpower" / "serving" / "proto"
TOKEN = "s3cret-token-for-tests"
RUN = "run02-mix"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp / "server.crt", tmp / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    # Two SystemOnly models are enough: one served, one for LoadModels.
    models = [("AbsPower", "SystemOnly", ["LinearRegression", "GradientBoostingRegressor"])]
    with mock.patch.object(predict_artifacts, "MODELS", models):
        return predict_artifacts.build(tmp_path_factory.mktemp("grpc"))


@pytest.fixture(scope="module")
def bridge(art, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(tmp)
    token = tmp / "token"
    token.write_text(TOKEN + "\n")
    lr = art["models"][("AbsPower", "SystemOnly", "LinearRegression")]
    served = fallback.ChainSpec(ModelRequest(lr, None, None, "AbsPower", None), config=None, fallback=True)
    base = grpc_bridge.Options(served, threshold=predict.DEFAULT_CONFIDENCE_THRESHOLD, low_confidence="report",
                               use_perf=True)
    chain = grpc_bridge.Chain(grpc_bridge.load_chain(str(lr), base), {})
    server, port = grpc_bridge.start("127.0.0.1:0", chain, base, cert_file=cert, key_file=key, token_file=token)
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    channel = grpc.secure_channel(f"localhost:{port}", creds)
    yield SimpleNamespace(stub=pbg.PowerEstimationServiceStub(channel), port=port, cert=cert, key=key, token=token,
                          lr=lr, base=base)
    channel.close()
    server.stop(0)


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def _predict_rows(art, model_dir: Path, tmp: Path):
    """`vmpower predict` output (parquet: full precision) and the model features of its rows,
    computed by predict's own feature code."""
    out = tmp / "predicted.parquet"
    assert cli.main(["predict", "--model", str(model_dir), "--input", str(art["vm_files"][RUN]), "--output", str(out),
                     "--no-fallback"]) == 0
    model = predict.Model.load(model_dir)
    inputs, _ = fallback.chain_inputs([model], [predict.load_settings(None, model.metadata)],
                                      ingest.read_vm_features(art["vm_files"][RUN]))
    return pd.read_parquet(out), model, inputs[0].X


def test_estimate_power_equals_vmpower_predict(art, bridge, tmp_path):
    watts, model, X = _predict_rows(art, bridge.lr, tmp_path)
    rows = np.flatnonzero(np.isfinite(X).all(axis=1))[::7]
    assert len(rows) > 5
    for r in rows:
        feats = dict(zip(model.features, X[r].tolist()))
        # hinge inputs are left out: the bridge computes them from cpu_utilization as the pipeline does
        feats = {k: v for k, v in feats.items() if "_hinge" not in k}
        resp = bridge.stub.EstimatePower(pb.EstimationRequest(features=feats), metadata=AUTH, timeout=10)
        assert sorted(resp.zone_watts) == sorted(model.zones)
        for zone in model.zones:
            assert abs(resp.zone_watts[zone] - watts[f"power_{zone}"].iloc[r]) <= 1e-9, (r, zone)
        assert resp.model_version == model.version
        assert 0.0 < resp.confidence <= 1.0
        assert list(resp.missing_features) == []


def test_missing_inputs_give_no_zone_and_name_them(bridge):
    resp = bridge.stub.EstimatePower(pb.EstimationRequest(features={"cpu_utilization": 50.0}), metadata=AUTH, timeout=10)
    assert dict(resp.zone_watts) == {} and resp.confidence == 0.0
    assert len(resp.missing_features) > 0 and "cpu_utilization" not in resp.missing_features


def test_model_info_and_load_models(art, bridge):
    info = bridge.stub.GetModelInfo(pb.Empty(), metadata=AUTH, timeout=10)
    lr = predict.Model.load(bridge.lr)
    assert (info.model_name, info.model_version, list(info.zones)) == (lr.name, lr.version, lr.zones)
    assert (info.node_type, info.output_type, info.feature_group) == (predict_artifacts.NODE_TYPE, "AbsPower", "SystemOnly")
    gbr = art["models"][("AbsPower", "SystemOnly", "GradientBoostingRegressor")]
    bad = bridge.stub.LoadModels(pb.LoadModelsRequest(model_directory=str(gbr.parent / "nope")), metadata=AUTH,
                                 timeout=30)
    assert not bad.success and "nope" in bad.message
    assert bridge.stub.GetModelInfo(pb.Empty(), metadata=AUTH, timeout=10).model_version == lr.version
    ok = bridge.stub.LoadModels(pb.LoadModelsRequest(model_directory=str(gbr)), metadata=AUTH, timeout=30)
    try:
        want = predict.Model.load(gbr)
        assert ok.success and ok.model_version == want.version != lr.version
        info = bridge.stub.GetModelInfo(pb.Empty(), metadata=AUTH, timeout=10)
        assert (info.model_name, info.model_version) == (want.name, want.version)
    finally:
        assert bridge.stub.LoadModels(pb.LoadModelsRequest(model_directory=str(bridge.lr)), metadata=AUTH,
                                      timeout=30).success


@pytest.mark.parametrize("metadata", [None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),),
                                      (("authorization", f"Bearer {TOKEN}x"),)],
                         ids=["none", "wrong", "no-scheme", "longer"])
def test_calls_without_the_token_are_refused(bridge, metadata):
    for call, req in ((bridge.stub.EstimatePower, pb.EstimationRequest(features={"cpu_utilization": 1.0})),
                      (bridge.stub.GetModelInfo, pb.Empty()), (bridge.stub.LoadModels, pb.LoadModelsRequest())):
        with pytest.raises(grpc.RpcError) as err:
            call(req, metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_plaintext_client_cannot_connect(bridge):
    with grpc.insecure_channel(f"127.0.0.1:{bridge.port}") as channel:
        stub = pbg.PowerEstimationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModelInfo(pb.Empty(), metadata=AUTH, timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bridge_refuses_to_start_without_tls_or_token(bridge, tmp_path):
    chain = grpc_bridge.Chain([], {})
    with pytest.raises(InputError, match="--grpc-tls-cert"):
        grpc_bridge.start("127.0.0.1:0", chain, bridge.base, cert_file=bridge.cert, key_file=None,
                          token_file=bridge.token)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(InputError, match="empty"):
        grpc_bridge.start("127.0.0.1:0", chain, bridge.base, cert_file=bridge.cert, key_file=bridge.key,
                          token_file=empty)


def test_tls_files_come_from_the_flags_else_the_config_file():
    given = {"python_server": {"tls_cert_file": "/etc/c.pem", "bearer_token_file": "/etc/token"}}
    cfg = vmconfig.VMConfig("vm.yaml", given, given)
    assert grpc_bridge.files(cfg, cert_file=None, key_file=None, token_file="t") == {
        "cert_file": "/etc/c.pem", "key_file": None, "token_file": "t"}
    assert grpc_bridge.files(vmconfig.VMConfig(None, {}, {}), cert_file="c", key_file="k", token_file=None) == {
        "cert_file": "c", "key_file": "k", "token_file": None}


def test_load_models_takes_the_output_type_it_omits_from_serve(art, bridge):
    """LoadModels selects from a results directory like serve's --model: serve's output type
    where the request gives none (the results hold AbsPower models only)."""
    served = bridge.base.chain
    dyn = dataclasses.replace(bridge.base, chain=dataclasses.replace(
        served, request=dataclasses.replace(served.request, output_type="DynPower")))
    kw = {"node_type": predict_artifacts.NODE_TYPE}
    with pytest.raises(InputError, match="DynPower"):
        grpc_bridge.load_chain(str(art["results"]), dyn, **kw)
    chain = grpc_bridge.load_chain(str(art["results"]), dyn, output_type="AbsPower", **kw)
    assert chain and {m.metadata["output_type"] for m in chain} == {"AbsPower"}


def test_serve_grpc_takes_tls_files_from_flags_and_the_config_file(art, bridge, tmp_path):
    """``vmpower serve --grpc``: the certificate from its flag, key and token from the VM config
    file; a client with the token gets the served model's info."""
    vm = tmp_path / "vm.yaml"
    vm.write_text(f"vm_energy_modeling:\n  python_server: {{tls_key_file: {bridge.key}, "
                  f"bearer_token_file: {bridge.token}}}\n")
    port = free_port()
    with Serve(bridge.lr, art["config"], "--grpc", f"127.0.0.1:{port}", "--grpc-tls-cert", bridge.cert,
               "--config-file", vm) as srv:
        srv.wait_for(lambda m: "kepler_vm_exporter_up" in m)
        creds = grpc.ssl_channel_credentials(root_certificates=bridge.cert.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", creds) as channel:
            info = pbg.PowerEstimationServiceStub(channel).GetModelInfo(pb.Empty(), metadata=AUTH, timeout=10)
    assert info.model_version == predict.Model.load(bridge.lr).version


def test_generated_code_is_what_the_pinned_grpcio_tools_make(tmp_path):
    """The committed *_pb2*.py are protoc's output for the committed .proto (no drift)."""
    pytest.importorskip("grpc_tools")
    rel = "vmpower/serving/proto/power_estimation.proto"
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_bytes((PROTO_DIR / "power_estimation.proto").read_bytes())
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--grpc_python_out=.", rel],
                   cwd=tmp_path, check=True)
    for name in ("power_estimation_pb2.py", "power_estimation_pb2_grpc.py"):
        assert (tmp_path / "vmpower/serving/proto" / name).read_bytes() == (PROTO_DIR / name).read_bytes(), name
