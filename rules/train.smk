# Stage 3: one job per node_type x output type x feature group x trainer; it trains all zones.


rule train_model:
    input:
        data=f"{RES}/isolated/{{node_type}}/{{output_type}}.parquet",
        code=stage_sources("vmpower.pipeline.train"),
    output:
        model=f"{RES}/train/{{node_type}}/{{output_type}}/{{feature_group}}/{{trainer}}/model.joblib",
        metrics=f"{RES}/train/{{node_type}}/{{output_type}}/{{feature_group}}/{{trainer}}/metrics.json",
        holdout=f"{RES}/train/{{node_type}}/{{output_type}}/{{feature_group}}/{{trainer}}/holdout.parquet",
        prov=f"{RES}/provenance/train/{{node_type}}/{{output_type}}/{{feature_group}}/{{trainer}}.json",
    params:
        vmpower=VMPOWER,
        settings=train_settings,
    log:
        "logs/train/{node_type}/{output_type}/{feature_group}/{trainer}.log",
    benchmark:
        "benchmarks/train/{node_type}/{output_type}/{feature_group}/{trainer}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} --provenance {output.prov:q} train --dataset {input.data:q} --node-type {wildcards.node_type:q}"
        " --output-type {wildcards.output_type:q} --feature-group {wildcards.feature_group:q}"
        " --trainer {wildcards.trainer:q} --model {output.model:q} --metrics {output.metrics:q}"
        " --holdout {output.holdout:q} --settings {params.settings:q} > {log:q} 2>&1"


# How a model trained on one node_type does on the others (results/cross_node_type.csv).
rule train_cross_node_type:
    input:
        models=cross_inputs("model.joblib"),
        metrics=cross_inputs("metrics.json"),
        datasets=cross_inputs("dataset"),
        code=stage_sources("vmpower.pipeline.cross_node_type"),
    output:
        csv=f"{RES}/cross_node_type.csv",
        prov=f"{RES}/provenance/cross_node_type.json",
    params:
        vmpower=VMPOWER,
        node_types=NODE_TYPES,
        model=CROSS_MODEL,
    log:
        "logs/train/cross_node_type.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} --provenance {output.prov:q} train-cross --node-types {params.node_types:q}"
        " --model-name {params.model:q}"
        " --models {input.models:q} --metrics {input.metrics:q} --datasets {input.datasets:q} --output {output.csv:q} > {log:q} 2>&1"
