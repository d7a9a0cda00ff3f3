# One trained student per run: {student}__{teacher}/{source}/{method}/seed{seed}.
# Checkpoints go to results/checkpoints/<run> (not a declared output): a rerun after a kill resumes there.


rule distill:
    input:
        unpack(get_distill_inputs),
    output:
        config="results/runs/{student}__{teacher}/{source}/{method}/seed{seed}/config.json",
        weights="results/runs/{student}__{teacher}/{source}/{method}/seed{seed}/model.safetensors",
        log="results/runs/{student}__{teacher}/{source}/{method}/seed{seed}/train_log.parquet",
        run="results/runs/{student}__{teacher}/{source}/{method}/seed{seed}/run.json",
    log:
        "logs/distill/{student}__{teacher}/{source}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/distill/{student}__{teacher}/{source}/{method}/seed{seed}.tsv"
    conda:
        CONDA_ENV
    threads: STUDY.threads.train
    resources:
        gpu=GPU_PER_JOB,  # > 1 launches one DDP process per GPU (e.g. --set-resources distill:gpu=4)
    params:
        student=lambda wildcards: shlex.quote(config["students"][wildcards.student]["path"]),
        teacher=distill_teacher_arg,
        method=lambda wildcards: json_arg(config["methods"][wildcards.method]),
        training=lambda wildcards: json_arg(
            {**config.get("training", {}), "seed": int(wildcards.seed), "threads": STUDY.threads.train}
        ),
        info=lambda wildcards: json_arg({"method_name": wildcards.method, "source": wildcards.source}),
        template=shlex.quote(TEMPLATE),
        launcher=lambda wildcards, resources: (
            f"torchrun --standalone --nproc-per-node={resources.gpu} --no-python kdlm"
            if int(resources.gpu) > 1
            else "kdlm"
        ),
    shell:
        "{params.launcher} distill --student {params.student} {params.teacher} --data {input.data}"
        " --method {params.method} --training {params.training} --info {params.info}"
        " --template {params.template}"
        " --out results/runs/{wildcards.student}__{wildcards.teacher}/{wildcards.source}/{wildcards.method}/seed{wildcards.seed}"
        " --checkpoint-dir results/checkpoints/{wildcards.student}__{wildcards.teacher}/{wildcards.source}/{wildcards.method}/seed{wildcards.seed}"
        " > {log} 2>&1"
