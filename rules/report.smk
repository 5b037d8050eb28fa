# Stage 5: the build report.


rule report_markdown:
    input:
        summary=f"{RES}/summary.csv",
        best=f"{RES}/best.json",
        datasets=expand(f"{RES}/datasets/{{node_type}}.summary.json", node_type=NODE_TYPES),
        isolation=expand(f"{RES}/isolated/{{node_type}}/isolation.json", node_type=NODE_TYPES),
        code=stage_sources("report"),
    output:
        f"{RES}/report.md",
    params:
        vmpower=VMPOWER,
    log:
        "logs/report/markdown.log",
    threads: 1
    conda:
        CONDA_ENV
    container:
        PIPELINE_IMAGE
    shell:
        "{params.vmpower} report --summary {input.summary} --best {input.best} --datasets {input.datasets}"
        " --isolation {input.isolation} --output {output} > {log} 2>&1"
