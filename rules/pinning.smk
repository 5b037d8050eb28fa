# Stage 4b: would CPU pinning help this node_type? (EP-003 FR5; docs/pinning.md)


rule pinning_analyse:
    input:
        merged=get_merged_runs,
        best=PATHS["select_best"],
        holdouts=get_pinning_holdouts,
        code=stage_sources("vmpower.pipeline.pinning"),
    output:
        json=PATHS["pinning_json"],
        md=PATHS["pinning_md"],
        prov=PATHS["prov_pinning"],
    params:
        vmpower=VMPOWER,
        train_dir=f"{RES}/train/{{node_type}}",
    log:
        "logs/pinning/{node_type}.log",
    resources:
        **attempt_scaled(mem_mb=2000, runtime=10),
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} --provenance {output.prov:q} pinning --merged {input.merged:q} --best {input.best:q}"
        " --train-dir {params.train_dir:q} --node-type {wildcards.node_type:q} --json {output.json:q}"
        " --markdown {output.md:q} > {log:q} 2>&1"
