# The embedded lab: synthetic corpus, tokenizer and tiny models (only when lab.enabled).
# Seconds on a CPU: a cluster profile runs them on the submit host (localrules) instead of submitting.


localrules:
    lab_corpus,
    lab_tokenizer,
    lab_model,


rule lab_corpus:
    output:
        train="results/lab/corpus/train.json",
        validation="results/lab/corpus/validation.json",
        test="results/lab/corpus/test.json",
    log:
        "logs/lab_corpus/lab.log",
    conda:
        CONDA_ENV
    params:
        corpus=json_arg(config["lab"].get("corpus", {})),
    shell:
        "kdlm lab corpus --out-dir results/lab/corpus --config {params.corpus} > {log} 2>&1"


rule lab_tokenizer:
    input:
        "results/lab/corpus/train.json",
    output:
        "results/lab/tokenizer/tokenizer.json",
    log:
        "logs/lab_tokenizer/lab.log",
    conda:
        CONDA_ENV
    params:
        tokenizer=json_arg(config["lab"].get("tokenizer", {})),
        template=shlex.quote(TEMPLATE),
    shell:
        "kdlm lab tokenizer --corpus {input} --config {params.tokenizer} --template {params.template}"
        " --out results/lab/tokenizer > {log} 2>&1"


rule lab_model:
    input:
        "results/lab/tokenizer/tokenizer.json",
    output:
        config="results/lab/models/{lab_model}/config.json",
        weights="results/lab/models/{lab_model}/model.safetensors",
    log:
        "logs/lab_model/{lab_model}.log",
    conda:
        CONDA_ENV
    params:
        spec=lambda wildcards: json_arg(STUDY.lab_models[wildcards.lab_model]),
    shell:
        "kdlm lab model --tokenizer results/lab/tokenizer --config {params.spec}"
        " --out results/lab/models/{wildcards.lab_model} > {log} 2>&1"
