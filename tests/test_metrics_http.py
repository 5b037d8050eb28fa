"""vmpower.serving.metrics_http: /metrics of a registry, rendered once per version, in process."""

import gzip
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Gauge

from vmpower import limits
from vmpower.serving import metrics_http


@pytest.fixture()
def served():
    reg = CollectorRegistry()
    g = Gauge("kepler_test_watts", "a test gauge", ["zone"], registry=reg)
    version = [0]
    srv, thread = metrics_http.start(reg, "127.0.0.1", 0, limits.defaults(), version=lambda: version[0])
    try:
        yield srv.server_address[1], g, version
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _get(port, path, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_metrics_change_with_the_version_only(served):
    port, g, version = served
    g.labels("package").set(12.5)
    status, headers, body = _get(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'kepler_test_watts{zone="package"} 12.5' in body.decode()
    g.labels("package").set(99.0)  # same version: the rendering of this tick is served again
    assert _get(port, "/metrics")[2] == body
    version[0] += 1
    assert 'kepler_test_watts{zone="package"} 99.0' in _get(port, "/metrics")[2].decode()


def test_gzip_and_unknown_paths(served):
    port, g, _version = served
    g.labels("core").set(1.0)
    status, headers, body = _get(port, "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert b'kepler_test_watts{zone="core"} 1.0' in gzip.decompress(body)
    assert _get(port, "/nope")[0] == 404
