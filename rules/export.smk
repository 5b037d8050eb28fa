# Stage 4: ONNX per zone + Kepler archive per model (one job per node_type x output type x feature
# group exports all its trainers: the converters take seconds to import, a model well under one);
# then the best models and the summary.


rule export_models:
    input:
        models=train_outputs("model.joblib"),
        metrics=train_outputs("metrics.json"),
        holdouts=train_outputs("holdout.parquet"),
        isolation=export_isolation,
        spec=machine_specs,
        lock="envs/pipeline.lock",
        code=stage_sources("vmpower.pipeline.export"),
    output:
        model_dirs=directory(exported_models("")),
        archives=exported_models(".zip"),
        prov=f"{RES}/provenance/export/{{node_type}}/{{output_type}}/{{feature_group}}.json",
    params:
        vmpower=VMPOWER,
        trainers=TRAINERS,
        settings=settings_json("export", ingest=config["ingest"]),
    log:
        "logs/export/{node_type}/{output_type}/{feature_group}.log",
    benchmark:
        "benchmarks/export/{node_type}/{output_type}/{feature_group}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} --provenance {output.prov:q} export --trainer {params.trainers:q} --model {input.models:q}"
        " --metrics {input.metrics:q} --holdout {input.holdouts:q} --isolation {input.isolation:q}"
        " --machine-spec {input.spec:q} --lock {input.lock:q}"
        " --node-type {wildcards.node_type:q} --output-type {wildcards.output_type:q}"
        " --feature-group {wildcards.feature_group:q} --out-dir {output.model_dirs:q} --archive {output.archives:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"


# The best model per output type and feature group of one node_type (so a new run of one
# node_type never reruns another's report), then the summary of all node_types.
rule export_select:
    input:
        models=node_type_models,
        code=stage_sources("vmpower.pipeline.selection"),
    output:
        summary=f"{RES}/select/{{node_type}}.summary.csv",
        best=f"{RES}/select/{{node_type}}.best.json",
        prov=f"{RES}/provenance/select/{{node_type}}.json",
    params:
        vmpower=VMPOWER,
    log:
        "logs/export/select/{node_type}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} --provenance {output.prov:q} select --models {input.models:q}"
        " --summary {output.summary:q} --best {output.best:q} > {log:q} 2>&1"


rule export_summary:
    input:
        summaries=expand(f"{RES}/select/{{node_type}}.summary.csv", node_type=NODE_TYPES),
        best=expand(f"{RES}/select/{{node_type}}.best.json", node_type=NODE_TYPES),
        code=stage_sources("vmpower.pipeline.selection"),
    output:
        summary=f"{RES}/summary.csv",
        best=f"{RES}/best.json",
        prov=f"{RES}/provenance/select.json",
    params:
        vmpower=VMPOWER,
    log:
        "logs/export/summary.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} --provenance {output.prov:q} summary --summaries {input.summaries:q} --best {input.best:q}"
        " --summary-output {output.summary:q} --best-output {output.best:q} > {log:q} 2>&1"


rule export_check_images:
    input:
        prov=provenance_records(),
        lock=runtime.lock_path(config),
    output:
        f"{RES}/provenance/images-checked.txt",
    params:
        vmpower=VMPOWER,
        runtime=config["runtime"],
    log:
        "logs/export/check_images.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} check-images --runtime {params.runtime:q} --lock {input.lock:q} --ok-file {output:q}"
        " {input.prov:q} > {log:q} 2>&1"
