# Per sample source, the training parquet the trainer reads. File to file: local on a cluster.


localrules:
    mix,
    mixes,


rule mix:
    input:
        unpack(get_mix_inputs),
    output:
        "results/mixed/{dataset}/{teacher}/{source}.parquet",
    log:
        "logs/mix/{dataset}/{teacher}/{source}.log",
    conda:
        CONDA_ENV
    params:
        generated=lambda wildcards, input: (
            f"--generated {input.generated}" if "generated" in input.keys() else ""
        ),
        template=shlex.quote(TEMPLATE),
        mix=json_arg({k: v for k, v in config.get("mix", {}).items() if k != "sources"}),
    shell:
        "kdlm mix --records {input.records} {params.generated} --source {wildcards.source}"
        " --mix {params.mix} --template {params.template} --out {output} > {log} 2>&1"


rule mixes:
    input:
        mixed_files(),
