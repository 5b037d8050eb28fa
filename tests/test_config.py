import copy

import pytest
import yaml
from snakemake.utils import validate

CONFIG = yaml.safe_load(open("config.yaml"))
SCHEMA = "schemas/config.schema.yaml"


def test_shipped_config_is_valid():
    validate(copy.deepcopy(CONFIG), SCHEMA)


@pytest.mark.parametrize(
    "path,value",
    [
        (("runtime",), "kubernetes"),
        (("merge", "alignment"), "linear"),
        (("train", "trainers"), ["RandomForest"]),
        (("train", "holdout_fraction"), 1.5),
        (("zones",), ["package", "gpu"]),
        (("synth", "seed"), "abc"),
        (("merge", "unknown_key"), 1),
    ],
)
def test_bad_config_is_rejected(path, value):
    cfg = copy.deepcopy(CONFIG)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(Exception, match="ValidationError"):
        validate(cfg, SCHEMA)


def test_snakemake_lint_is_clean():
    """`snakemake --lint` (rule names, log/benchmark directives, no lambdas or absolute paths)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "Congratulations, your workflow is in a good condition" in out, out[-3000:]
