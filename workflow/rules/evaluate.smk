# Each model (teacher, untrained student, every run) answers each task; answers are scored.


rule evaluate:
    input:
        records=get_eval_records,
        model=get_eval_model,
    output:
        "results/eval/{model}/{task}.parquet",
    log:
        "logs/evaluate/{model}/{task}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{task}.tsv"
    conda:
        CONDA_ENV
    threads: STUDY.threads.evaluate
    resources:
        gpu=GPU_PER_JOB,
    params:
        model=lambda wildcards: shlex.quote(STUDY.eval_target(wildcards.model)[0]),
        label=lambda wildcards: json_arg({**STUDY.eval_target(wildcards.model)[1], "task": wildcards.task}),
        generation=json_arg(config["evaluation"].get("generation", {})),
        template=shlex.quote(TEMPLATE),
    shell:
        "kdlm evaluate --model {params.model} --records {input.records} --out {output}"
        " --label {params.label} --generation {params.generation} --template {params.template} --threads {threads} > {log} 2>&1"


# Optional (evaluation.judge.enabled): an LLM judge scores each answer against the task's reference.
if STUDY.judge_enabled:

    # HTTP calls only, and cluster compute nodes are often offline: local on a cluster
    localrules:
        judge,

    rule judge:
        input:
            evaluation="results/eval/{model}/{task}.parquet",
            records=get_eval_records,
        output:
            "results/judge/{model}/{task}.parquet",
        log:
            "logs/judge/{model}/{task}.log",
        benchmark:
            "benchmarks/judge/{model}/{task}.tsv"
        conda:
            CONDA_ENV
        params:
            judge=json_arg(STUDY.judge),
        shell:
            "kdlm judge --eval {input.evaluation} --records {input.records} --out {output}"
            " --judge {params.judge} > {log} 2>&1"


# Optional (evaluation.lm_eval.enabled): MMLU / BBH / DROP through lm-eval; missing cells, not failures,
# where lm-eval or its data sets are unavailable.
if STUDY.lm_eval_enabled:

    rule harness:
        input:
            model=get_eval_model,
        output:
            "results/harness/{model}.parquet",
        log:
            "logs/harness/{model}.log",
        benchmark:
            "benchmarks/harness/{model}.tsv"
        conda:
            CONDA_ENV
        resources:
            gpu=GPU_PER_JOB if STUDY.lm_eval.get("device", "cpu").startswith("cuda") else 0,
        params:
            model=lambda wildcards: shlex.quote(STUDY.eval_target(wildcards.model)[0]),
            label=lambda wildcards: json_arg(STUDY.eval_target(wildcards.model)[1]),
            lm_eval=json_arg({**STUDY.lm_eval, "on_error": "missing"}),
        shell:
            "kdlm harness --model {params.model} --out {output} --label {params.label} --lm-eval {params.lm_eval} > {log} 2>&1"
