# Stage 4: ONNX per zone + Kepler archive per model; then the best models and the summary.


rule export_model:
    input:
        model=f"{RES}/train/{{node_type}}/{{output_type}}/{{feature_group}}/{{trainer}}/model.joblib",
        metrics=f"{RES}/train/{{node_type}}/{{output_type}}/{{feature_group}}/{{trainer}}/metrics.json",
        holdout=f"{RES}/train/{{node_type}}/{{output_type}}/{{feature_group}}/{{trainer}}/holdout.parquet",
        # the training data: per-feature ranges and the newest sample's time for metadata.json
        dataset=f"{RES}/isolated/{{node_type}}/{{output_type}}.parquet",
        isolation=export_isolation,
        spec=machine_specs,
        lock="envs/pipeline.lock",
        code=stage_sources("export", "train"),
    output:
        model_dir=directory(f"{RES}/models/{{output_type}}/{{feature_group}}/{{trainer}}Trainer_{{node_type}}"),
        archive=f"{RES}/models/{{output_type}}/{{feature_group}}/{{trainer}}Trainer_{{node_type}}.zip",
        prov=f"{RES}/provenance/export/{{node_type}}/{{output_type}}/{{feature_group}}/{{trainer}}.json",
    params:
        vmpower=VMPOWER,
        settings=settings_json("export", ingest=config["ingest"]),
    log:
        "logs/export/{node_type}/{output_type}/{feature_group}/{trainer}.log",
    benchmark:
        "benchmarks/export/{node_type}/{output_type}/{feature_group}/{trainer}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} --provenance {output.prov} export --model {input.model} --metrics {input.metrics}"
        " --holdout {input.holdout} --dataset {input.dataset} --isolation {input.isolation}"
        " --machine-spec {input.spec} --lock {input.lock}"
        " --node-type {wildcards.node_type} --output-type {wildcards.output_type}"
        " --feature-group {wildcards.feature_group} --trainer {wildcards.trainer}"
        " --out-dir {output.model_dir} --archive {output.archive} --settings {params.settings:q} > {log} 2>&1"


# The best model per output type and feature group of one node_type (so a new run of one
# node_type never reruns another's report), then the summary of all node_types.
rule export_select:
    input:
        models=node_type_models,
        code=stage_sources("export"),
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
        "{params.vmpower} --provenance {output.prov} select --models {input.models}"
        " --summary {output.summary} --best {output.best} > {log} 2>&1"


rule export_summary:
    input:
        summaries=expand(f"{RES}/select/{{node_type}}.summary.csv", node_type=NODE_TYPES),
        best=expand(f"{RES}/select/{{node_type}}.best.json", node_type=NODE_TYPES),
        code=stage_sources("export"),
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
        "{params.vmpower} --provenance {output.prov} summary --summaries {input.summaries} --best {input.best}"
        " --summary-output {output.summary} --best-output {output.best} > {log} 2>&1"


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
        "{params.vmpower} check-images --runtime {params.runtime} --lock {input.lock} --ok-file {output}"
        " {input.prov} > {log} 2>&1"
