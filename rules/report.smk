# Stage 5: the build report. report_markdown writes results/report.md; the report_* rules below
# draw the per-node_type figures and tables of `snakemake --report results/report.html`
# (captions: report/*.rst). Three small jobs per node_type, never one per model.

rule report_markdown:
    input:
        summary=PATHS["summary"],
        best=PATHS["best"],
        datasets=expand(PATHS["dataset_summary"], node_type=NODE_TYPES),
        isolation=expand(PATHS["isolation"], node_type=NODE_TYPES),
        pinning=expand(PATHS["pinning_md"], node_type=NODE_TYPES),
        code=stage_sources("vmpower.pipeline.report"),
    output:
        PATHS["report_md"],
    params:
        vmpower=VMPOWER,
        layout_problems=get_layout_problems,
    log:
        "logs/report/markdown.log",
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} report --summary {input.summary:q} --best {input.best:q} --datasets {input.datasets:q}"
        " --isolation {input.isolation:q} --pinning {input.pinning:q} --layout-problems {params.layout_problems:q}"
        " --output {output:q} > {log:q} 2>&1"


rule report_quality:
    input:
        quality=get_run_quality,
        code=stage_sources("vmpower.pipeline.report"),
    output:
        figure=report(
            path("report_file", name="quality.png"),
            caption="../report/quality.rst",
            category="{node_type}",
            subcategory="1. data quality",
            labels={"node_type": "{node_type}", "figure": "data quality per run"},
        ),
        table=report(
            path("report_file", name="quality.html"),
            caption="../report/quality_table.rst",
            category="{node_type}",
            subcategory="1. data quality",
            labels={"node_type": "{node_type}", "figure": "data quality table"},
        ),
        prov=path("prov_report", name="quality"),
    params:
        vmpower=VMPOWER,
    log:
        "logs/report/{node_type}/quality.log",
    resources:
        **attempt_scaled(mem_mb=1000, runtime=5),
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} --provenance {output.prov:q} report-quality --node-type {wildcards.node_type:q}"
        " --quality {input.quality:q} --figure {output.figure:q} --table {output.table:q} > {log:q} 2>&1"


rule report_models:
    input:
        summary=PATHS["select_summary"],
        best=PATHS["select_best"],
        holdouts=get_report_holdouts,
        tree_models=get_report_tree_models,
        code=stage_sources("vmpower.pipeline.report"),
    output:
        heldout=report(
            path("report_file", name="heldout.png"),
            caption="../report/heldout.rst",
            category="{node_type}",
            subcategory="2. held-out predictions",
            labels={"node_type": "{node_type}", "figure": "predicted vs measured"},
        ),
        residuals=report(
            path("report_file", name="residuals.png"),
            caption="../report/residuals.rst",
            category="{node_type}",
            subcategory="2. held-out predictions",
            labels={"node_type": "{node_type}", "figure": "residuals"},
        ),
        importance=report(
            path("report_file", name="importance.png"),
            caption="../report/importance.rst",
            category="{node_type}",
            subcategory="3. models",
            labels={"node_type": "{node_type}", "figure": "feature importance (tree models)"},
        ),
        metrics=report(
            path("report_file", name="metrics.html"),
            caption="../report/metrics.rst",
            category="{node_type}",
            subcategory="3. models",
            labels={"node_type": "{node_type}", "figure": "metrics of all trainers and feature groups"},
        ),
        prov=path("prov_report", name="models"),
    params:
        vmpower=VMPOWER,
    log:
        "logs/report/{node_type}/models.log",
    benchmark:
        "benchmarks/report/{node_type}/models.tsv"
    resources:
        **attempt_scaled(mem_mb=2000, runtime=10),
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} --provenance {output.prov:q} report-models --node-type {wildcards.node_type:q}"
        " --summary {input.summary:q} --best {input.best:q} --holdouts {input.holdouts:q}"
        " --tree-models {input.tree_models:q} --heldout-figure {output.heldout:q}"
        " --residuals-figure {output.residuals:q} --importance-figure {output.importance:q}"
        " --metrics-table {output.metrics:q} > {log:q} 2>&1"


rule report_provenance:
    input:
        raw=get_report_raw_files,
        records=get_report_records,
        locks=["envs/pipeline.lock", "envs/collect.lock", "envs/dev.lock"],
        image_lock=runtime.lock_path(config),
        code=stage_sources("vmpower.pipeline.report"),
    output:
        html=report(
            path("report_file", name="provenance.html"),
            caption="../report/provenance.rst",
            category="{node_type}",
            subcategory="4. provenance",
            labels={"node_type": "{node_type}", "figure": "provenance"},
        ),
        json=path("report_file", name="provenance.json"),
        prov=path("prov_report", name="provenance"),
    params:
        vmpower=VMPOWER,
    log:
        "logs/report/{node_type}/provenance.log",
    resources:
        **attempt_scaled(mem_mb=1000, runtime=5),
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} --provenance {output.prov:q} report-provenance --node-type {wildcards.node_type:q}"
        " --inputs {input.raw:q} --records {input.records:q} --locks {input.locks:q} --image-lock {input.image_lock:q}"
        " --json {output.json:q} --html {output.html:q} > {log:q} 2>&1"
