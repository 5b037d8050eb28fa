"""Held-out accuracy of the demo's pinned vs unpinned variants (docs/pinning.md):
PYTHONPATH=src python scripts/pinning_accuracy.py"""
import sys, yaml, pandas as pd, tempfile, logging
from pathlib import Path
from unittest import mock
logging.disable(logging.INFO)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import test_pinning as tp
from bench import predict_artifacts
runs = yaml.safe_load(open(ROOT / "config.yaml"))["synth"]["runs"]
class Keep(dict):
    def __setitem__(self, k, v):
        if k != "alignment": super().__setitem__(k, v)
real = yaml.safe_load
def load(text):
    cfg = real(text)
    if isinstance(cfg, dict) and "merge" in cfg and "synth" in cfg: cfg["merge"] = Keep(cfg["merge"])
    return cfg
yaml.safe_load = load
yaml.SafeDumper.add_representer(Keep, yaml.representer.SafeRepresenter.represent_dict)
res = {}
for v in ("pinned", "unpinned"):
    with mock.patch.object(predict_artifacts, "RUNS", runs):
        art = tp.build_variant(Path(tempfile.mkdtemp(prefix=f"pinning-{v}-")), v)
    for (ot, fg, tr), t in art["trained"].items():
        h = pd.read_parquet(t / "holdout.parquet")
        p = h["power_package"]; e = (h["pred_package"] - p).abs()
        busy = p > 5
        res[f"{v}/{fg}/{tr}"] = dict(mae=round(float(e.mean()),3), mape_all=round(float((e/p.abs()).mean()*100),2),
                                     mape_busy=round(float((e[busy]/p[busy]).mean()*100),2))
    print(v, art["results"])
for k, x in sorted(res.items()): print(k, x)
