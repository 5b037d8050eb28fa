# Stage 1: align each run's VM features with host power, then one dataset per node_type.


# Only for a run with a layout problem (rules/common.smk): always fails, with the one line
# naming its directory (its output is never written), and the node_type's dataset waits for it,
# so only that node_type fails.
rule check_layout:
    input:
        code=stage_sources("vmpower.pipeline.layout"),
    output:
        f"{RES}/layout/{{node_type}}/{{run_id}}.ok",
    params:
        vmpower=VMPOWER,
        raw=RAW,
    log:
        "logs/layout/{node_type}/{run_id}.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} check-layout {params.raw:q} --only {wildcards.node_type:q}/{wildcards.run_id:q} > {log:q} 2>&1"


rule merge_run:
    input:
        vm=run_vm_file,
        bm=run_bm_file,
        code=stage_sources("vmpower.pipeline.merge"),
    output:
        data=f"{RES}/merged/{{node_type}}/{{run_id}}.parquet",
        quality=f"{RES}/merged/{{node_type}}/{{run_id}}.quality.json",
        prov=f"{RES}/provenance/merge/{{node_type}}/{{run_id}}.json",
    params:
        vmpower=VMPOWER,
        settings=settings_json(
            "merge", "ingest", zones=config["zones"], required_zones=config["required_zones"],
            limits=config.get("limits", {}), **features_settings(MERGE_FEATURE_KEYS)
        ),
    log:
        "logs/merge/{node_type}/{run_id}.log",
    benchmark:
        "benchmarks/merge/{node_type}/{run_id}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} --provenance {output.prov:q} merge --vm-features {input.vm:q} --bm-power {input.bm:q}"
        " --output {output.data:q} --quality {output.quality:q} --settings {params.settings:q} > {log:q} 2>&1"


rule merge_dataset:
    input:
        runs=merged_runs,
        quality=merged_quality,
        layout=layout_checks,
        code=stage_sources("vmpower.pipeline.merge"),
    output:
        data=f"{RES}/datasets/{{node_type}}.parquet",
        summary=f"{RES}/datasets/{{node_type}}.summary.json",
        prov=f"{RES}/provenance/dataset/{{node_type}}.json",
    params:
        vmpower=VMPOWER,
        settings=settings_json(zones=config["zones"], **features_settings(ENGINEERING_KEYS)),
    log:
        "logs/dataset/{node_type}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} --provenance {output.prov:q} merge-dataset --inputs {input.runs:q} --quality-inputs {input.quality:q}"
        " --output {output.data:q} --summary {output.summary:q} --settings {params.settings:q} > {log:q} 2>&1"
