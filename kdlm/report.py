"""Summary tables of a study: one long table for pandas, one wide markdown table per metric for papers.

Users open the results table first and decide from it, so every number carries its uncertainty: task
means come with a 95% bootstrap interval, and each run is compared with the forward-KL run of the same
student, teacher, source and seed by a paired bootstrap over the examples both answered (a marker shows
where that interval excludes 0). Every evaluation parquet carries its own description (kind, student,
teacher, source, method, seed, task) in its metadata, so the report needs only the list of files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kdlm.evaluation.lmeval import primary_scores
from kdlm.evaluation.metrics import bootstrap_ci, paired_bootstrap, paired_differences
from kdlm.evaluation.seed_bootstrap import Grid, pooled_bootstrap
from kdlm.io import atomic_path
from kdlm.plots import write_plots
from kdlm.schemas import EVAL, SUMMARY, read_metadata, read_table, write_table
from kdlm.study import EVAL_METRICS
from kdlm.study import METRICS as ALL_METRICS

METRICS = {m.name: m.column for m in EVAL_METRICS}  # summary metric -> per-example column of an evaluation
KIND_ORDER = {"teacher": 0, "base": 1, "run": 2}
LABEL_FIELDS = ("kind", "model", "student", "teacher", "source", "method", "seed", "task")
PAIR_FIELDS = ("student", "teacher", "source", "seed")  # a run and its baseline share these
SIGNIFICANT = "*"
GROUP_FIELDS = ("kind", "student", "teacher", "source", "method", "task")  # one trained setting, all seeds
SEED_MEAN_COLUMNS = ["kind", "model", "student", "teacher", "source", "method", "task", "metric", "value", "ci_low",
                     "ci_high", "n", "n_seeds"]  # fmt: skip
SEED_DELTA_COLUMNS = ["model", "student", "teacher", "source", "method", "baseline", "task", "metric", "delta",
                      "ci_low", "ci_high", "n", "n_seeds", "significant"]  # fmt: skip
DELTA_COLUMNS = [*(f for f in LABEL_FIELDS if f != "task"), "baseline", "task", "metric", "delta", "ci_low", "ci_high",
                 "n", "significant"]  # fmt: skip


@dataclass
class ReportConfig:
    """What `kdlm report` writes besides the long summary."""

    baseline_method: str | None = "fkl"  # method name Δ is taken against (forward KL); None: no Δ
    n_resamples: int = 1000  # bootstrap resamples for every interval
    plots_dir: Path | None = None  # where the PNGs go; None: no plots
    train_logs: list[Path] = field(default_factory=list)  # results/runs/<run>/train_log.parquet files
    judge_files: list[Path] = field(default_factory=list)  # results/judge/<model>/<task>.parquet files
    harness_files: list[Path] = field(default_factory=list)  # results/harness/<model>.parquet files

    def __post_init__(self) -> None:
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples must be >= 1, got {self.n_resamples}")


@dataclass
class Evaluation:
    """One evaluation file: its description and its per-example table."""

    meta: dict
    table: object  # pandas.DataFrame with the EVAL columns
    truncated_prompts: int = 0  # prompts cut from the left to fit the model's context


def load_evaluations(eval_paths: list[Path]) -> list[Evaluation]:
    """Read every evaluation file with its description.

    Raises:
        ValueError: for a file whose metadata lacks a description field, or an empty list.
    """

    if not eval_paths:
        raise ValueError("no evaluation files to summarize")
    loaded = []
    for path in eval_paths:
        meta = read_metadata(path)
        missing = [f for f in LABEL_FIELDS if f not in meta]
        if missing:
            raise ValueError(f"{path}: evaluation file lacks description field(s) {missing}")
        truncated = int(meta.get("truncated_prompts", 0))
        meta = {f: meta[f] for f in LABEL_FIELDS}
        meta["seed"] = int(meta["seed"])
        loaded.append(Evaluation(meta, read_table(path, EVAL), truncated))
    return loaded


def _sort(df, extra: list[str]):
    df = df.assign(_order=df["kind"].map(KIND_ORDER))
    df = df.sort_values(["_order", "student", "teacher", "source", "method", "seed", *extra], kind="stable")
    return df.drop(columns="_order").reset_index(drop=True)


def summarize(
    evaluations: list[Evaluation] | list[Path],
    n_resamples: int = 1000,
    judge_paths: list[Path] = (),
    harness_paths: list[Path] = (),
):
    """Long-form summary: one row per model × task × metric with mean, 95% bootstrap CI and n; the
    `judge` metric (from `kdlm judge` files) is the paper's Σ student / Σ reference; the `harness`
    metric (from `kdlm harness` files) each lm-eval task's headline score ± 1.96 stderr, NaN where the
    harness could not run (shown as "–")."""

    if evaluations and not isinstance(evaluations[0], Evaluation):
        evaluations = load_evaluations(evaluations)
    if not evaluations:
        raise ValueError("no evaluation files to summarize")
    rows = []
    for ev in evaluations:
        for metric, column in METRICS.items():
            values = ev.table[column].astype(float).tolist()
            low, high = bootstrap_ci(values, n_resamples=n_resamples)
            rows.append(
                {
                    **ev.meta,
                    "metric": metric,
                    "value": float(sum(values) / len(values)) if values else float("nan"),
                    "ci_low": low,
                    "ci_high": high,
                    "n": len(values),
                }
            )
    rows += [_judge_row(path, n_resamples) for path in judge_paths]
    rows += [row for path in harness_paths for row in _harness_rows(path)]
    summary = pd.DataFrame(rows)
    summary["seed"] = summary["seed"].astype("int64")
    return _sort(summary, ["task", "metric"])


def _harness_rows(path: Path) -> list[dict]:
    meta = read_metadata(path)
    missing = [f for f in LABEL_FIELDS if f != "task" and f not in meta]
    if missing:
        raise ValueError(f"{path}: harness file lacks description field(s) {missing}")
    table = pd.read_parquet(path)
    rows = []
    for task, (value, stderr) in primary_scores(table).items():
        half = 1.96 * stderr
        rows.append({**{f: meta[f] for f in LABEL_FIELDS if f != "task"}, "task": task, "metric": "harness",
                     "value": value, "ci_low": value - half, "ci_high": value + half, "n": 0})  # fmt: skip
    return rows


def _judge_row(path: Path, n_resamples: int) -> dict:
    """Metric `judge` of one `kdlm judge` file: Σ student / Σ reference over the examples whose replies
    parsed, with a bootstrap interval of that ratio; n = those examples."""

    meta = read_metadata(path)
    missing = [f for f in LABEL_FIELDS if f not in meta]
    if missing:
        raise ValueError(f"{path}: judge file lacks description field(s) {missing}")
    df = pd.read_parquet(path)
    valid = df[df["valid"]]
    student, reference = valid["student_score"].to_numpy(float), valid["reference_score"].to_numpy(float)
    value, low, high = float("nan"), float("nan"), float("nan")
    if len(valid) and reference.sum() > 0:
        value = float(student.sum() / reference.sum())
        idx = np.random.default_rng(0).integers(0, len(valid), size=(n_resamples, len(valid)))  # (R, n)
        ratios = student[idx].sum(axis=1) / np.maximum(reference[idx].sum(axis=1), 1e-12)
        low, high = float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))
    return {**{f: meta[f] for f in LABEL_FIELDS}, "metric": "judge", "value": value, "ci_low": low, "ci_high": high,
            "n": len(valid)}  # fmt: skip


def paired_deltas(evaluations: list[Evaluation], baseline_method: str, n_resamples: int = 1000):
    """Δ of every run against the `baseline_method` run with the same student, teacher, source and seed.

    One row per run × task × metric, plus task `average` (the mean of the task Δs, its interval by a
    bootstrap stratified by task). Tasks the baseline lacks are left out of both.

    Returns:
        DataFrame: run fields, `baseline` (its model id), task, metric, delta, ci_low, ci_high, n,
        significant (the paired interval excludes 0). Empty when no run has a baseline.
    """

    runs = [ev for ev in evaluations if ev.meta["kind"] == "run"]
    index = {
        (*(ev.meta[f] for f in PAIR_FIELDS), ev.meta["task"]): ev for ev in runs if ev.meta["method"] == baseline_method
    }
    by_model: dict[str, list[Evaluation]] = {}
    for ev in runs:
        if ev.meta["method"] != baseline_method:
            by_model.setdefault(ev.meta["model"], []).append(ev)
    rows = []
    run_fields = [f for f in LABEL_FIELDS if f != "task"]
    for group in by_model.values():
        pairs = []
        for ev in sorted(group, key=lambda e: e.meta["task"]):
            base = index.get((*(ev.meta[f] for f in PAIR_FIELDS), ev.meta["task"])) or _teacherless_baseline(ev, index)
            if base is not None:
                pairs.append((ev, base))
        if not pairs:
            continue
        for metric, column in METRICS.items():
            per_task = []
            for ev, base in pairs:
                diffs = paired_differences(
                    dict(zip(ev.table["id"], ev.table[column].astype(float), strict=True)),
                    dict(zip(base.table["id"], base.table[column].astype(float), strict=True)),
                )
                per_task.append((ev.meta["task"], diffs))
            tasks = per_task + ([("average", None)] if len(per_task) > 1 else [])
            for task, diffs in tasks:
                groups = [d for _, d in per_task] if diffs is None else [diffs]
                result = paired_bootstrap(groups, n_resamples=n_resamples)
                rows.append(
                    {
                        **{f: pairs[0][0].meta[f] for f in run_fields},
                        "baseline": pairs[0][1].meta["model"],
                        "task": task,
                        "metric": metric,
                        "delta": result.delta,
                        "ci_low": result.ci_low,
                        "ci_high": result.ci_high,
                        "n": result.n,
                        "significant": result.significant,
                    }
                )
    deltas = pd.DataFrame(rows, columns=DELTA_COLUMNS)
    if deltas.empty:
        return deltas
    return _sort(deltas, ["metric"]).astype({"seed": "int64", "n": "int64"})


def _teacherless_baseline(ev: Evaluation, index: dict) -> Evaluation | None:
    """A run without a teacher (`sft` on `gt`, teacher `none`) is compared with the baseline run of
    the same student, source and seed when exactly one teacher has one."""
    if ev.meta["teacher"] != "none":
        return None
    m = ev.meta
    found = [b for key, b in index.items() if key[0] == m["student"] and key[2:] == (m["source"], m["seed"], m["task"])]
    return found[0] if len(found) == 1 else None


def setting_model(model: str) -> str:
    """A model id without its `/seed<n>`: the id of a setting trained with several seeds."""
    head, _, last = model.rpartition("/")
    return head if head and last.startswith("seed") and last[4:].isdigit() else model


def _grid(group: list[Evaluation], column: str, minus: list[Evaluation] | None = None) -> Grid:
    """One task's (seeds × examples) scores of a setting, or its differences from another setting with the
    same seeds, over the examples every one of them answered."""
    frames = [_by_id(group, column)] + ([_by_id(minus, column)] if minus is not None else [])
    ids = sorted(set.intersection(*(set(f.columns) for f in frames)))
    values = frames[0][ids].to_numpy() - (frames[1][ids].to_numpy() if minus is not None else 0.0)
    return Grid(values, tuple(sorted(e.meta["seed"] for e in group)), tuple(ids), group[0].meta["task"])


def _settings(evaluations: list[Evaluation]) -> dict[tuple, list[Evaluation]]:
    groups: dict[tuple, list[Evaluation]] = {}
    for ev in evaluations:
        groups.setdefault(tuple(ev.meta[f] for f in GROUP_FIELDS), []).append(ev)
    return groups


def seed_means(evaluations: list[Evaluation], summary=None, n_resamples: int = 1000):
    """One row per setting × task × metric: the mean over its seeds, with an interval that resamples seeds
    and examples (`kdlm.evaluation.seed_bootstrap`); with one seed it is the summary's own row. Judge and harness
    rows of several seeds (from `summary`) get the mean and the span of their per-seed intervals."""
    rows = []
    for key, group in _settings(evaluations).items():
        for metric, column in METRICS.items():
            grid = _grid(group, column)
            result = pooled_bootstrap([[grid]], n_resamples=n_resamples)
            rows.append({**dict(zip(GROUP_FIELDS, key, strict=True)), "model": setting_model(group[0].meta["model"]),
                         "metric": metric, "value": result.estimate, "ci_low": result.low, "ci_high": result.high,
                         "n": len(grid.ids), "n_seeds": len(group)})  # fmt: skip
    if summary is not None:
        extra = summary[~summary["metric"].isin(list(METRICS))]
        for key, group in extra.groupby([*GROUP_FIELDS, "metric"], sort=False, dropna=False):
            rows.append({**dict(zip([*GROUP_FIELDS, "metric"], key, strict=True)),
                         "model": setting_model(group.iloc[0].model), "value": group["value"].mean(),
                         "ci_low": group["ci_low"].min(), "ci_high": group["ci_high"].max(), "n": int(group["n"].max()),
                         "n_seeds": len(group)})  # fmt: skip
    frame = pd.DataFrame(rows, columns=SEED_MEAN_COLUMNS)
    frame = frame.assign(_order=frame["kind"].map(KIND_ORDER))
    frame = frame.sort_values(["_order", "student", "teacher", "source", "method", "task", "metric"], kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def seed_deltas(evaluations: list[Evaluation], baseline_method: str, n_resamples: int = 1000):
    """Δ of every setting's seed mean against the `baseline_method` setting of the same student, teacher
    and source, paired by seed and example (resampling both); task `average` is stratified by task.
    Settings whose seeds differ from their baseline's are left out."""
    settings = {k: v for k, v in _settings(evaluations).items() if k[0] == "run"}
    rows = []
    by_setting: dict[tuple, dict[str, tuple[list, list]]] = {}
    for key, group in settings.items():
        _, student, teacher, source, method, task = key
        if method == baseline_method:
            continue
        base = settings.get(("run", student, teacher, source, baseline_method, task))
        if base is None and teacher == "none":
            found = [v for k, v in settings.items() if k[1] == student and k[3:] == (source, baseline_method, task)]
            base = found[0] if len(found) == 1 else None
        if base is None or sorted(e.meta["seed"] for e in group) != sorted(e.meta["seed"] for e in base):
            continue
        by_setting.setdefault(key[1:5], {})[task] = (group, base)
    for (student, teacher, source, method), tasks in by_setting.items():
        first, base = next(iter(tasks.values()))
        for metric, column in METRICS.items():
            grids = {task: _grid(group, column, minus=theirs) for task, (group, theirs) in tasks.items()}
            items = [(task, [grid]) for task, grid in grids.items()]
            items += [("average", list(grids.values()))] if len(grids) > 1 else []  # tasks stratified
            for task, setting in items:
                result = pooled_bootstrap([setting], n_resamples=n_resamples)
                rows.append({"model": setting_model(first[0].meta["model"]), "student": student, "teacher": teacher,
                             "source": source, "method": method, "baseline": setting_model(base[0].meta["model"]),
                             "task": task, "metric": metric, "delta": result.estimate, "ci_low": result.low,
                             "ci_high": result.high, "n": sum(len(g.ids) for g in setting), "n_seeds": len(first),
                             "significant": result.significant})  # fmt: skip
    return pd.DataFrame(rows, columns=SEED_DELTA_COLUMNS)


