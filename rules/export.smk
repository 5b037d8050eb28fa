# Stage 4: ONNX per zone + Kepler archive per model (one job per node_type x output type x feature
# group exports all its trainers: the converters take seconds to import, a model well under one);
# then the best models and the summary.


rule export_models:
    input:
        models=per_trainer("model"),
        metrics=per_trainer("metrics"),
        holdouts=per_trainer("holdout"),
        isolation=get_isolation,
        spec=get_machine_specs,
        lock="envs/pipeline.lock",
        code=stage_sources("vmpower.pipeline.export"),
    output:
        model_dirs=directory(per_trainer("exported")),
        archives=per_trainer("archive"),
        prov=PATHS["prov_export"],
    params:
        vmpower=VMPOWER,
        trainers=TRAINERS,
        settings=settings_json("export", ingest=config["ingest"]),
    log:
        "logs/export/{node_type}/{output_type}/{feature_group}.log",
    benchmark:
        "benchmarks/export/{node_type}/{output_type}/{feature_group}.tsv"
    resources:
        **attempt_scaled(mem_mb=2000, runtime=30),
    conda:
        CONDA_ENV
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
        models=get_node_type_models,
        code=stage_sources("vmpower.pipeline.selection"),
    output:
        summary=PATHS["select_summary"],
        best=PATHS["select_best"],
        prov=PATHS["prov_select"],
    params:
        vmpower=VMPOWER,
    log:
        "logs/export/select/{node_type}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} --provenance {output.prov:q} select --models {input.models:q}"
        " --summary {output.summary:q} --best {output.best:q} > {log:q} 2>&1"


rule export_summary:
    input:
        summaries=expand(PATHS["select_summary"], node_type=NODE_TYPES),
        best=expand(PATHS["select_best"], node_type=NODE_TYPES),
        code=stage_sources("vmpower.pipeline.selection"),
    output:
        summary=PATHS["summary"],
        best=PATHS["best"],
        prov=PATHS["prov_summary"],
    params:
        vmpower=VMPOWER,
    log:
        "logs/export/summary.log",
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} --provenance {output.prov:q} summary --summaries {input.summaries:q} --best {input.best:q}"
        " --summary-output {output.summary:q} --best-output {output.best:q} > {log:q} 2>&1"


rule export_check_images:
    input:
        prov=provenance_records(),
        lock=runtime.lock_path(config),
    output:
        PATHS["images_checked"],
    params:
        vmpower=VMPOWER,
        runtime=config["runtime"],
    log:
        "logs/export/check_images.log",
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} check-images --runtime {params.runtime:q} --lock {input.lock:q} --ok-file {output:q}"
        " {input.prov:q} > {log:q} 2>&1"
