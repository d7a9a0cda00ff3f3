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
    params:
        corpus=lambda wildcards: {"seed": 0, "n_train": 3000, "n_validation": 200, "n_test": 300, **config["lab"].get("corpus", {})},
        families=lambda wildcards: " ".join(config["lab"].get("corpus", {}).get("families", [])),
    log:
        "logs/lab_corpus/lab.log",
    shell:
        "kdlm lab corpus --out-dir results/lab/corpus --seed {params.corpus[seed]}"
        " --n-train {params.corpus[n_train]} --n-validation {params.corpus[n_validation]}"
        " --n-test {params.corpus[n_test]} --families {params.families} > {log} 2>&1"


rule lab_tokenizer:
    input:
        "results/lab/corpus/train.json",
    output:
        "results/lab/tokenizer/tokenizer.json",
    params:
        vocab_size=lambda wildcards: config["lab"].get("tokenizer", {}).get("vocab_size", 1024),
        template=TEMPLATE,
    log:
        "logs/lab_tokenizer/lab.log",
    shell:
        "kdlm lab tokenizer --corpus {input} --vocab-size {params.vocab_size} --template {params.template}"
        " --out results/lab/tokenizer > {log} 2>&1"


rule lab_model:
    input:
        "results/lab/tokenizer/tokenizer.json",
    output:
        config="results/lab/models/{lab_model}/config.json",
        weights="results/lab/models/{lab_model}/model.safetensors",
    params:
        spec=lambda wildcards: {"max_position_embeddings": 256, "seed": 0, **LAB_MODELS[wildcards.lab_model]},
    log:
        "logs/lab_model/{lab_model}.log",
    shell:
        "kdlm lab model --tokenizer results/lab/tokenizer --family {params.spec[family]}"
        " --hidden-size {params.spec[hidden_size]} --num-layers {params.spec[num_layers]}"
        " --num-heads {params.spec[num_heads]} --intermediate-size {params.spec[intermediate_size]}"
        " --max-position-embeddings {params.spec[max_position_embeddings]} --seed {params.spec[seed]}"
        " --out results/lab/models/{wildcards.lab_model} > {log} 2>&1"
