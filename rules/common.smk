# The workflow's common part, in reading order: config validation, the runs found under
# raw_dir, the path table, what a step is given (command, resources, settings, sources), the
# get_* input functions in stage order, and the final targets.
import dataclasses
import functools
import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from vmpower import configcheck, names  # noqa: E402
from vmpower.ops import buildstate, runtime, sources  # noqa: E402
from vmpower.pipeline import layout, paramcheck  # noqa: E402
from vmpower.pipeline.merge import MergeSettings  # noqa: E402

# ---------------------------------------------------------------- validation

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
TREE_TRAINERS = [t for t in TRAINERS if t in names.TREE_TRAINERS]

for _group in FEATURE_GROUPS:
    if _group not in config["features"]["groups"]:
        raise WorkflowError(f"config.yaml: train.feature_groups names {_group!r}, not defined in features.groups")

# ---------------------------------------------------------------- runs

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


wildcard_constraints:
    node_type=layout.NAME,
    run_id=layout.NAME,
    output_type="|".join(OUTPUT_TYPES),
    feature_group="|".join(FEATURE_GROUPS),
    trainer="|".join(TRAINERS),


# The model compared across node_types (train.cross_node_type); a choice this build does not
# train (e.g. a config with other trainers) falls back to the first one it does.
def _built_or_first(wanted, built):
    return wanted if wanted in built else built[0]


_CROSS = TRAIN.get("cross_node_type", {})
CROSS = {
    "output_type": _built_or_first(_CROSS.get("output_type"), OUTPUT_TYPES),
    "feature_group": _built_or_first(_CROSS.get("feature_group"), FEATURE_GROUPS),
    "trainer": _built_or_first(_CROSS.get("trainer"), TRAINERS),
}
CROSS_MODEL = "{output_type}/{feature_group}/{trainer}".format(**CROSS)

# ---------------------------------------------------------------- paths

# Every file the rules write, spelled once: rule outputs, input functions and targets take it
# from here. {...} are wildcards; path() fills some of them in, expand() makes lists.
_TRAINED = f"{RES}/train/{{node_type}}/{{output_type}}/{{feature_group}}/{{trainer}}"
_EXPORTED = f"{RES}/models/{{output_type}}/{{feature_group}}/{names.model_name('{trainer}', '{node_type}')}"
_PROV = f"{RES}/provenance"  # one record per job: where it ran (vmpower.ops.provenance)
PATHS = {
    # stage 1, rules/merge.smk
    "layout_check": f"{RES}/layout/{{node_type}}/{{run_id}}.ok",
    "merged": f"{RES}/merged/{{node_type}}/{{run_id}}.parquet",
    "merged_quality": f"{RES}/merged/{{node_type}}/{{run_id}}.quality.json",
    "dataset": f"{RES}/datasets/{{node_type}}.parquet",
    "dataset_summary": f"{RES}/datasets/{{node_type}}.summary.json",
    # stage 2, rules/isolate.smk
    "isolated": f"{RES}/isolated/{{node_type}}/{{output_type}}.parquet",
    "isolation": f"{RES}/isolated/{{node_type}}/isolation.json",
    # stage 3, rules/train.smk
    "model": f"{_TRAINED}/model.joblib",
    "metrics": f"{_TRAINED}/metrics.json",
    "holdout": f"{_TRAINED}/holdout.parquet",
    "cross_node_type": f"{RES}/cross_node_type.csv",
    # stage 4, rules/export.smk: a model's directory (ONNX, metadata) and its Kepler archive
    "exported": _EXPORTED,
    "archive": f"{_EXPORTED}.zip",
    "select_summary": f"{RES}/select/{{node_type}}.summary.csv",
    "select_best": f"{RES}/select/{{node_type}}.best.json",
    "summary": f"{RES}/summary.csv",
    "best": f"{RES}/best.json",
    "images_checked": f"{_PROV}/images-checked.txt",
    # stage 4b, rules/pinning.smk: the CPU pinning recommendation (EP-003 FR5)
    "pinning_json": f"{RES}/pinning/{{node_type}}.json",
    "pinning_md": f"{RES}/pinning/{{node_type}}.md",
    # stage 5, rules/report.smk ({name}: a figure or table of `snakemake --report`)
    "report_md": f"{RES}/report.md",
    "report_file": f"{RES}/report/{{node_type}}/{{name}}",
    # provenance records, per stage
    "prov_merge": f"{_PROV}/merge/{{node_type}}/{{run_id}}.json",
    "prov_dataset": f"{_PROV}/dataset/{{node_type}}.json",
    "prov_isolate": f"{_PROV}/isolate/{{node_type}}.json",
    "prov_train": f"{_PROV}/train/{{node_type}}/{{output_type}}/{{feature_group}}/{{trainer}}.json",
    "prov_cross": f"{_PROV}/cross_node_type.json",
    "prov_export": f"{_PROV}/export/{{node_type}}/{{output_type}}/{{feature_group}}.json",
    "prov_select": f"{_PROV}/select/{{node_type}}.json",
    "prov_summary": f"{_PROV}/select.json",
    "prov_pinning": f"{_PROV}/pinning/{{node_type}}.json",
    "prov_report": f"{_PROV}/report/{{node_type}}/{{name}}.json",
}


