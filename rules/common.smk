# Config validation, run discovery, input functions and wildcard constraints.
import glob
import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from vmpower import buildstate, runtime  # noqa: E402

# Resume after a crash: clear what a dead build left (stale locks, temp files); steps die with this build.
buildstate.claim(workflow, config["results_dir"])

RAW = config["raw_dir"]
RES = config["results_dir"]
TRAIN = config["train"]
OUTPUT_TYPES = TRAIN["output_types"]
FEATURE_GROUPS = TRAIN["feature_groups"]
TRAINERS = TRAIN["trainers"]

for _group in FEATURE_GROUPS:
    if _group not in config["features"]["groups"]:
        raise WorkflowError(f"config.yaml: train.feature_groups names {_group!r}, not defined in features.groups")

# `--sdm apptainer` / `--sdm conda` wrap each job themselves: run plain `python -m vmpower` in it.
_SDM = {m.name.lower() for m in workflow.deployment_settings.deployment_method}
if config["runtime"] == "local" and "apptainer" in _SDM:
    config["runtime"] = "apptainer"
elif config["runtime"] == "local" and "conda" in _SDM:
    config["runtime"] = "conda"

# The command that runs one vmpower step: locally, or inside the pinned image.
VMPOWER = runtime.command(config, "pipeline")
PIPELINE_IMAGE = runtime.container_ref(config, "pipeline")
# For `--sdm conda` (with runtime=conda): the same locked packages, installed by conda + pip.
CONDA_ENV = "../envs/pipeline.conda.yaml"


def discover_runs(raw_dir):
    """{node_type: {run_id: {"vm": file, "bm": file}}} from <raw_dir>/<node_type>/<run_id>/."""
    runs = {}
    for run_dir in sorted(Path(raw_dir).glob("*/*/")):
        if not run_dir.is_dir() or run_dir.name.startswith("."):
            continue
        vm = sorted(glob.glob(f"{run_dir}/vm_features_*.json") + glob.glob(f"{run_dir}/vm_features_*.jsonl"))
        bm = sorted(glob.glob(f"{run_dir}/bm_power_*.csv") + glob.glob(f"{run_dir}/bm_power_*.json"))
        if not vm and not bm:
            continue
        if len(vm) != 1 or len(bm) != 1:
            raise WorkflowError(
                f"{run_dir}: a run needs exactly one vm_features_*.json and one bm_power_*.csv|json "
                f"(found {len(vm)} and {len(bm)})"
            )
        runs.setdefault(run_dir.parent.name, {})[run_dir.name] = {"vm": vm[0], "bm": bm[0]}
    return runs


RUNS = discover_runs(RAW)
NODE_TYPES = sorted(RUNS)
if not NODE_TYPES:
    sys.stderr.write(f"vmpower: no runs under {RAW}/<node_type>/<run_id>/ (try `make demo-data`)\n")


wildcard_constraints:
    node_type="[A-Za-z0-9][A-Za-z0-9_.-]*",
    run_id="[A-Za-z0-9][A-Za-z0-9_.-]*",
    output_type="|".join(OUTPUT_TYPES),
    feature_group="|".join(FEATURE_GROUPS),
    trainer="|".join(TRAINERS),


# Source files of each stage: editing them reruns that stage.
_SRC = "src/vmpower"
_COMMON_SRC = [f"{_SRC}/{m}.py" for m in ("__init__", "__main__", "cli", "errors", "io", "provenance", "runtime")]


def stage_sources(*modules):
    return _COMMON_SRC + [f"{_SRC}/{m}.py" for m in modules]


ENGINEERING_KEYS = ("lag_feature", "lag_zone", "max_lag_seconds", "min_lag_correlation", "lag_correction", "windows",
                    "window_features", "hinges")
MERGE_FEATURE_KEYS = ("lag_feature", "lag_zone", "max_lag_seconds", "hinges")


def features_settings(keys):
    """The engineering keys of the features section (not the groups)."""
    return {k: config["features"][k] for k in keys if k in config["features"]}


def settings_json(*sections, **extra):
    """The config sections a step reads, as JSON for --settings (a change reruns the step)."""
    data = {}
    for section in sections:
        value = config[section]
        data.update(value if isinstance(value, dict) else {section: value})
    data.update(extra)
    return json.dumps(data, sort_keys=True)


# ---------------------------------------------------------------- input functions


def run_vm_file(wildcards):
    return RUNS[wildcards.node_type][wildcards.run_id]["vm"]


def run_bm_file(wildcards):
    return RUNS[wildcards.node_type][wildcards.run_id]["bm"]


def merged_runs(wildcards):
    return [f"{RES}/merged/{wildcards.node_type}/{r}.parquet" for r in sorted(RUNS[wildcards.node_type])]


def merged_quality(wildcards):
    return [f"{RES}/merged/{wildcards.node_type}/{r}.quality.json" for r in sorted(RUNS[wildcards.node_type])]


def machine_specs(wildcards):
    return sorted(glob.glob(f"{RAW}/{wildcards.node_type}/*/machine_spec.json"))


def export_isolation(wildcards):
    """DynPower models record their isolator (the idle watts subtracted); AbsPower has none."""
    if wildcards.output_type == "DynPower":
        return [f"{RES}/isolated/{wildcards.node_type}/isolation.json"]
    return []


def train_outputs(name):
    """A train output of every trainer of the job's node_type x output type x feature group."""
    return expand(f"{RES}/train/{{node_type}}/{{output_type}}/{{feature_group}}/{{trainer}}/{name}",
                  trainer=TRAINERS, allow_missing=True)


