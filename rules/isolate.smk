# Stage 2: AbsPower (merged power) and DynPower (idle power removed) per node_type.


rule isolate_power:
    input:
        data=f"{RES}/datasets/{{node_type}}.parquet",
        code=stage_sources("vmpower.pipeline.isolate"),
    output:
        abs=f"{RES}/isolated/{{node_type}}/AbsPower.parquet",
        dyn=f"{RES}/isolated/{{node_type}}/DynPower.parquet",
        info=f"{RES}/isolated/{{node_type}}/isolation.json",
        prov=f"{RES}/provenance/isolate/{{node_type}}.json",
    params:
        vmpower=VMPOWER,
        settings=settings_json("isolate"),
    log:
        "logs/isolate/{node_type}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} --provenance {output.prov:q} isolate --dataset {input.data:q} --node-type {wildcards.node_type:q}"
        " --abs-output {output.abs:q} --dyn-output {output.dyn:q} --info {output.info:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"