class _KeepWildcards(dict):
    def __missing__(self, key):
        return f"{{{key}}}"


def path(key, **wildcards):
    """PATHS[key] with the given wildcards filled in; the others stay wildcards."""
    return PATHS[key].format_map(_KeepWildcards(wildcards))


def per_trainer(key):
    """PATHS[key] of every trainer (in TRAINERS order), the job's other wildcards kept."""
    return expand(PATHS[key], trainer=TRAINERS, allow_missing=True)


# ---------------------------------------------------------------- what a step is given

# The command that runs one vmpower step: locally, or inside the pinned image. A shell prefix
# quoted by runtime.command, the one field the rules' shell commands leave unquoted: every
# other field is written {...:q} (a path from data/raw is never read by the shell). It is a
# param of every rule, so that switching `runtime` reruns the steps (their provenance changes).
# `--sdm apptainer` / `--sdm conda` wrap each job themselves: run plain `python -m vmpower` in it.
_SDM = {m.name.lower() for m in workflow.deployment_settings.deployment_method}
if config["runtime"] == "local" and "apptainer" in _SDM:
    config["runtime"] = "apptainer"
elif config["runtime"] == "local" and "conda" in _SDM:
    config["runtime"] = "conda"
VMPOWER = runtime.command(config, "pipeline")
# The image of the Snakefile's global `container:` (used by `--sdm apptainer`).
PIPELINE_IMAGE = runtime.container_ref(config, "pipeline")
# For `--sdm conda` (with runtime=conda): the same locked packages, installed by conda + pip.
# Snakemake has no workflow-wide per-job conda env (a global `conda:` changes Snakemake's own
# environment), so each rule names this one.
CONDA_ENV = "../envs/pipeline.conda.yaml"


def attempt_scaled(**first):
    """A job's resources: `first` on its first attempt (mem_mb in MB, runtime in minutes), and
    attempt x that on a retry (profiles/slurm `retries`). A local build schedules with the
    first values, SLURM gets them as the sbatch request. Each rule that runs on SLURM sets
    them, there only; a local rule (localrules) needs none."""
    return {name: functools.partial(_scaled, value=value) for name, value in first.items()}


def _scaled(wildcards, attempt, value):
    """One resource of attempt_scaled (Snakemake passes the job's wildcards and attempt)."""
    return value * attempt


# What a step reads of the config, as JSON for its --settings: a change reruns exactly the steps
# whose JSON changed (Snakemake's params trigger), so a step gets its own sections whole and only
# the keys it reads of a shared section.
def settings_json(*sections, **extra):
    """The config sections a step reads (flattened) plus `extra` keys."""
    data = {}
    for section in sections:
        value = config[section]
        data.update(value if isinstance(value, dict) else {section: value})
    data.update(extra)
    return json.dumps(data, sort_keys=True)


def read_by(settings_class, section):
    """The keys of config[section] that a step's typed settings class declares."""
    fields = {f.name for f in dataclasses.fields(settings_class)}
    return {k: v for k, v in config[section].items() if k in fields}


# Feature engineering (vmpower.pipeline.engineer): the features section but its groups (a train
# job gets its own group's patterns).
ENGINEERING = {k: v for k, v in config["features"].items() if k != "groups"}


def stage_sources(module):
    """A step's module and everything it imports (src/vmpower/ops/sources.py): editing one
    of these files reruns that step."""
    return sources.closure(Path(workflow.basedir) / "src", module)


# ---------------------------------------------------------------- input functions (get_*)


def get_layout_checks(wildcards=None):
    """The check_layout outputs of the broken runs (of wildcards.node_type, or all of them)."""
    return [path("layout_check", node_type=nt, run_id=run) for nt, run in sorted(LAYOUT.problems)
            if wildcards is None or nt == wildcards.node_type]


def get_run_files(wildcards):
    """merge_run: the run's VM features and host power files."""
    run = RUNS.get(wildcards.node_type, {}).get(wildcards.run_id)
    if run is None:  # a merged file of a broken or absent run, asked for by name
        key = (wildcards.node_type, wildcards.run_id)
        raise WorkflowError(str(LAYOUT.problems.get(key, f"{RAW}/{key[0]}/{key[1]}: no such run")))
    return {"vm": run["vm"], "bm": run["bm"]}


def _runs_of(wildcards):
    return sorted(RUNS.get(wildcards.node_type, {}))


def get_merged_runs(wildcards):
    """merge_dataset: the node_type's merged runs."""
    return expand(PATHS["merged"], node_type=wildcards.node_type, run_id=_runs_of(wildcards))


def get_run_quality(wildcards):
    """merge_dataset, report_quality: the quality record of each of the node_type's runs."""
    return expand(PATHS["merged_quality"], node_type=wildcards.node_type, run_id=_runs_of(wildcards))


