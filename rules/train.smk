# Stage 3: one job per node_type x output type x feature group x trainer; it trains all zones.


rule train_model:
    input:
        data=PATHS["isolated"],
        code=stage_sources("vmpower.pipeline.train"),
    output:
        model=PATHS["model"],
        metrics=PATHS["metrics"],
        holdout=PATHS["holdout"],
        prov=PATHS["prov_train"],
    params:
        vmpower=VMPOWER,
        settings=get_train_settings,
    log:
        "logs/train/{node_type}/{output_type}/{feature_group}/{trainer}.log",
    benchmark:
        "benchmarks/train/{node_type}/{output_type}/{feature_group}/{trainer}.tsv"
    resources:
        **attempt_scaled(mem_mb=4000, runtime=60),
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} --provenance {output.prov:q} train --dataset {input.data:q} --node-type {wildcards.node_type:q}"
        " --output-type {wildcards.output_type:q} --feature-group {wildcards.feature_group:q}"
        " --trainer {wildcards.trainer:q} --model {output.model:q} --metrics {output.metrics:q}"
        " --holdout {output.holdout:q} --settings {params.settings:q} > {log:q} 2>&1"


# How a model trained on one node_type does on the others (results/cross_node_type.csv).
rule train_cross_node_type:
    input:
        models=cross_node_type_files("model"),
        metrics=cross_node_type_files("metrics"),
        datasets=cross_node_type_files("isolated"),
        code=stage_sources("vmpower.pipeline.cross_node_type"),
    output:
        csv=PATHS["cross_node_type"],
        prov=PATHS["prov_cross"],
    params:
        vmpower=VMPOWER,
        node_types=NODE_TYPES,
        model=CROSS_MODEL,
    log:
        "logs/train/cross_node_type.log",
    resources:
        **attempt_scaled(mem_mb=2000, runtime=10),
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} --provenance {output.prov:q} train-cross --node-types {params.node_types:q}"
        " --model-name {params.model:q}"
        " --models {input.models:q} --metrics {input.metrics:q} --datasets {input.datasets:q} --output {output.csv:q} > {log:q} 2>&1"
