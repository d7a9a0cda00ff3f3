# The cached teacher signal (teacher_signal.cache, on by default): the teacher run once over each offline
# training file, its signal shared by every student, method and seed distilled from that teacher on that
# file. Its params are what shapes it (the teacher_signal section, training max_length and precision), so
# changing the teacher, the data or those reruns it and its students; a method's change does not.


rule teacher_signal:
    input:
        data=lambda wildcards: mixed_file(wildcards.teacher, wildcards.source),
        teacher=lambda wildcards: model_input(STUDY.teacher_dir(wildcards.teacher)),
    output:
        "results/teacher_signal/{dataset}/{teacher}/{source}/signal.json",
    log:
        "logs/teacher_signal/{dataset}/{teacher}/{source}.log",
    benchmark:
        "benchmarks/teacher_signal/{dataset}/{teacher}/{source}.tsv"
    priority: 1
    conda:
        CONDA_ENV
    threads: STUDY.threads.distill
    resources:
        gpu=GPU_PER_JOB,
    params:
        teacher=lambda wildcards: shlex.quote(STUDY.teacher_dir(wildcards.teacher)),
        signal=json_arg({k: v for k, v in (config.get("teacher_signal") or {}).items() if k != "cache"}),
        training=teacher_signal_training,
        template=shlex.quote(TEMPLATE),
    shell:
        "kdlm teacher-signal --teacher {params.teacher} --data {input.data} --signal {params.signal}"
        " --training {params.training} --template {params.template}"
        " --out results/teacher_signal/{wildcards.dataset}/{wildcards.teacher}/{wildcards.source} > {log} 2>&1"
