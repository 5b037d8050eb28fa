# Stage 2: AbsPower (merged power) and DynPower (idle power removed) per node_type.


rule isolate_power:
    input:
        data=PATHS["dataset"],
        code=stage_sources("vmpower.pipeline.isolate"),
    output:
        abs=path("isolated", output_type="AbsPower"),
        dyn=path("isolated", output_type="DynPower"),
        info=PATHS["isolation"],
        prov=PATHS["prov_isolate"],
    params:
        vmpower=VMPOWER,
        settings=settings_json("isolate"),
    log:
        "logs/isolate/{node_type}.log",
    resources:
        **attempt_scaled(mem_mb=2000, runtime=10),
    conda:
        CONDA_ENV
    shell:
        "{params.vmpower} --provenance {output.prov:q} isolate --dataset {input.data:q} --node-type {wildcards.node_type:q}"
        " --abs-output {output.abs:q} --dyn-output {output.dyn:q} --info {output.info:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"