def _by_id(group: list[Evaluation], column: str):
    """(S, ids) frame of one setting's seeds, rows in seed order."""
    ordered = sorted(group, key=lambda e: e.meta["seed"])
    return pd.DataFrame([ev.table.set_index("id")[column].astype(float) for ev in ordered]).dropna(axis=1)


def _fmt(metric: str, value: float, signed: bool = False) -> str:
    if value != value:  # NaN
        return "–"
    digits = ALL_METRICS[metric].digits if metric in ALL_METRICS else 3
    return format(round(value, digits) + 0.0, ("+" if signed else "") + f".{digits}f")  # + 0.0: no "-0.000"


def markdown_tables(summary, deltas=None, baseline_method: str | None = None) -> str:
    """One wide table per metric, as in the paper: rows = models grouped by source, columns = tasks +
    average; a cell is the mean with its 95% interval, and a run's cell adds its Δ vs the `baseline_method`
    run, marked where the paired interval excludes 0. `summary` may be per seed (`summarize`) or one row per
    setting over its seeds (`seed_means`, with `n_seeds`)."""
    lines = ["# kdlm summary", ""]
    seeds = int(summary["n_seeds"].max()) if "n_seeds" in summary.columns and len(summary) else 1
    has_deltas = deltas is not None and not deltas.empty
    if seeds > 1:
        lines += [f"Cells: the mean over each setting's seeds (up to {seeds}) [95% interval, resampling seeds and "
                  "examples]; per-seed rows: summary.csv.", ""]  # fmt: skip
    else:
        lines += ["Cells: task mean [95% bootstrap interval over examples].", ""]
    if has_deltas:
        lines += [
            f"Δ: against the `{baseline_method}` run of the same student, teacher and source"
            + (", paired by seed and example" if seeds > 1 else " and seed, paired by example")
            + f"; `{SIGNIFICANT}` where its 95% interval excludes 0.",
            "",
        ]
    for metric in summary["metric"].unique():
        part = summary[summary["metric"] == metric]
        tasks = sorted(part["task"].unique())
        lines += [f"## {metric}", "", "| model | " + " | ".join(tasks) + " | average |", "|" + "---|" * (2 + len(tasks))]
        current_group = None
        groups = list(part.groupby("model", sort=False))
        sources = list(dict.fromkeys(g.iloc[0].source for _, g in groups if g.iloc[0].kind == "run"))
        groups.sort(key=lambda item: -1 if item[1].iloc[0].kind != "run" else sources.index(item[1].iloc[0].source))
        for model, group in groups:
            first = group.iloc[0]
            heading = "reference models" if first.kind != "run" else f"source: {first.source}"
            if heading != current_group:
                lines.append(f"| **{heading}** |" + " |" * (1 + len(tasks)))
                current_group = heading
            delta_of = {}
            if has_deltas:
                mine = deltas[(deltas["model"] == model) & (deltas["metric"] == metric)]
                delta_of = {r.task: r for r in mine.itertuples()}
            cells = []
            for task in tasks:
                row = group[group["task"] == task]
                cells.append("–" if row.empty else _fmt(metric, row.iloc[0].value) + _interval(metric, row.iloc[0])
                             + _delta_cell(metric, delta_of.get(task)))  # fmt: skip
            average = _fmt(metric, group["value"].mean())
            if len(tasks) == 1:
                average += _delta_cell(metric, delta_of.get(tasks[0]))
            else:
                average += _delta_cell(metric, delta_of.get("average"))
            lines.append(f"| {model} | " + " | ".join(cells) + f" | {average} |")
        lines.append("")
    return "\n".join(lines)


