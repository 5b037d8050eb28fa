# Config validation, run discovery, input functions and wildcard constraints.
import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from vmpower.ops import buildstate, runtime, sources  # noqa: E402
from vmpower import configcheck  # noqa: E402
from vmpower.pipeline import layout, paramcheck  # noqa: E402

# Strict config (issue 19): unknown keys, bad values and trainer parameters are one line naming
# the key and the file that set it, before any job; Snakemake's validate() then fills in defaults.
if _problem := configcheck.workflow_problem(workflow, config, checks=[paramcheck.config_problem]):
    raise WorkflowError(_problem)
validate(config, "../schemas/config.schema.yaml")

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

# The command that runs one vmpower step: locally, or inside the pinned image. A shell prefix
# quoted by runtime.command, the one field the rules' shell commands leave unquoted: every
# other field is written {...:q} (a path from data/raw is never read by the shell).
VMPOWER = runtime.command(config, "pipeline")
PIPELINE_IMAGE = runtime.container_ref(config, "pipeline")
# For `--sdm conda` (with runtime=conda): the same locked packages, installed by conda + pip.
CONDA_ENV = "../envs/pipeline.conda.yaml"


# Runs and layout problems (src/vmpower/pipeline/layout.py). A problem (a missing or second VM/host file,
# a directory name that is not a valid wildcard) never stops planning: the run gets a failing
# check_layout job instead (rules/merge.smk) that its node_type's dataset waits for, so with
# --keep-going every other node_type still builds; NODE_TYPES (the aggregates) leaves it out.
LAYOUT = layout.discover(RAW)
RUNS = LAYOUT.runs
BROKEN_NODE_TYPES = LAYOUT.broken_node_types()
NODE_TYPES = sorted(set(RUNS) - set(BROKEN_NODE_TYPES))
# Every node_type with a valid name: its models are requested even when one of its runs is
# broken (they fail with that run, and build once it is fixed); its report files are not.
ALL_NODE_TYPES = sorted(set(RUNS) | set(BROKEN_NODE_TYPES))
for _err in LAYOUT.problems.values():
    sys.stderr.write(f"vmpower: layout problem (its node_type is not built): {_err}\n")
if not RUNS and not LAYOUT.problems:
    sys.stderr.write(f"vmpower: no runs under {RAW}/<node_type>/<run_id>/ (try `make demo-data`)\n")


def layout_checks(wildcards=None):
    """The check_layout outputs of the broken runs (of wildcards.node_type, or all of them)."""
    return [f"{RES}/layout/{nt}/{run}.ok" for nt, run in sorted(LAYOUT.problems)
            if wildcards is None or nt == wildcards.node_type]


wildcard_constraints:
    node_type=layout.NAME,
    run_id=layout.NAME,
    output_type="|".join(OUTPUT_TYPES),
    feature_group="|".join(FEATURE_GROUPS),
    trainer="|".join(TRAINERS),


# Source files of each stage: editing them reruns that stage.
def stage_sources(module):
    """A step's module and everything it imports (src/vmpower/ops/sources.py)."""
    return sources.closure(Path(workflow.basedir) / "src", module)


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


def _run_file(wildcards, kind):
    run = RUNS.get(wildcards.node_type, {}).get(wildcards.run_id)
    if run is None:  # a merged file of a broken or absent run, asked for by name
        key = (wildcards.node_type, wildcards.run_id)
        raise WorkflowError(str(LAYOUT.problems.get(key, f"{RAW}/{key[0]}/{key[1]}: no such run")))
    return run[kind]


def run_vm_file(wildcards):
    return _run_file(wildcards, "vm")


def run_bm_file(wildcards):
    return _run_file(wildcards, "bm")


def merged_runs(wildcards):
    return [f"{RES}/merged/{wildcards.node_type}/{r}.parquet" for r in sorted(RUNS.get(wildcards.node_type, {}))]


def merged_quality(wildcards):
    return [f"{RES}/merged/{wildcards.node_type}/{r}.quality.json" for r in sorted(RUNS.get(wildcards.node_type, {}))]


def machine_specs(wildcards):
    """The optional machine_spec.json of the node_type's valid runs."""
    runs = RUNS.get(wildcards.node_type, {})
    return [str(p) for p in (Path(runs[r]["dir"]) / "machine_spec.json" for r in sorted(runs)) if p.is_file()]


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
    return expand(MODEL_PATH + suffix, node_type=NODE_TYPES if node_types is None else node_types,
                  output_type=OUTPUT_TYPES, feature_group=FEATURE_GROUPS, trainer=TRAINERS)


def node_type_models(wildcards):
    """The exported model directories of one node_type (export_select)."""
    return exported_metadata([wildcards.node_type])


def exported_archives(node_types):
    return exported_metadata(node_types, suffix=".zip")


def provenance_records(node_types=None):
    """Every job's provenance record (the image it ran in), for the final image check."""
    node_types = NODE_TYPES if node_types is None else node_types
    out = [f"{RES}/provenance/merge/{nt}/{r}.json" for nt in node_types for r in sorted(RUNS.get(nt, {}))]
    out += [f"{RES}/provenance/{stage}/{nt}.json" for stage in ("dataset", "isolate") for nt in node_types]
    out += [f"{RES}/provenance/cross_node_type.json"] if NODE_TYPES else []
    out += [
        f"{RES}/provenance/train/{nt}/{ot}/{fg}/{tr}.json"
        for nt in node_types
        for ot in OUTPUT_TYPES
        for fg in FEATURE_GROUPS
        for tr in TRAINERS
    ]
    out += [f"{RES}/provenance/export/{nt}/{ot}/{fg}.json" for nt in node_types for ot in OUTPUT_TYPES for fg in FEATURE_GROUPS]
    out += [f"{RES}/provenance/select/{nt}.json" for nt in node_types]
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
    """Every node_type's models (a broken run's node_type too: they fail with its check_layout
    job); the aggregates and report files over the node_types without a layout problem."""
    aggregates = [
        f"{RES}/summary.csv",
        f"{RES}/cross_node_type.csv",
        f"{RES}/best.json",
        f"{RES}/report.md",
        f"{RES}/provenance/images-checked.txt",
    ] if NODE_TYPES else []
    # report_outputs: rules/report.smk, the figures and tables of `snakemake --report`
    return layout_checks() + exported_archives(ALL_NODE_TYPES) + aggregates + report_outputs()


localrules:
    check_layout,
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
    runs = RUNS.get(nt, {})
    return sorted(f for r in sorted(runs) for f in (runs[r]["vm"], runs[r]["bm"])) + machine_specs(wildcards)


def report_records(wildcards):
    nt = wildcards.node_type
    return [p for p in provenance_records([nt]) if nt in Path(p).parts or Path(p).stem == nt]


def report_outputs():
    """The per-node_type report files (rule all)."""
    names = ("quality.png", "quality.html", "heldout.png", "residuals.png", "importance.png", "metrics.html",
             "provenance.html", "provenance.json")
    # not of a node_type with a layout problem: `snakemake --report` then works on the others
    return [f"{REPORT_DIR}/{nt}/{name}" for nt in NODE_TYPES for name in names]
