# One trained student per run: {student}__{teacher}/{source}/{method}/seed{seed}.


rule distill:
    input:
        unpack(get_distill_inputs),
    output:
        config="results/runs/{student}__{teacher}/{source}/{method}/seed{seed}/config.json",
        weights="results/runs/{student}__{teacher}/{source}/{method}/seed{seed}/model.safetensors",
        log="results/runs/{student}__{teacher}/{source}/{method}/seed{seed}/train_log.parquet",
        run="results/runs/{student}__{teacher}/{source}/{method}/seed{seed}/run.json",
    params:
        student=lambda wildcards: config["students"][wildcards.student]["path"],
        teacher=lambda wildcards: "" if wildcards.teacher == "none" else f"--teacher {teacher_dir(wildcards.teacher)}",
        method=lambda wildcards: json_arg(config["methods"][wildcards.method]),
        training=lambda wildcards: json_arg(
            {**config["training"], "seed": int(wildcards.seed), "threads": config["threads"]["train"]}
        ),
        info=lambda wildcards: json_arg({"method_name": wildcards.method, "source": wildcards.source}),
        template=shlex.quote(TEMPLATE),
    threads: config["threads"]["train"]
    log:
        "logs/distill/{student}__{teacher}/{source}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/distill/{student}__{teacher}/{source}/{method}/seed{seed}.tsv"
    shell:
        "kdlm distill --student {params.student} {params.teacher} --data {input.data}"
        " --method {params.method} --training {params.training} --info {params.info}"
        " --template {params.template}"
        " --out results/runs/{wildcards.student}__{wildcards.teacher}/{wildcards.source}/{wildcards.method}/seed{wildcards.seed}"
        " --checkpoint-dir results/checkpoints/{wildcards.student}__{wildcards.teacher}/{wildcards.source}/{wildcards.method}/seed{wildcards.seed}"
        " > {log} 2>&1"
