# Teachers: optional fine-tuning, then responses to the training prompts.


rule teacher_sft:
    input:
        data=train_records(),
        base=get_teacher_base,
    output:
        config="results/models/teachers/{teacher}/config.json",
        weights="results/models/teachers/{teacher}/model.safetensors",
    log:
        "logs/teacher_sft/{teacher}.log",
    benchmark:
        "benchmarks/teacher_sft/{teacher}.tsv"
    priority: 1
    conda:
        CONDA_ENV
    threads: STUDY.threads.train
    resources:
        gpu=lambda wildcards: training_gpus("teacher_sft", wildcards.teacher, NO_TEACHER),
    params:
        base=lambda wildcards: shlex.quote(config["teachers"][wildcards.teacher]["path"]),
        training=json_arg({**config.get("teacher_training", {}), "threads": STUDY.threads.train}),
        distributed=lambda wildcards: distributed_arg("teacher_sft", wildcards.teacher, NO_TEACHER),
        template=shlex.quote(TEMPLATE),
        launcher=lambda wildcards, resources: torchrun_launcher(resources.gpu),
    shell:
        "{params.launcher} sft --student {params.base} --data {input.data} --training {params.training}"
        " --distributed {params.distributed}"
        " --template {params.template} --out results/models/teachers/{wildcards.teacher}"
        " --checkpoint-dir results/checkpoints/teachers/{wildcards.teacher} > {log} 2>&1"


# One job by default; with teacher_generation.shards = n > 1, n shard jobs and one merge. Either way
# `kdlm generate` writes shards as it goes under <output>.shards/ and resumes a killed job.
if STUDY.teacher_generation.shards == 1:

    rule generate:
        input:
            records=records_path("{dataset}", TRAIN_SPLIT),
            model=get_teacher_model,
        output:
            "results/generated/{dataset}/{teacher}.parquet",
        log:
            "logs/generate/{dataset}/{teacher}.log",
        benchmark:
            "benchmarks/generate/{dataset}/{teacher}.tsv"
        conda:
            CONDA_ENV
        threads: STUDY.threads.generate
        resources:
            gpu=GPU_PER_JOB,
        params:
            model=lambda wildcards: shlex.quote(STUDY.teacher_dir(wildcards.teacher)),
            generation=json_arg(config.get("teacher_generation", {})),
            template=shlex.quote(TEMPLATE),
        shell:
            "kdlm generate --model {params.model} --name {wildcards.teacher} --records {input.records}"
            " --out {output} --generation {params.generation} --template {params.template} --threads {threads} > {log} 2>&1"

else:

    rule generate_shard:
        input:
            records=records_path("{dataset}", TRAIN_SPLIT),
            model=get_teacher_model,
        output:
            temp(
                "results/generated/{dataset}/{teacher}.shards/job{shard}-of-"
                + str(STUDY.teacher_generation.shards)
                + ".json"
            ),
        log:
            "logs/generate_shard/{dataset}/{teacher}/job{shard}.log",
        benchmark:
            "benchmarks/generate_shard/{dataset}/{teacher}/job{shard}.tsv"
        conda:
            CONDA_ENV
        threads: STUDY.threads.generate
        resources:
            gpu=GPU_PER_JOB,
        params:
            model=lambda wildcards: shlex.quote(STUDY.teacher_dir(wildcards.teacher)),
            generation=json_arg(config.get("teacher_generation", {})),
            template=shlex.quote(TEMPLATE),
            n=STUDY.teacher_generation.shards,
        shell:
            "kdlm generate --model {params.model} --name {wildcards.teacher} --records {input.records}"
            " --out results/generated/{wildcards.dataset}/{wildcards.teacher}.parquet --shard {wildcards.shard}/{params.n}"
            " --done {output} --generation {params.generation} --template {params.template} --threads {threads} > {log} 2>&1"

    # joins the shards (tokenizes the prompts again, loads no model): local on a cluster
    localrules:
        generate_merge,

    rule generate_merge:
        input:
            records=records_path("{dataset}", TRAIN_SPLIT),
            model=get_teacher_model,
            shards=get_generate_shard_markers,
        output:
            "results/generated/{dataset}/{teacher}.parquet",
        log:
            "logs/generate_merge/{dataset}/{teacher}.log",
        benchmark:
            "benchmarks/generate_merge/{dataset}/{teacher}.tsv"
        conda:
            CONDA_ENV
        params:
            model=lambda wildcards: shlex.quote(STUDY.teacher_dir(wildcards.teacher)),
            generation=json_arg(config.get("teacher_generation", {})),
            template=shlex.quote(TEMPLATE),
        shell:
            "kdlm generate --merge --model {params.model} --name {wildcards.teacher} --records {input.records}"
            " --out {output} --generation {params.generation} --template {params.template} > {log} 2>&1"