def get_train_settings(wildcards):
    """train_model --settings: the train section, the job's feature group and the engineering."""
    return json.dumps(
        {**TRAIN, "patterns": config["features"]["groups"][wildcards.feature_group], "engineering": ENGINEERING},
        sort_keys=True,
    )


def cross_node_type_files(key):
    """train_cross_node_type: PATHS[key] of the compared model for every node_type."""
    return expand(path(key, **CROSS), node_type=NODE_TYPES)


def get_isolation(wildcards):
    """export_models: DynPower models record their isolator (the idle watts subtracted)."""
    return [path("isolation", node_type=wildcards.node_type)] if wildcards.output_type == "DynPower" else []


def get_machine_specs(wildcards):
    """export_models, report_provenance: the optional machine_spec.json of the node_type's runs."""
    runs = RUNS.get(wildcards.node_type, {})
    return [str(p) for p in (Path(runs[r]["dir"]) / "machine_spec.json" for r in sorted(runs)) if p.is_file()]


def _exported(key, node_types):
    return expand(PATHS[key], node_type=node_types, output_type=OUTPUT_TYPES, feature_group=FEATURE_GROUPS,
                  trainer=TRAINERS)


def get_node_type_models(wildcards):
    """export_select: the exported model directories of one node_type."""
    return _exported("exported", [wildcards.node_type])


def provenance_records(node_types=None):
    """Every job's provenance record but the report's (the image it ran in), for the image check."""
    nts = NODE_TYPES if node_types is None else node_types
    out = [path("prov_merge", node_type=nt, run_id=r) for nt in nts for r in sorted(RUNS.get(nt, {}))]
    out += [path(f"prov_{stage}", node_type=nt) for stage in ("dataset", "isolate") for nt in nts]
    out += [PATHS["prov_cross"]] if NODE_TYPES else []
    out += expand(PATHS["prov_train"], node_type=nts, output_type=OUTPUT_TYPES, feature_group=FEATURE_GROUPS,
                  trainer=TRAINERS)
    out += expand(PATHS["prov_export"], node_type=nts, output_type=OUTPUT_TYPES, feature_group=FEATURE_GROUPS)
    out += expand(PATHS["prov_select"], node_type=nts)
    out += expand(PATHS["prov_pinning"], node_type=nts)
    return out + [PATHS["prov_summary"]]


def get_layout_problems(wildcards):
    """report_markdown: the layout problems, one line each (a function: a string param would be
    read as a wildcard pattern, '{' in a file name)."""
    return [str(err) for err in LAYOUT.problems.values()]


def get_pinning_holdouts(wildcards):
    """pinning_analyse: the node_type's AbsPower held-out predictions (the best one is read)."""
    return expand(PATHS["holdout"], node_type=wildcards.node_type, output_type="AbsPower",
                  feature_group=FEATURE_GROUPS, trainer=TRAINERS)


def get_report_holdouts(wildcards):
    """report_models: the held-out predictions of every model of the node_type."""
    return expand(PATHS["holdout"], node_type=wildcards.node_type, output_type=OUTPUT_TYPES,
                  feature_group=FEATURE_GROUPS, trainer=TRAINERS)


def get_report_tree_models(wildcards):
    """report_models: the node_type's tree models (feature importance)."""
    return expand(PATHS["model"], node_type=wildcards.node_type, output_type=OUTPUT_TYPES,
                  feature_group=FEATURE_GROUPS, trainer=TREE_TRAINERS)


def get_report_raw_files(wildcards):
    """report_provenance: the node_type's raw files (their checksums)."""
    runs = RUNS.get(wildcards.node_type, {})
    return sorted(f for r in sorted(runs) for f in (runs[r]["vm"], runs[r]["bm"])) + get_machine_specs(wildcards)


def get_report_records(wildcards):
    """report_provenance: the provenance records of the node_type's jobs."""
    nt = wildcards.node_type
    return [p for p in provenance_records([nt]) if nt in Path(p).parts or Path(p).stem == nt]


# ---------------------------------------------------------------- targets

# Small steps run on the submit host under a cluster executor (profiles/slurm).
localrules:
    check_layout,
    export_select,
    export_summary,
    export_check_images,
    report_markdown,


# The figures and tables of `snakemake --report` (rules/report.smk), per node_type.
REPORT_FILES = ("quality.png", "quality.html", "heldout.png", "residuals.png", "importance.png", "metrics.html",
                "provenance.html", "provenance.json")


def get_final_outputs():
    """Every node_type's models (a broken run's node_type too: they fail with its check_layout
    job); the aggregates and report files over the node_types without a layout problem (so
    that `snakemake --report` works on the others)."""
    aggregates = [PATHS[key] for key in ("summary", "cross_node_type", "best", "report_md", "images_checked")]
    return (
        get_layout_checks()
        + _exported("archive", ALL_NODE_TYPES)
        + (aggregates if NODE_TYPES else [])
        + expand(PATHS["report_file"], node_type=NODE_TYPES, name=REPORT_FILES)
        + expand(PATHS["pinning_json"], node_type=NODE_TYPES)
    )
