# vmpower: raw VM features + host power -> merged -> AbsPower/DynPower -> models -> ONNX + Kepler archives.
from snakemake.utils import min_version

min_version("9.0")

import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from snakemake.exceptions import WorkflowError  # noqa: E402
from vmpower import configcheck  # noqa: E402

# A YAML syntax error names the file, line and column (Snakemake's parser does not).
if _problem := configcheck.yaml_problem("config.yaml"):
    raise WorkflowError(_problem)


configfile: "config.yaml"


# `snakemake --report results/report.html`: the front page; the figures are the report_* outputs.
report: "report/workflow.rst"


include: "rules/common.smk"


# Every job's software: the digest-pinned pipeline image (`--sdm apptainer`; none unless
# containers.registry is set) or, for `--sdm conda`, the env each rule names (CONDA_ENV).
container: PIPELINE_IMAGE


include: "rules/merge.smk"
include: "rules/isolate.smk"
include: "rules/train.smk"
include: "rules/export.smk"
include: "rules/pinning.smk"
include: "rules/report.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True
