# Summary tables from every evaluation file; named targets for each stage.


rule report:
    input:
        eval_files(),
    output:
        parquet="results/tables/summary.parquet",
        csv="results/tables/summary.csv",
        md="results/tables/summary.md",
    log:
        "logs/report/summary.log",
    shell:
        "kdlm report --evals {input} --out-dir results/tables > {log} 2>&1"


rule teacher_data:
    input:
        [f"results/generated/{TRAIN_DATASET}/{t}.parquet" for t in config["study"]["teachers"]],


rule runs:
    input:
        [f"results/runs/{run}/model.safetensors" for run in runs()],


rule evals:
    input:
        eval_files(),
