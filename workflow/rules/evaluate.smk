# Each model (teacher, untrained student, every run) answers each task; answers are scored.


rule evaluate:
    input:
        records=get_eval_records,
        model=get_eval_model,
    output:
        "results/eval/{model}/{task}.parquet",
    params:
        model=lambda wildcards: parse_eval_model(wildcards.model)[0],
        label=lambda wildcards: json_arg({**parse_eval_model(wildcards.model)[1], "task": wildcards.task}),
        decoding=generation_args(config["evaluation"].get("generation", {})),
        template=TEMPLATE,
    threads: config["threads"]["evaluate"]
    resources:
        gpu=GPU_PER_JOB,
    log:
        "logs/evaluate/{model}/{task}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{task}.tsv"
    shell:
        "kdlm evaluate --model {params.model} --records {input.records} --out {output}"
        " --label {params.label} {params.decoding} --template {params.template} --threads {threads} > {log} 2>&1"


# Optional (evaluation.judge.enabled): an LLM judge scores each answer against the task's reference.
if JUDGE["enabled"]:

    # HTTP calls only, and cluster compute nodes are often offline: local on a cluster
    localrules:
        judge,

    rule judge:
        input:
            evaluation="results/eval/{model}/{task}.parquet",
            records=get_eval_records,
        output:
            "results/judge/{model}/{task}.parquet",
        params:
            args=judge_args(),
        log:
            "logs/judge/{model}/{task}.log",
        benchmark:
            "benchmarks/judge/{model}/{task}.tsv"
        shell:
            "kdlm judge --eval {input.evaluation} --records {input.records} --out {output}"
            " {params.args} > {log} 2>&1"


# Optional (evaluation.lm_eval.enabled): MMLU / BBH / DROP through lm-eval; missing cells, not failures,
# where lm-eval or its data sets are unavailable.
if LM_EVAL["enabled"]:

    rule harness:
        input:
            model=get_eval_model,
        output:
            "results/harness/{model}.parquet",
        params:
            model=lambda wildcards: parse_eval_model(wildcards.model)[0],
            label=lambda wildcards: json_arg(parse_eval_model(wildcards.model)[1]),
            args=harness_args(),
        resources:
            gpu=GPU_PER_JOB if LM_EVAL["device"].startswith("cuda") else 0,
        log:
            "logs/harness/{model}.log",
        benchmark:
            "benchmarks/harness/{model}.tsv"
        shell:
            "kdlm harness --model {params.model} --out {output} --label {params.label} {params.args} > {log} 2>&1"
