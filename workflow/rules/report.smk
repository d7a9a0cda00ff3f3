# Summary tables and plots from every evaluation file and training log; named targets for each stage.
# All cheap: a cluster profile runs them on the submit host (localrules).


localrules:
    report,
    teacher_data,
    runs,
    evals,


rule report:
    input:
        evals=eval_files(),
        train_logs=train_logs(),
        judge=judge_files(),
        harness=harness_files(),
    output:
        parquet="results/tables/summary.parquet",
        csv=report("results/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        md=report("results/tables/summary.md", caption="../report/summary_md.rst", category="Tables"),
        seeds="results/tables/summary_seeds.csv",
        deltas=report("results/tables/deltas.csv", caption="../report/deltas.rst", category="Tables"),
        deltas_parquet="results/tables/deltas.parquet",
        scores=[
            report(
                f"results/plots/scores_{metric}.png",
                caption="../report/scores.rst",
                category="Scores",
                labels={"metric": metric},
            )
            for metric in STUDY.metrics()
        ],
        # fmt: skip
        train_loss=report(
            "results/plots/train_loss.png", caption="../report/train_loss.rst", category="Training"
        ),
        atkd=report("results/plots/atkd.png", caption="../report/atkd.rst", category="Training"),
    log:
        "logs/report/summary.log",
    conda:
        CONDA_ENV
    params:
        baseline=STUDY.baseline_method(),
    shell:
        "kdlm report --evals {input.evals} --train-logs {input.train_logs} --baseline-method '{params.baseline}'"
        " --judge {input.judge} --harness {input.harness}"
        " --out-dir results/tables --plots-dir results/plots > {log} 2>&1"


rule teacher_data:
    input:
        [f"results/generated/{TRAIN_DATASET}/{t}.parquet" for t in STUDY.teachers()],


rule runs:
    input:
        [f"results/runs/{run}/model.safetensors" for run in STUDY.runs()],


rule evals:
    input:
        eval_files(),
