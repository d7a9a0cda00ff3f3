# User (or lab) data files -> validated records parquet. File to file and cheap: on a cluster it runs
# on the submit host (localrules), which can also reach the hub for `hf` data sets.


localrules:
    prepare,


rule prepare:
    input:
        get_dataset_file,
    output:
        "results/data/{dataset}/{split}.parquet",
    params:
        options=prepare_args,
    log:
        "logs/prepare/{dataset}/{split}.log",
    shell:
        "kdlm prepare {params.options} --dataset {wildcards.dataset} --out {output} > {log} 2>&1"
