"""The report on a fixture of two runs × two tasks: the long summary, the paired Δ table, the wide
markdown table and the plots, all checked against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kdlm.cli import main
from kdlm.report import ReportConfig, write_report
from kdlm.schemas import EVAL, TRAIN_LOG, write_table

RUN = "s__t/teacher/{method}/seed0"
# per-example ROUGE-L; t1: atkd − fkl = +0.2 everywhere; t2: ±0.1 alternating (mean 0)
ROUGE = {
    ("fkl", "t1"): [0.5, 0.5, 0.5, 0.5],
    ("atkd", "t1"): [0.7, 0.7, 0.7, 0.7],
    ("fkl", "t2"): [0.2, 0.4, 0.6, 0.8],
    ("atkd", "t2"): [0.3, 0.3, 0.7, 0.7],
}


def _write_eval(root: Path, method: str, task: str) -> Path:
    rouge = ROUGE[(method, task)]
    ids = [f"{task}-{i}" for i in range(len(rouge))]
    df = pd.DataFrame(
        {
            "id": ids[::-1] if method == "atkd" else ids,  # row order must not matter: pairs go by id
            "prompt": ["p"] * 4,
            "reference": ["r"] * 4,
            "prediction": ["x"] * 4,
            "rouge_l": rouge[::-1] if method == "atkd" else rouge,
            "exact_match": [1.0 if method == "atkd" and task == "t1" else 0.0] * 4,
            "n_response_tokens": [10, 10, 10, 10] if method == "fkl" else [12, 12, 12, 12],
            "finish_reason": ["eos"] * 4,
        }
    )
    label = {"kind": "run", "model": RUN.format(method=method), "student": "s", "teacher": "t", "source": "teacher",
             "method": method, "seed": 0, "task": task}  # fmt: skip
    path = root / "eval" / RUN.format(method=method) / f"{task}.parquet"
    write_table(df, path, EVAL, metadata={**label, "decoding": "greedy"})
    return path


def _write_train_log(root: Path, method: str) -> Path:
    steps = [10, 20, 30]
    df = pd.DataFrame({"step": steps, "epoch": [0.3, 0.6, 1.0], "loss": [3.0, 2.0, 1.5], "lr": [1e-3] * 3,
                       "grad_norm": [1.0] * 3, "tokens_per_s": [100.0] * 3})  # fmt: skip
    if method == "atkd":
        df = df.assign(atkd_threshold=[0.6, 0.5, 0.4], atkd_n_easy=[50, 50, 50], atkd_n_hard=[50, 51, 50],
                       atkd_loss_easy=[1.0, 0.8, 0.6], atkd_loss_hard=[4.0, 3.0, 2.5])  # fmt: skip
    path = root / "runs" / RUN.format(method=method) / "train_log.parquet"
    write_table(df, path, TRAIN_LOG, extra_columns=True)
    return path


@pytest.fixture(scope="module")
def fixture_study(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("study")
    evals = [_write_eval(root, m, t) for m in ("fkl", "atkd") for t in ("t1", "t2")]
    logs = [_write_train_log(root, m) for m in ("fkl", "atkd")]
    cfg = ReportConfig(baseline_method="fkl", plots_dir=root / "plots", train_logs=logs)
    md = write_report(evals, root / "tables", cfg)
    return {"root": root, "evals": evals, "logs": logs, "md": md}


def test_long_summary(fixture_study):
    summary = pd.read_parquet(fixture_study["root"] / "tables" / "summary.parquet")
    assert len(summary) == 2 * 2 * 3  # runs × tasks × metrics
    rouge = summary[summary["metric"] == "rouge_l"].set_index(["method", "task"])["value"]
    assert rouge.to_dict() == pytest.approx(
        {("atkd", "t1"): 0.7, ("atkd", "t2"): 0.5, ("fkl", "t1"): 0.5, ("fkl", "t2"): 0.5}
    )
    assert (summary["n"] == 4).all()
    assert (summary["ci_low"] <= summary["value"] + 1e-12).all()
    assert len(pd.read_csv(fixture_study["root"] / "tables" / "summary.csv")) == len(summary)


def test_paired_deltas(fixture_study):
    deltas = pd.read_parquet(fixture_study["root"] / "tables" / "deltas.parquet")
    assert set(deltas["model"]) == {RUN.format(method="atkd")}
    assert set(deltas["baseline"]) == {RUN.format(method="fkl")}
    rouge = deltas[deltas["metric"] == "rouge_l"].set_index("task")
    assert rouge.loc["t1", ["delta", "ci_low", "ci_high"]].tolist() == pytest.approx([0.2, 0.2, 0.2])
    assert rouge.loc["t2", "delta"] == pytest.approx(0.0)
    assert rouge.loc["t2", "ci_low"] < 0 < rouge.loc["t2", "ci_high"]
    # average = mean of task Δs; each resample lies in [0.2 − 0.1, 0.2 + 0.1] / 2 → excludes 0
    assert rouge.loc["average", "delta"] == pytest.approx(0.1)
    assert 0.05 - 1e-9 <= rouge.loc["average", "ci_low"] <= rouge.loc["average", "ci_high"] <= 0.15 + 1e-9
    assert rouge["significant"].to_dict() == {"t1": True, "t2": False, "average": True}
    tokens = deltas[deltas["metric"] == "response_tokens"].set_index("task")
    assert tokens.loc["average", "delta"] == pytest.approx(2.0)
    assert (tokens["n"] == [4, 4, 8]).all()


def test_wide_markdown_table(fixture_study):
    md = fixture_study["md"].read_text()
    section = md.split("## rouge_l")[1].split("##")[0]
    assert "| model | t1 | t2 | average |" in section
    assert "| **source: teacher** | | | |" in section
    assert "| s__t/teacher/fkl/seed0 | 0.500 [0.500, 0.500] | 0.500 [0.300, 0.700] | 0.500 |" in section
    assert ("| s__t/teacher/atkd/seed0 | 0.700 [0.700, 0.700] (+0.200*) | 0.500 [0.300, 0.700] (+0.000) | "
            "0.600 (+0.100*) |") in section  # fmt: skip
    tokens = md.split("## response_tokens")[1].split("##")[0]
    assert "| s__t/teacher/atkd/seed0 | 12.0 [12.0, 12.0] (+2.0*) | 12.0 [12.0, 12.0] (+2.0*) | 12.0 (+2.0*) |" in tokens


def test_plots_are_pngs(fixture_study):
    plots = fixture_study["root"] / "plots"
    names = {"scores_rouge_l.png", "scores_exact_match.png", "scores_response_tokens.png", "train_loss.png", "atkd.png"}
    assert {p.name for p in plots.iterdir()} == names
    for name in names:
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_report_without_baseline_or_plots(fixture_study, tmp_path, capsys):
    assert main(["report", "--evals", *map(str, fixture_study["evals"]), "--out-dir", str(tmp_path),
                 "--baseline-method", ""]) == 0  # fmt: skip
    md = (tmp_path / "summary.md").read_text()
    assert "| s__t/teacher/atkd/seed0 | 0.700 [0.700, 0.700] | 0.500 [0.300, 0.700] | 0.600 |" in md
    assert pd.read_csv(tmp_path / "deltas.csv").empty
    assert "kdlm summary" in capsys.readouterr().out


def test_description_missing_is_an_error(tmp_path):
    path = tmp_path / "bare.parquet"
    write_table(pd.DataFrame({c: [] for c in EVAL.names}), path, EVAL)
    with pytest.raises(ValueError, match="lacks description"):
        write_report([path], tmp_path / "tables")


def _seed_eval(root: Path, method: str, seed: int, scores: list[float]) -> Path:
    model = f"s__t/gt/{method}/seed{seed}"
    df = pd.DataFrame({"id": [f"x{i}" for i in range(len(scores))], "prompt": "p", "reference": "r", "prediction": "x",
                       "rouge_l": scores, "exact_match": scores, "n_response_tokens": 5, "finish_reason": "eos"})  # fmt: skip
    label = {"kind": "run", "model": model, "student": "s", "teacher": "t", "source": "gt", "method": method,
             "seed": seed, "task": "t1"}  # fmt: skip
    path = root / "eval" / model / "t1.parquet"
    write_table(df, path, EVAL, metadata=label)
    return path


def test_several_seeds_give_seed_means_with_intervals_over_seeds_and_examples(tmp_path):
    # fkl: seeds 0.2 / 0.6 (mean 0.4); atkd: fkl + 0.2 on every example of every seed
    low, high = [0.1, 0.2, 0.3, 0.2, 0.2], [0.5, 0.6, 0.7, 0.6, 0.6]
    evals = [_seed_eval(tmp_path, "fkl", 0, low), _seed_eval(tmp_path, "fkl", 1, high),
             _seed_eval(tmp_path, "atkd", 0, [x + 0.2 for x in low]),
             _seed_eval(tmp_path, "atkd", 1, [x + 0.2 for x in high])]  # fmt: skip
    md = write_report(evals, tmp_path / "tables", ReportConfig(baseline_method="fkl", n_resamples=500)).read_text()
    assert "mean over each setting's seeds (up to 2)" in md
    means = pd.read_csv(tmp_path / "tables" / "summary_seeds.csv")
    fkl = means[(means["method"] == "fkl") & (means["metric"] == "exact_match")].iloc[0]
    assert fkl["model"] == "s__t/gt/fkl" and fkl["n_seeds"] == 2 and fkl["value"] == pytest.approx(0.4)
    # the interval counts the seeds' disagreement: wider than either seed's own example interval
    per_seed = pd.read_csv(tmp_path / "tables" / "summary.csv")
    own = per_seed[(per_seed["method"] == "fkl") & (per_seed["metric"] == "exact_match")]
    assert fkl["ci_high"] - fkl["ci_low"] > (own["ci_high"] - own["ci_low"]).max()
    assert "| s__t/gt/atkd | 0.600 [" in md and "(+0.200*)" in md, "Δ pooled over seeds, paired by seed and example"
    assert "seed0" not in md.split("## exact_match")[1]
