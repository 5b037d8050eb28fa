# Stage 5: the build report. report_markdown writes results/report.md; the report_* rules below
# draw the per-node_type figures and tables of `snakemake --report results/report.html`
# (captions: report/*.rst). Three small jobs per node_type, never one per model.

rule report_markdown:
    input:
        summary=f"{RES}/summary.csv",
        best=f"{RES}/best.json",
        datasets=expand(f"{RES}/datasets/{{node_type}}.summary.json", node_type=NODE_TYPES),
        isolation=expand(f"{RES}/isolated/{{node_type}}/isolation.json", node_type=NODE_TYPES),
        code=stage_sources("report"),
    output:
        f"{RES}/report.md",
    params:
        vmpower=VMPOWER,
    log:
        "logs/report/markdown.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} report --summary {input.summary} --best {input.best} --datasets {input.datasets}"
        " --isolation {input.isolation} --output {output} > {log} 2>&1"


rule report_quality:
    input:
        quality=merged_quality,
        code=stage_sources("report"),
    output:
        figure=report(
            f"{REPORT_DIR}/{{node_type}}/quality.png",
            caption="../report/quality.rst",
            category="{node_type}",
            subcategory="1. data quality",
            labels={"node_type": "{node_type}", "figure": "data quality per run"},
        ),
        table=report(
            f"{REPORT_DIR}/{{node_type}}/quality.html",
            caption="../report/quality_table.rst",
            category="{node_type}",
            subcategory="1. data quality",
            labels={"node_type": "{node_type}", "figure": "data quality table"},
        ),
        prov=f"{RES}/provenance/report/{{node_type}}/quality.json",
    params:
        vmpower=VMPOWER,
    log:
        "logs/report/{node_type}/quality.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} --provenance {output.prov} report-quality --node-type {wildcards.node_type}"
        " --quality {input.quality} --figure {output.figure} --table {output.table} > {log} 2>&1"


rule report_models:
    input:
        summary=f"{RES}/select/{{node_type}}.summary.csv",
        best=f"{RES}/select/{{node_type}}.best.json",
        holdouts=report_holdouts,
        tree_models=report_tree_models,
        code=stage_sources("report"),
    output:
        heldout=report(
            f"{REPORT_DIR}/{{node_type}}/heldout.png",
            caption="../report/heldout.rst",
            category="{node_type}",
            subcategory="2. held-out predictions",
            labels={"node_type": "{node_type}", "figure": "predicted vs measured"},
        ),
        residuals=report(
            f"{REPORT_DIR}/{{node_type}}/residuals.png",
            caption="../report/residuals.rst",
            category="{node_type}",
            subcategory="2. held-out predictions",
            labels={"node_type": "{node_type}", "figure": "residuals"},
        ),
        importance=report(
            f"{REPORT_DIR}/{{node_type}}/importance.png",
            caption="../report/importance.rst",
            category="{node_type}",
            subcategory="3. models",
            labels={"node_type": "{node_type}", "figure": "feature importance (tree models)"},
        ),
        metrics=report(
            f"{REPORT_DIR}/{{node_type}}/metrics.html",
            caption="../report/metrics.rst",
            category="{node_type}",
            subcategory="3. models",
            labels={"node_type": "{node_type}", "figure": "metrics of all trainers and feature groups"},
        ),
        prov=f"{RES}/provenance/report/{{node_type}}/models.json",
    params:
        vmpower=VMPOWER,
    log:
        "logs/report/{node_type}/models.log",
    benchmark:
        "benchmarks/report/{node_type}/models.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} --provenance {output.prov} report-models --node-type {wildcards.node_type}"
        " --summary {input.summary} --best {input.best} --holdouts {input.holdouts}"
        " --tree-models {input.tree_models} --heldout-figure {output.heldout}"
        " --residuals-figure {output.residuals} --importance-figure {output.importance}"
        " --metrics-table {output.metrics} > {log} 2>&1"


rule report_provenance:
    input:
        raw=report_raw_files,
        records=report_records,
        locks=REPORT_LOCKS,
        image_lock=runtime.lock_path(config),
        code=stage_sources("report"),
    output:
        html=report(
            f"{REPORT_DIR}/{{node_type}}/provenance.html",
            caption="../report/provenance.rst",
            category="{node_type}",
            subcategory="4. provenance",
            labels={"node_type": "{node_type}", "figure": "provenance"},
        ),
        json=f"{REPORT_DIR}/{{node_type}}/provenance.json",
        prov=f"{RES}/provenance/report/{{node_type}}/provenance.json",
    params:
        vmpower=VMPOWER,
    log:
        "logs/report/{node_type}/provenance.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} --provenance {output.prov} report-provenance --node-type {wildcards.node_type}"
        " --inputs {input.raw:q} --records {input.records} --locks {input.locks} --image-lock {input.image_lock}"
        " --json {output.json} --html {output.html} > {log} 2>&1"
