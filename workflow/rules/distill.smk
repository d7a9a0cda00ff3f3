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
    # Training first: the one-thread evaluations then wait and run two at a time on two cores instead of
    # one beside an idle core (about 20 s of the README study). On a cluster it only orders submissions.
    priority: 1
    conda:
        CONDA_ENV
    threads: STUDY.threads.distill
    resources:
        # the plan's GPUs where the profile declares them, else GPU_PER_JOB; > 1: one process per GPU
        gpu=lambda wildcards: training_gpus("distill", wildcards.student, distill_job_teacher(wildcards)),
    params:
        student=lambda wildcards: shlex.quote(config["students"][wildcards.student]["path"]),
        teacher=distill_teacher_arg,
        method=lambda wildcards: json_arg(config["methods"][wildcards.method]),
        training=lambda wildcards: json_arg(
            {**config.get("training", {}), "seed": int(wildcards.seed), "threads": STUDY.threads.distill}
        ),
        info=lambda wildcards: json_arg({"method_name": wildcards.method, "source": wildcards.source}),
        template=shlex.quote(TEMPLATE),
        distributed=lambda wildcards: distributed_arg(
            "distill", wildcards.student, distill_job_teacher(wildcards)
        ),
        launcher=lambda wildcards, resources: torchrun_launcher(resources.gpu),
    shell:
        "{params.launcher} distill --student {params.student} {params.teacher} --data {input.data}"
        " --method {params.method} --training {params.training} --info {params.info}"
        " --distributed {params.distributed}"
        " --template {params.template}"
        " --out results/runs/{wildcards.student}__{wildcards.teacher}/{wildcards.source}/{wildcards.method}/seed{wildcards.seed}"
        " --checkpoint-dir results/checkpoints/{wildcards.student}__{wildcards.teacher}/{wildcards.source}/{wildcards.method}/seed{wildcards.seed}"
        " > {log} 2>&1"
