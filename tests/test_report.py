"""`snakemake --report`: a small demo build, the HTML report, and the report opened in headless
Chromium (Debian `chromium`): the figures must render (non-blank image regions in screenshots)."""

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from workflow import ROOT, make_workspace, snakemake

pytestmark = pytest.mark.slow

FIGURES = ("quality.png", "heldout.png", "residuals.png", "importance.png")
TABLES = ("quality.html", "metrics.html", "provenance.html")


def small_config(ws: Path) -> None:
    """One node type, 2 trainers (one linear, one tree), 1 feature group: 8 model jobs."""
    cfg = yaml.safe_load((ws / "config.yaml").read_text())
    cfg["train"].update({"feature_groups": ["SystemOnly"], "trainers": ["LinearRegression", "GradientBoostingRegressor"]})
    if "cross_node_type" in cfg["train"]:  # its model must be one this config trains
        cfg["train"]["cross_node_type"] = {"output_type": "AbsPower", "feature_group": "SystemOnly",
                                           "trainer": "GradientBoostingRegressor"}
    (ws / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for nt in sorted((ws / "data/raw").iterdir())[1:]:
        shutil.rmtree(nt)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("report"))
    shutil.copytree(ROOT / "report", ws / "report")  # the caption files
    small_config(ws)
    snakemake(ws, "--cores", "2")
    snakemake(ws, "--cores", "1", "--report", "results/report.html")
    return ws


def _digests(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_report_outputs_are_real_figures_and_deterministic(built):
    nt = sorted(p.name for p in (built / "data/raw").iterdir())[0]
    out = built / "results/report" / nt
    from PIL import Image

    for name in FIGURES:
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        with Image.open(png) as im:
            assert im.width >= 600 and im.height >= 150, (name, im.size)
            assert set(im.info) <= {"dpi"}, (name, im.info)  # no Software/date metadata
            colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colors is not None and len(colors) > 50, name  # a drawn figure, not an empty canvas
    metrics = (out / "metrics.html").read_text()
    assert "GradientBoostingRegressor" in metrics and "LinearRegression" in metrics and 'class="best"' in metrics
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["node_type"] == nt and len(prov["runs"]) == 6
    assert prov["job_image_digests"] == {"local": sum(prov["job_image_digests"].values())}
    assert "envs/pipeline.lock" in prov["locks"]
    assert str(built) not in json.dumps(prov) and "/tmp" not in (out / "provenance.html").read_text()
    before = _digests(sorted(out.iterdir()))
    snakemake(built, "--cores", "2", "--forcerun", "report_quality", "report_models", "report_provenance")
    assert _digests(sorted(out.iterdir())) == before  # byte-identical rebuild of every figure and table
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake(built, "-n", "--cores", "2"))


def test_report_html_holds_every_figure_with_captions_and_categories(built):
    html = (built / "results/report.html").read_text()
    nt = sorted(p.name for p in (built / "data/raw").iterdir())[0]
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html, re.S).group(1))
    names = sorted(Path(k).name for k in results)
    assert names == sorted(FIGURES + TABLES)
    for key, entry in results.items():
        assert entry["data_uri"].startswith("data:image/png;" if key.endswith(".png") else "data:text/html")
        assert entry["caption"].strip(), key  # every output has a caption
        assert entry["labels"]["node_type"] == nt
    cats = json.loads(re.search(r"var categories = (\{.*?\});\n", html, re.S).group(1))
    assert list(cats) == [nt]
    assert sorted(cats[nt]) == ["1. data quality", "2. held-out predictions", "3. models", "4. provenance"]


# ------------------------------------------------------------------------------ headless Chromium


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        subprocess.run(["bash", str(ROOT / "scripts/ensure-debs.sh"), "chromium"], check=True)
        exe = shutil.which("chromium")
    assert exe, "Debian package chromium is not installed (envs/debian.txt)"
    return exe


def run_chromium(url: str, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1600,1000",
        "--virtual-time-budget=8000", *mode, url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp)


# Opens one result the way a click on its eye button does (ButtonViewManager in Snakemake's app).
OPEN_RESULT = """
<script>
setTimeout(function () {{
  var key = Object.keys(results).find(function (k) {{ return k.endsWith("/{name}"); }});
  var kind = key.endsWith(".png") ? "img" : "html";
  var cat = Object.keys(categories).find(function (c) {{
    return Object.values(categories[c]).some(function (paths) {{ return paths.indexOf(key) >= 0; }});
  }});
  app.showCategory(cat);
  app.setView({{ navbarMode: "resultinfo", resultPath: key, content: kind, contentPath: results[key].data_uri }});
}}, 300);
</script>
"""


def open_result(built: Path, tmp: Path, name: str) -> Path:
    html = (built / "results/report.html").read_text()
    page = tmp / f"open-{name}.html"
    head, tail = html.rsplit("</body>", 1)  # the page's own </body> (scripts hold the string too)
    page.write_text(head + OPEN_RESULT.format(name=name) + "</body>" + tail)
    return page


def rendered_app(dom: str) -> str:
    """What the JS app rendered into <div id="app"> (the DOM before the page's scripts)."""
    app = dom.split('<div id="app">', 1)[1].split("<script>", 1)[0]
    assert len(app) > 200, f"the report's JS app rendered nothing: {app[:200]!r}"
    return app


def test_report_renders_in_headless_chromium(built, tmp_path):
    from PIL import Image, ImageStat

    # the app itself (no injected script) renders its navigation with the node_type category
    dom = run_chromium((built / "results/report.html").as_uri(), tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    nt = sorted(p.name for p in (built / "data/raw").iterdir())[0]
    app = rendered_app(dom.stdout)
    assert "<nav" in app and "Snakemake" in app, "the report's JS app did not render its navigation"

    for name in FIGURES + ("metrics.html",):
        page = open_result(built, tmp_path, name)
        dom = run_chromium(page.as_uri(), tmp_path, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        body = rendered_app(dom.stdout)
        assert nt in body, f"{name}: the node_type's category is not shown"
        if name.endswith(".png"):
            assert re.search(r'<img src="data:image/png;', body), f"{name}: no image in the DOM"
        else:
            assert "<iframe" in body and "data:text/html" in body, f"{name}: no table frame in the DOM"
        shot = tmp_path / f"{name}.screenshot.png"
        res = run_chromium(page.as_uri(), tmp_path, f"--screenshot={shot}")
        assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
        with Image.open(shot) as im:
            content = im.convert("RGB").crop((im.width // 3, 0, im.width, im.height))  # right of the menu
            stat = ImageStat.Stat(content)
            colors = content.getcolors(maxcolors=1 << 20)
        assert max(stat.stddev) > 20, f"{name}: the content area of the screenshot is blank"
        assert colors is not None and len(colors) > 100, f"{name}: too few colours for a figure ({len(colors or [])})"
