# Stage 5: the build report. report_markdown writes results/report.md; the report_* rules below
# draw the per-node_type figures and tables of `snakemake --report results/report.html`
# (captions: report/*.rst). Three small jobs per node_type, never one per model.

rule report_markdown:
    input:
        summary=f"{RES}/summary.csv",
        best=f"{RES}/best.json",
        datasets=expand(f"{RES}/datasets/{{node_type}}.summary.json", node_type=NODE_TYPES),
        isolation=expand(f"{RES}/isolated/{{node_type}}/isolation.json", node_type=NODE_TYPES),
        code=stage_sources("vmpower.pipeline.report"),
    output:
        f"{RES}/report.md",
    params:
        vmpower=VMPOWER,
        # a function: a string param would be read as a wildcard pattern ('{' in a file name)
        layout_problems=lambda wildcards: [str(err) for err in LAYOUT.problems.values()],
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
        "{params.vmpower} report --summary {input.summary:q} --best {input.best:q} --datasets {input.datasets:q}"
        " --isolation {input.isolation:q} --layout-problems {params.layout_problems:q} --output {output:q} > {log:q} 2>&1"


rule report_quality:
    input:
        quality=merged_quality,
        code=stage_sources("vmpower.pipeline.report"),
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
        "{params.vmpower} --provenance {output.prov:q} report-quality --node-type {wildcards.node_type:q}"
        " --quality {input.quality:q} --figure {output.figure:q} --table {output.table:q} > {log:q} 2>&1"


rule report_models:
    input:
        summary=f"{RES}/select/{{node_type}}.summary.csv",
        best=f"{RES}/select/{{node_type}}.best.json",
        holdouts=report_holdouts,
        tree_models=report_tree_models,
        code=stage_sources("vmpower.pipeline.report"),
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
        "{params.vmpower} --provenance {output.prov:q} report-models --node-type {wildcards.node_type:q}"
        " --summary {input.summary:q} --best {input.best:q} --holdouts {input.holdouts:q}"
        " --tree-models {input.tree_models:q} --heldout-figure {output.heldout:q}"
        " --residuals-figure {output.residuals:q} --importance-figure {output.importance:q}"
        " --metrics-table {output.metrics:q} > {log:q} 2>&1"


rule report_provenance:
    input:
        raw=report_raw_files,
        records=report_records,
        locks=REPORT_LOCKS,
        image_lock=runtime.lock_path(config),
        code=stage_sources("vmpower.pipeline.report"),
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
        "{params.vmpower} --provenance {output.prov:q} report-provenance --node-type {wildcards.node_type:q}"
        " --inputs {input.raw:q} --records {input.records:q} --locks {input.locks:q} --image-lock {input.image_lock:q}"
        " --json {output.json:q} --html {output.html:q} > {log:q} 2>&1"
