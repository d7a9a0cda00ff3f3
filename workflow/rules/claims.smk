# The paper's claims tested with intervals (config claims.enabled, as config/lab_claims.yaml sets it):
# each teacher's uncertainty on the claims' training files, then results/tables/claims.md and its plot.


if STUDY.claims_enabled:

    rule teacher_uncertainty:
        input:
            data=lambda wildcards: mixed_file(wildcards.teacher, wildcards.source),
            teacher=lambda wildcards: model_input(STUDY.teacher_dir(wildcards.teacher)),
        output:
            "results/uncertainty/{dataset}/{teacher}/{source}.parquet",
        log:
            "logs/teacher_uncertainty/{dataset}/{teacher}/{source}.log",
        conda:
            CONDA_ENV
        threads: STUDY.threads.distill
        params:
            teacher=lambda wildcards: shlex.quote(STUDY.teacher_dir(wildcards.teacher)),
            training=json_arg(
                {
                    "max_length": (config.get("training") or {}).get("max_length", 512),
                    "threads": STUDY.threads.distill,
                }
            ),
            template=shlex.quote(TEMPLATE),
        shell:
            "kdlm uncertainty --teacher {params.teacher} --name {wildcards.teacher} --source {wildcards.source}"
            " --data {input.data} --training {params.training} --template {params.template}"
            " --out {output} > {log} 2>&1"

    rule claims:
        input:
            evals=eval_files(),
            uncertainty=uncertainty_files(),
        output:
            md=report("results/tables/claims.md", caption="../report/claims.rst", category="Tables"),
            plot=report(
                "results/plots/uncertainty.png", caption="../report/uncertainty.rst", category="Claims"
            ),
        log:
            "logs/claims/claims.log",
        conda:
            CONDA_ENV
        params:
            claims=json_arg(STUDY.claims),
        shell:
            "kdlm claims --evals {input.evals} --uncertainty {input.uncertainty} --config {params.claims}"
            " --out {output.md} --plot {output.plot} > {log} 2>&1"
