# The embedded lab: synthetic corpus, tokenizer and tiny models (only when lab.enabled).
# Corpus, tokenizer and initial weights take seconds on a CPU: a cluster profile runs them on the submit
# host (localrules). With lab.pretraining.enabled every lab model is then pretrained as a causal LM on the
# lab's running text (lab_pretrain), as real students and teachers are pretrained checkpoints.


localrules:
    lab_corpus,
    lab_tokenizer,
    lab_model,


# where lab_model writes a model's initial weights: the pretrained model takes the models/ path
LAB_INIT_DIR = "results/lab/init" if STUDY.lab_pretraining else "results/lab/models"


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
        config=f"{LAB_INIT_DIR}/{{lab_model}}/config.json",
        weights=f"{LAB_INIT_DIR}/{{lab_model}}/model.safetensors",
    log:
        "logs/lab_model/{lab_model}.log",
    conda:
        CONDA_ENV
    params:
        spec=lambda wildcards: json_arg(STUDY.lab_models[wildcards.lab_model]),
        out=lambda wildcards: f"{LAB_INIT_DIR}/{wildcards.lab_model}",
    shell:
        "kdlm lab model --tokenizer results/lab/tokenizer --config {params.spec}"
        " --out {params.out} > {log} 2>&1"


if STUDY.lab_pretraining:

    localrules:
        lab_pretraining_text,

    rule lab_pretraining_text:
        input:
            validation="results/lab/corpus/validation.json",
            test="results/lab/corpus/test.json",
        output:
            "results/lab/pretraining/text.parquet",
        log:
            "logs/lab_pretraining_text/lab.log",
        conda:
            CONDA_ENV
        params:
            text=json_arg(config["lab"]["pretraining"].get("text", {})),
        shell:
            "kdlm lab pretraining-text --held-out {input.validation} {input.test} --config {params.text}"
            " --out {output} > {log} 2>&1"

    # A killed job resumes from its newest checkpoint under results/checkpoints/lab/<model>.
    rule lab_pretrain:
        input:
            text="results/lab/pretraining/text.parquet",
            init=f"{LAB_INIT_DIR}/{{lab_model}}/model.safetensors",
        output:
            config="results/lab/models/{lab_model}/config.json",
            weights="results/lab/models/{lab_model}/model.safetensors",
        log:
            "logs/lab_pretrain/{lab_model}.log",
        benchmark:
            "benchmarks/lab_pretrain/{lab_model}.tsv"
        priority: 2
        conda:
            CONDA_ENV
        threads: STUDY.threads.train
        params:
            training=lambda wildcards: json_arg(
                {**STUDY.lab_pretraining_training(wildcards.lab_model), "threads": STUDY.threads.train}
            ),
            template=shlex.quote(TEMPLATE),
            init=lambda wildcards: f"{LAB_INIT_DIR}/{wildcards.lab_model}",
        shell:
            "kdlm sft --student {params.init} --data {input.text}"
            " --training {params.training} --template {params.template}"
            " --out results/lab/models/{wildcards.lab_model}"
            " --checkpoint-dir results/checkpoints/lab/{wildcards.lab_model} > {log} 2>&1"
