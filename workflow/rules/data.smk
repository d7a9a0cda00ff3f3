# User (or lab) data files -> validated records parquet. File to file and cheap: on a cluster it runs
# on the submit host (localrules), which can also reach the hub for `hf` data sets.


localrules:
    prepare,


rule prepare:
    input:
        get_dataset_file,
    output:
        "results/data/{dataset}/{split}.parquet",
    log:
        "logs/prepare/{dataset}/{split}.log",
    conda:
        CONDA_ENV
    params:
        path=lambda wildcards: shlex.quote(STUDY.dataset_split(wildcards.dataset, wildcards.split)["path"]),
        spec=prepare_spec,
    shell:
        "kdlm prepare --input {params.path} --spec {params.spec} --dataset {wildcards.dataset} --out {output}"
        " > {log} 2>&1"