def truncation_note(evaluations: list[Evaluation]) -> str:
    """A section listing the evaluations whose prompts were cut to fit the context ('' when none was):
    their scores answer shortened questions, which a reader must know."""
    cut = [ev for ev in evaluations if ev.truncated_prompts]
    if not cut:
        return ""
    lines = ["## Prompts cut to fit the context", "", "| model | task | prompts cut | of |", "|---|---|---|---|"]
    lines += [f"| {ev.meta['model']} | {ev.meta['task']} | {ev.truncated_prompts} | {len(ev.table)} |" for ev in cut]
    return "\n".join(lines) + "\n"


def _interval(metric: str, row) -> str:
    if row.ci_low != row.ci_low:  # NaN: no interval
        return ""
    return f" [{_fmt(metric, row.ci_low)}, {_fmt(metric, row.ci_high)}]"


def _delta_cell(metric: str, row) -> str:
    if row is None:
        return ""
    return f" ({_fmt(metric, row.delta, signed=True)}{SIGNIFICANT if row.significant else ''})"


def write_report(eval_paths: list[Path], out_dir: Path, cfg: ReportConfig | None = None) -> Path:
    """Write summary.{parquet,csv,md}, summary_seeds.csv (one row per setting: the mean over its seeds),
    deltas.{parquet,csv} and the plots; returns the markdown path. The markdown and the plots show seed
    means once any setting has several seeds."""

    cfg = cfg or ReportConfig()
    evaluations = load_evaluations(eval_paths)
    summary = summarize(evaluations, n_resamples=cfg.n_resamples, judge_paths=cfg.judge_files,
                        harness_paths=cfg.harness_files)  # fmt: skip
    deltas = None
    if cfg.baseline_method:
        deltas = paired_deltas(evaluations, cfg.baseline_method, n_resamples=cfg.n_resamples)
    write_table(summary, out_dir / "summary.parquet", SUMMARY)
    with atomic_path(out_dir / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    frame = deltas if deltas is not None else pd.DataFrame(columns=DELTA_COLUMNS)
    with atomic_path(out_dir / "deltas.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    with atomic_path(out_dir / "deltas.csv") as tmp:
        frame.to_csv(tmp, index=False)
    means, mean_deltas = summary, deltas
    if max(len(group) for group in _settings(evaluations).values()) > 1:  # several seeds: tables of their means
        means = seed_means(evaluations, summary, n_resamples=cfg.n_resamples)
        if cfg.baseline_method:
            mean_deltas = seed_deltas(evaluations, cfg.baseline_method, n_resamples=cfg.n_resamples)
    with atomic_path(out_dir / "summary_seeds.csv") as tmp:
        (means if means is not summary else summary.assign(n_seeds=1)).to_csv(tmp, index=False)
    md = out_dir / "summary.md"
    with atomic_path(md) as tmp:
        tmp.write_text(markdown_tables(means, mean_deltas, cfg.baseline_method) + truncation_note(evaluations))
    if cfg.plots_dir is not None:
        for note in write_plots(means, cfg.train_logs, cfg.plots_dir):
            print(note)
    return md
