# User (or lab) data files -> validated records parquet.


rule prepare:
    input:
        get_dataset_file,
    output:
        "results/data/{dataset}/{split}.parquet",
    params:
        format=lambda wildcards: config["datasets"][wildcards.dataset]["format"],
        fields=lambda wildcards: json_arg(config["datasets"][wildcards.dataset].get("fields", {})),
    log:
        "logs/prepare/{dataset}/{split}.log",
    shell:
        "kdlm prepare --input {input} --format {params.format} --dataset {wildcards.dataset}"
        " --fields {params.fields} --out {output} > {log} 2>&1"
