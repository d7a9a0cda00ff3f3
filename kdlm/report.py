"""Summary tables of a study: one long table for pandas, one wide markdown table per metric for papers.

Every evaluation parquet carries its own description (kind, student, teacher, source, method, seed,
task) in its metadata, so the report needs only the list of files.
"""

from __future__ import annotations

from pathlib import Path

from kdlm.evaluation.metrics import bootstrap_ci

METRICS = {"rouge_l": "rouge_l", "exact_match": "exact_match", "response_tokens": "n_response_tokens"}
KIND_ORDER = {"teacher": 0, "base": 1, "run": 2}
LABEL_FIELDS = ("kind", "model", "student", "teacher", "source", "method", "seed", "task")


def summarize(eval_paths: list[Path], n_resamples: int = 1000):
    """Long-form summary: one row per model × task × metric with mean, 95% bootstrap CI and n."""
    import pandas as pd

    from kdlm.schemas import EVAL, read_metadata, read_table

    rows = []
    for path in eval_paths:
        meta = read_metadata(path)
        missing = [f for f in LABEL_FIELDS if f not in meta]
        if missing:
            raise ValueError(f"{path}: evaluation file lacks description field(s) {missing}")
        df = read_table(path, EVAL)
        for metric, column in METRICS.items():
            values = df[column].astype(float).tolist()
            low, high = bootstrap_ci(values, n_resamples=n_resamples)
            rows.append(
                {
                    **{f: meta[f] for f in LABEL_FIELDS},
                    "metric": metric,
                    "value": float(sum(values) / len(values)) if values else float("nan"),
                    "ci_low": low,
                    "ci_high": high,
                    "n": len(values),
                }
            )
    summary = pd.DataFrame(rows)
    if summary.empty:
        raise ValueError("no evaluation files to summarize")
    summary["seed"] = summary["seed"].astype("int64")
    summary["_order"] = summary["kind"].map(KIND_ORDER)
    summary = summary.sort_values(["_order", "student", "teacher", "source", "method", "seed", "task", "metric"])
    return summary.drop(columns="_order").reset_index(drop=True)


def markdown_tables(summary) -> str:
    """One wide table per metric: rows = models, columns = tasks + average, cells = mean [CI]."""
    lines = ["# kdlm summary", ""]
    for metric in summary["metric"].unique():
        part = summary[summary["metric"] == metric]
        tasks = sorted(part["task"].unique())
        lines += [f"## {metric}", "", "| model | kind | source | method | " + " | ".join(tasks) + " | average |"]
        lines.append("|" + "---|" * (5 + len(tasks)))
        for model, group in part.groupby("model", sort=False):
            first = group.iloc[0]
            cells = []
            for task in tasks:
                row = group[group["task"] == task]
                if row.empty:
                    cells.append("–")
                else:
                    r = row.iloc[0]
                    cells.append(f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]")
            average = group["value"].mean()
            lines.append(
                f"| {model} | {first.kind} | {first.source or '–'} | {first.method or '–'} | "
                + " | ".join(cells)
                + f" | {average:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_report(eval_paths: list[Path], out_dir: Path) -> Path:
    """Write summary.{parquet,csv,md} into `out_dir`; returns the markdown path."""
    from kdlm.io import atomic_path
    from kdlm.schemas import SUMMARY, write_table

    summary = summarize(eval_paths)
    write_table(summary, out_dir / "summary.parquet", SUMMARY)
    with atomic_path(out_dir / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    md = out_dir / "summary.md"
    with atomic_path(md) as tmp:
        tmp.write_text(markdown_tables(summary))
    return md