# An exported model's directory (+ ".zip": its archive); the one place that names it.
MODEL_PATH = f"{RES}/models/{{output_type}}/{{feature_group}}/{{trainer}}Trainer_{{node_type}}"


def exported_models(suffix):
    """export_models' model directories (suffix "") or archives (".zip"), in TRAINERS order."""
    return expand(MODEL_PATH + suffix, trainer=TRAINERS, allow_missing=True)


def train_settings(wildcards):
    return json.dumps(
        {
            **TRAIN,
            "patterns": config["features"]["groups"][wildcards.feature_group],
            "engineering": features_settings(ENGINEERING_KEYS),
        },
        sort_keys=True,
    )


def exported_metadata(node_types=None, suffix=""):
    return expand(MODEL_PATH + suffix, node_type=node_types or NODE_TYPES, output_type=OUTPUT_TYPES,
                  feature_group=FEATURE_GROUPS, trainer=TRAINERS)


def node_type_models(wildcards):
    """The exported model directories of one node_type (export_select)."""
    return exported_metadata([wildcards.node_type])


def exported_archives():
    return exported_metadata(suffix=".zip")


def provenance_records():
    """Every job's provenance record (the image it ran in), for the final image check."""
    out = [f"{RES}/provenance/merge/{nt}/{r}.json" for nt in NODE_TYPES for r in sorted(RUNS[nt])]
    out += [f"{RES}/provenance/{stage}/{nt}.json" for stage in ("dataset", "isolate") for nt in NODE_TYPES]
    out += [f"{RES}/provenance/cross_node_type.json"] if NODE_TYPES else []
    out += [
        f"{RES}/provenance/train/{nt}/{ot}/{fg}/{tr}.json"
        for nt in NODE_TYPES
        for ot in OUTPUT_TYPES
        for fg in FEATURE_GROUPS
        for tr in TRAINERS
    ]
    out += [f"{RES}/provenance/export/{nt}/{ot}/{fg}.json" for nt in NODE_TYPES for ot in OUTPUT_TYPES for fg in FEATURE_GROUPS]
    out += [f"{RES}/provenance/select/{nt}.json" for nt in NODE_TYPES]
    return out + [f"{RES}/provenance/select.json"]


def _built_or_first(wanted, built):
    return wanted if wanted in built else built[0]


# The model compared across node_types (train.cross_node_type); a choice this build does not
# train (e.g. a config with other trainers) falls back to the first one it does.
_CROSS = TRAIN.get("cross_node_type", {})
CROSS = {
    "output_type": _built_or_first(_CROSS.get("output_type"), OUTPUT_TYPES),
    "feature_group": _built_or_first(_CROSS.get("feature_group"), FEATURE_GROUPS),
    "trainer": _built_or_first(_CROSS.get("trainer"), TRAINERS),
}


CROSS_MODEL = "{output_type}/{feature_group}/{trainer}".format(**CROSS)


def cross_inputs(kind):
    """Per node_type inputs of the cross-node_type check."""
    ot, fg, tr = CROSS["output_type"], CROSS["feature_group"], CROSS["trainer"]
    if kind == "dataset":
        return [f"{RES}/isolated/{nt}/{ot}.parquet" for nt in NODE_TYPES]
    return [f"{RES}/train/{nt}/{ot}/{fg}/{tr}/{kind}" for nt in NODE_TYPES]


def all_outputs():
    if not NODE_TYPES:
        return []
    return exported_archives() + [
        f"{RES}/summary.csv",
        f"{RES}/cross_node_type.csv",
        f"{RES}/best.json",
        f"{RES}/report.md",
        f"{RES}/provenance/images-checked.txt",
    ] + report_outputs()  # rules/report.smk: the figures and tables of `snakemake --report`


localrules:
    export_select,
    export_summary,
    export_check_images,
    report_markdown,


# ---------------------------------------------------------------- report inputs (rules/report.smk)

REPORT_DIR = f"{RES}/report"
TREE_TRAINERS = [t for t in TRAINERS if t in ("GradientBoostingRegressor", "XGBRegressor")]
REPORT_LOCKS = ["envs/pipeline.lock", "envs/collect.lock", "envs/dev.lock"]


def report_holdouts(wildcards):
    nt = wildcards.node_type
    return [f"{RES}/train/{nt}/{ot}/{fg}/{tr}/holdout.parquet" for ot in OUTPUT_TYPES for fg in FEATURE_GROUPS for tr in TRAINERS]


def report_tree_models(wildcards):
    nt = wildcards.node_type
    return [f"{RES}/train/{nt}/{ot}/{fg}/{tr}/model.joblib" for ot in OUTPUT_TYPES for fg in FEATURE_GROUPS for tr in TREE_TRAINERS]


def report_raw_files(wildcards):
    nt = wildcards.node_type
    runs = RUNS[nt]
    return sorted(f for r in sorted(runs) for f in (runs[r]["vm"], runs[r]["bm"])) + machine_specs(wildcards)


def report_records(wildcards):
    nt = wildcards.node_type
    return [p for p in provenance_records() if nt in Path(p).parts or Path(p).stem == nt]


def report_outputs():
    """The per-node_type report files (rule all)."""
    names = ("quality.png", "quality.html", "heldout.png", "residuals.png", "importance.png", "metrics.html",
             "provenance.html", "provenance.json")
    return [f"{REPORT_DIR}/{nt}/{name}" for nt in NODE_TYPES for name in names]
