# Teachers: optional fine-tuning, then responses to the training prompts.


rule teacher_sft:
    input:
        data=train_records(),
        base=get_teacher_base,
    output:
        config="results/models/teachers/{teacher}/config.json",
        weights="results/models/teachers/{teacher}/model.safetensors",
    params:
        base=lambda wildcards: config["teachers"][wildcards.teacher]["path"],
        training=lambda wildcards: json_arg({**config["teacher_training"], "threads": config["threads"]["train"]}),
        template=TEMPLATE,
    threads: config["threads"]["train"]
    log:
        "logs/teacher_sft/{teacher}.log",
    benchmark:
        "benchmarks/teacher_sft/{teacher}.tsv"
    shell:
        "kdlm sft --student {params.base} --data {input.data} --training {params.training}"
        " --template {params.template} --out results/models/teachers/{wildcards.teacher}"
        " --checkpoint-dir results/checkpoints/teachers/{wildcards.teacher} > {log} 2>&1"


rule generate:
    input:
        records=records_path("{dataset}", TRAIN_SPLIT),
        model=get_teacher_model,
    output:
        "results/generated/{dataset}/{teacher}.parquet",
    params:
        model=lambda wildcards: teacher_dir(wildcards.teacher),
        decoding=generation_args(config["teacher_generation"]),
        template=TEMPLATE,
    threads: config["threads"]["generate"]
    log:
        "logs/generate/{dataset}/{teacher}.log",
    benchmark:
        "benchmarks/generate/{dataset}/{teacher}.tsv"
    shell:
        "kdlm generate --model {params.model} --name {wildcards.teacher} --records {input.records}"
        " --out {output} {params.decoding} --template {params.template} --threads {threads} > {log} 2>&1"
