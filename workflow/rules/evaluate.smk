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
    log:
        "logs/evaluate/{model}/{task}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{task}.tsv"
    shell:
        "kdlm evaluate --model {params.model} --records {input.records} --out {output}"
        " --label {params.label} {params.decoding} --template {params.template} --threads {threads} > {log} 2>&1"
