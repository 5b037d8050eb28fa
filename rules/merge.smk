# Stage 1: align each run's VM features with host power, then one dataset per node_type.


# Only for a run with a layout problem (rules/common.smk): always fails, with the one line
# naming its directory (its output is never written), and the node_type's dataset waits for it,
# so only that node_type fails.
rule check_layout:
    input:
        code=stage_sources("vmpower.pipeline.layout"),
    output:
        PATHS["layout_check"],
    params:
        vmpower=VMPOWER,
        raw=RAW,
    log:
        "logs/layout/{node_type}/{run_id}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} check-layout {params.raw:q} --only {wildcards.node_type:q}/{wildcards.run_id:q} > {log:q} 2>&1"


rule merge_run:
    input:
        unpack(get_run_files),
        code=stage_sources("vmpower.pipeline.merge"),
    output:
        data=PATHS["merged"],
        quality=PATHS["merged_quality"],
        prov=PATHS["prov_merge"],
    params:
        vmpower=VMPOWER,
        settings=settings_json(
            "merge", "ingest", zones=config["zones"], required_zones=config["required_zones"],
            limits=config.get("limits", {}), **read_by(MergeSettings, "features")
        ),
    log:
        "logs/merge/{node_type}/{run_id}.log",
    benchmark:
        "benchmarks/merge/{node_type}/{run_id}.tsv"
    resources:
        **attempt_scaled(mem_mb=2000, runtime=15),
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} --provenance {output.prov:q} merge --vm-features {input.vm:q} --bm-power {input.bm:q}"
        " --output {output.data:q} --quality {output.quality:q} --settings {params.settings:q} > {log:q} 2>&1"


rule merge_dataset:
    input:
        runs=get_merged_runs,
        quality=get_run_quality,
        layout=get_layout_checks,
        code=stage_sources("vmpower.pipeline.merge"),
    output:
        data=PATHS["dataset"],
        summary=PATHS["dataset_summary"],
        prov=PATHS["prov_dataset"],
    params:
        vmpower=VMPOWER,
        settings=settings_json(zones=config["zones"], **ENGINEERING),
    log:
        "logs/dataset/{node_type}.log",
    resources:
        **attempt_scaled(mem_mb=2000, runtime=10),
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} --provenance {output.prov:q} merge-dataset --inputs {input.runs:q} --quality-inputs {input.quality:q}"
        " --output {output.data:q} --summary {output.summary:q} --settings {params.settings:q} > {log:q} 2>&1"
