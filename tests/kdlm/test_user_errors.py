"""The battery of user mistakes: each ends in one line naming the culprit, exit status 2, and nothing left
behind or changed (or, where the right answer is to go on, in a note and a correct result).

Every case runs the real `kdlm` (or `snakemake`) in a subprocess on real files and tiny real models.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdlm.data.mixing import MixConfig, mix
from kdlm.lab.models import LabModelConfig, build_model
from kdlm.schemas import EVAL, SUMMARY, read_metadata, read_table, write_table
from kdlm.training.config import MethodConfig, TrainConfig
from kdlm.training.trainer import train

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KDLM = str(BIN / "kdlm")
CONTEXT = 64  # the small models' context: shorter than the default max_length (512) and long prompts


@pytest.fixture(scope="module")
def short(lab, tmp_path_factory) -> dict[str, Path]:
    """An OPT student and teacher with a 64-token context, and records whose first prompt is far longer."""
    out = tmp_path_factory.mktemp("short")
    for name, size, seed in (("student", 16, 1), ("teacher", 32, 0)):
        cfg = LabModelConfig(family="opt", hidden_size=size, num_layers=1, num_heads=2, intermediate_size=32,
                             max_position_embeddings=CONTEXT, seed=seed)  # fmt: skip
        build_model(cfg, lab["tokenizer"], out / name)
    records = json.loads(Path(lab["train_json"]).read_text())[:16]
    records[0]["input"] = " ".join(["word"] * 300)
    (out / "long.json").write_text(json.dumps(records))
    subprocess.run([KDLM, "prepare", "--input", str(out / "long.json"), "--dataset", "lab", "--out",
                    str(out / "long.parquet")], check=True, capture_output=True)  # fmt: skip
    (out / "not_parquet.parquet").write_text("instruction,output\n")
    (out / "a_dir").mkdir()
    return {**{k: out / k for k in ("student", "teacher", "a_dir")}, "records": out / "long.parquet",
            "not_parquet": out / "not_parquet.parquet"}  # fmt: skip


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _run(argv: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "80"}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _distill(short, data: str, training: str = "{}", out: str = "run", teacher: str | None = None) -> list[str]:
    return [KDLM, "distill", "--student", str(short["student"]), "--teacher", teacher or str(short["teacher"]),
            "--data", data, "--method", '{"loss": "forward"}', "--training", training, "--out", out]  # fmt: skip


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# Each case: (argv builder, words the one error line must contain). Builders get the models and a
# scratch directory; the scratch directory must be exactly as it was after the command.
CASES = {
    # 3. a mistyped model path, in each verb that loads a model
    "evaluate a mistyped model": (
        lambda s, d: [KDLM, "evaluate", "--model", str(d / "modle"), "--records", str(s["records"]), "--out", "e.parquet"],
        ["modle: no such model directory"],
    ),
    "generate a mistyped model": (
        lambda s, d: [KDLM, "generate", "--model", "./results/modle", "--name", "x", "--records", str(s["records"]),
                      "--out", "g.parquet"],  # fmt: skip
        ["./results/modle: no such model directory"],
    ),
    "distill a mistyped teacher": (
        lambda s, d: _distill(s, str(s["records"]), teacher=str(d / "teacher-typo")),
        ["teacher-typo: no such model directory"],
    ),
    "a directory without config.json as the model": (
        lambda s, d: [KDLM, "evaluate", "--model", str(s["a_dir"]), "--records", str(s["records"]), "--out", "e.parquet"],
        ["a_dir: not a model directory (it has no config.json)"],
    ),
    "lab model from a missing tokenizer": (
        lambda s, d: [KDLM, "lab", "model", "--tokenizer", str(d / "tokenizr"), "--out", "model"],
        ["tokenizr: no tokenizer here (no tokenizer.json)"],
    ),
    "judge without a server": (
        lambda s, d: [KDLM, "judge", "--eval", str(s["records"]), "--out", "j.parquet"],
        ["judge: missing required option(s) ['base_url', 'model']"],
    ),
    # 5. --training values: wrong types and ranges, all before any model loads
    "training epochs as a word": (lambda s, d: _distill(s, str(s["records"]), '{"epochs": "three"}'),
                                  ["training: epochs must be a number, got 'three'"]),
    "training weight_decay below 0": (lambda s, d: _distill(s, str(s["records"]), '{"weight_decay": -1}'),
                                      ["training: weight_decay must be >= 0, got -1"]),
    "training max_grad_norm below 0": (lambda s, d: _distill(s, str(s["records"]), '{"max_grad_norm": -1}'),
                                       ["training: max_grad_norm must be > 0, got -1"]),
    "training batch_size fractional": (lambda s, d: _distill(s, str(s["records"]), '{"batch_size": 1.5}'),
                                       ["training: batch_size must be an integer, got 1.5"]),
    "onpolicy max_new_tokens as a word": (
        lambda s, d: _distill(s, str(s["records"]), '{"onpolicy": {"max_new_tokens": "many"}}'),
        ["training: onpolicy: max_new_tokens must be an integer (or null), got 'many'"],
    ),
    # 6. kdlm prepare: a directory, bytes that are not UTF-8 (named by file and line)
    "prepare a directory": (
        lambda s, d: [KDLM, "prepare", "--input", str(s["a_dir"]), "--dataset", "x", "--out", "p.parquet"],
        ["a_dir: is a directory; format 'alpaca' reads one file"],
    ),
    "prepare JSON that is not UTF-8": (
        lambda s, d: [KDLM, "prepare", "--input", _write(d / "latin1.json", b'[{"instruction": "a", "output": "b"},\n'
                      b'{"instruction": "caf\xe9", "output": "b"}]'), "--dataset", "x", "--out", "p.parquet"],  # fmt: skip
        ["latin1.json: line 2: not valid UTF-8 (byte 0xe9)"],
    ),
    "prepare JSONL that is not UTF-8": (
        lambda s, d: [KDLM, "prepare", "--format", "jsonl", "--input", _write(d / "latin1.jsonl",
                      b'{"instruction": "a", "output": "b"}\n\n{"instruction": "caf\xe9", "output": "b"}\n'),
                      "--dataset", "x", "--out", "p.parquet"],  # fmt: skip
        ["latin1.jsonl: line 3: not valid UTF-8 (byte 0xe9)"],
    ),
    "prepare CSV that is not UTF-8": (
        lambda s, d: [KDLM, "prepare", "--format", "csv", "--input", _write(d / "latin1.csv",
                      b"instruction,output\na,b\nb,c\ncaf\xe9,b\n"), "--dataset", "x", "--out", "p.parquet"],  # fmt: skip
        ["latin1.csv: line 4: not valid UTF-8 (byte 0xe9)"],
    ),
    # 7. a --data that is not parquet or is missing; an --out that is a directory (checked before generating)
    "distill data that is not parquet": (lambda s, d: _distill(s, str(s["not_parquet"])),
                                         ["not_parquet.parquet: not a readable parquet file"]),
    "distill data that is missing": (lambda s, d: _distill(s, str(d / "mixed.parquet")),
                                     ["mixed.parquet: no such file"]),
    "evaluate into a directory": (
        lambda s, d: [KDLM, "evaluate", "--model", str(s["student"]), "--records", str(s["records"]), "--out",
                      str(s["a_dir"])],  # fmt: skip
        ["a_dir: is a directory; an output file is expected here"],
    ),
    "distill into a file": (lambda s, d: _distill(s, str(s["records"]), out=_write(d / "model", b"x")),
                            ["model: is a file; an output directory is expected here"]),
    # 1. generation lengths against the context, checked from the config before any weight loads
    "evaluate max_new_tokens over the context": (
        lambda s, d: [KDLM, "evaluate", "--model", str(s["student"]), "--records", str(s["records"]), "--out",
                      "e.parquet", "--max-new-tokens", str(CONTEXT)],  # fmt: skip
        [f"max_new_tokens={CONTEXT} leaves no room for a prompt in a context of {CONTEXT} tokens"],
    ),
    "generate max_new_tokens over the context": (
        lambda s, d: [KDLM, "generate", "--model", str(s["teacher"]), "--name", "t", "--records", str(s["records"]),
                      "--out", "g.parquet", "--generation", json.dumps({"max_new_tokens": 100})],  # fmt: skip
        [f"max_new_tokens=100 leaves no room for a prompt in a context of {CONTEXT} tokens"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_error_is_one_line_and_leaves_nothing(short, tmp_path, case):
    build_argv, expected = CASES[case]
    argv = build_argv(short, tmp_path)
    before, models_before = _snapshot(tmp_path), _snapshot(short["student"].parent)
    result = _run(argv, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    verb = argv[1]
    assert last.startswith(f"kdlm {verb}: error: "), result.stderr[-2000:]
    for words in expected:
        assert words in last, last
    assert _snapshot(tmp_path) == before  # nothing written, nothing half-written, no checkpoint directory
    assert _snapshot(short["student"].parent) == models_before


def test_verbose_shows_the_traceback(short, tmp_path):
    result = _run([KDLM, "-v", *CASES["evaluate a mistyped model"][0](short, tmp_path)[1:]], tmp_path)
    assert result.returncode == 2 and "Traceback" in result.stderr and "no such model directory" in result.stderr


def test_a_bom_is_accepted_in_every_text_format(tmp_path):
    bom = b"\xef\xbb\xbf"
    files = {
        "alpaca": _write(tmp_path / "a.json", bom + b'[{"instruction": "caf\xc3\xa9", "output": "b"}]'),
        "jsonl": _write(tmp_path / "a.jsonl", bom + b'{"instruction": "caf\xc3\xa9", "output": "b"}\n'),
        "csv": _write(tmp_path / "a.csv", bom + b"instruction,output\ncaf\xc3\xa9,b\n"),
    }
    for fmt, path in files.items():
        out = tmp_path / f"{fmt}.parquet"
        result = _run([KDLM, "prepare", "--format", fmt, "--input", path, "--dataset", "x", "--out", str(out)], tmp_path)
        assert result.returncode == 0, result.stderr
        records = pd.read_parquet(out)
        assert records["instruction"].tolist() == ["café"] and list(records.columns)[:3] == ["id", "instruction", "input"]


def test_training_max_length_over_the_context_is_capped_with_a_note(short, tmp_path):
    """The default max_length (512) against a 64-token context and a 300-word prompt: an IndexError
    traceback with a checkpoint directory left behind before; now a logged cap and a trained student."""
    result = _run(_distill(short, str(short["records"]), '{"max_steps": 1, "batch_size": 4}'), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"training max_length=512 is longer than the context of {short['student']} ({CONTEXT} tokens): " \
           f"capped to {CONTEXT}" in result.stderr  # fmt: skip
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["training"]["max_length"] == CONTEXT and run["global_steps"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_checkpoint_directory(short, lab_records, tmp_path):
    data = tmp_path / "student.parquet"
    mix(lab_records["train"], data, MixConfig("student"))

    def fail(samples):
        raise RuntimeError("stop at the first on-policy batch")

    with pytest.raises(RuntimeError, match="first on-policy batch"):
        train(student_path=str(short["student"]), teacher_path=str(short["teacher"]), data_path=data,
              out_dir=tmp_path / "run", method=MethodConfig(loss="forward"),
              cfg=TrainConfig(max_steps=2, batch_size=4, max_length=CONTEXT, onpolicy={"max_new_tokens": 4}),
              sample_hook=fail)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.parquet"]


def test_evaluate_stores_how_many_prompts_it_cut_and_the_report_shows_it(short, tmp_path):
    label = {"kind": "base", "model": "base/short", "student": "short", "teacher": "", "source": "", "method": "",
             "seed": 0, "task": "long"}  # fmt: skip
    out = tmp_path / "eval.parquet"
    result = _run([KDLM, "evaluate", "--model", str(short["student"]), "--records", str(short["records"]), "--out",
                   str(out), "--max-new-tokens", "4", "--label", json.dumps(label)], tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_metadata(out)["truncated_prompts"] == 1 and len(read_table(out, EVAL)) == 16
    result = _run([KDLM, "report", "--evals", str(out), "--out-dir", str(tmp_path / "tables")], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = (tmp_path / "tables" / "summary.md").read_text()
    assert "## Prompts cut to fit the context" in summary and "| base/short | long | 1 | 16 |" in summary


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_results_and_models_honour_the_umask(lab, lab_records, tmp_path, mask):
    def with_umask():
        os.umask(mask)

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    commands = [
        [KDLM, "prepare", "--input", str(lab["test_json"]), "--dataset", "lab", "--out", str(tmp_path / "r.parquet")],
        [KDLM, "lab", "model", "--tokenizer", str(lab["tokenizer"]), "--hidden-size", "16", "--num-layers", "1",
         "--num-heads", "2", "--intermediate-size", "32", "--out", str(tmp_path / "model")],
    ]  # fmt: skip
    for argv in commands:
        subprocess.run(argv, check=True, capture_output=True, env=env, preexec_fn=with_umask, timeout=300)
    for path in [tmp_path / "r.parquet", tmp_path / "model", *sorted((tmp_path / "model").iterdir())]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o777 if path.is_dir() else 0o666) & ~mask, (path, oct(mode))
    assert (tmp_path / "model" / "model.safetensors").exists()


def _summary(path: Path) -> Path:
    rows = []
    for kind, model, source, method in [("teacher", "teacher/llama-teacher", "", ""), ("base", "base/llama-student", "", "")] + [
        ("run", f"llama-student__llama-teacher/{s}/{m}/seed0", s, m)
        for s in ("gt", "teacher", "mix_request_teacher", "mix_request_gt") for m in ("fkl", "atkd")
    ]:  # fmt: skip
        for metric in ("exact_match", "rouge_l"):
            rows.append({"kind": kind, "model": model, "student": "" if kind == "teacher" else "llama-student",
                         "teacher": "" if kind == "base" else "llama-teacher", "source": source, "method": method,
                         "seed": 0, "task": "lab_test", "metric": metric, "value": 0.5, "ci_low": 0.4, "ci_high": 0.6,
                         "n": 300})  # fmt: skip
    write_table(pd.DataFrame(rows), path, SUMMARY)
    return path


def test_results_fit_80_columns_when_piped(tmp_path):
    table = _summary(tmp_path / "summary.parquet")
    result = _run([KDLM, "results", "--table", str(table), "--metric", "exact_match"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in result.stdout
    header = next(line for line in lines if line.startswith("┃"))
    columns = [cell.strip() for cell in header.strip("┃").split("┃")]
    body = [dict(zip(columns, (c.strip() for c in line.strip("│").split("│")), strict=True))
            for line in lines if line.startswith("│")]  # fmt: skip
    assert len(body) == 10 and columns == ["source", "method", "value", "95% CI"]
    sources_methods = {(row["source"], row["method"]) for row in body}
    assert ("mix_request_teacher", "atkd") in sources_methods and ("mix_request_gt", "fkl") in sources_methods
    assert "metric=exact_match" in result.stdout and "student=llama-student" in result.stdout
    pivot = _run([KDLM, "results", "--table", str(table), "--pivot"], tmp_path)
    assert pivot.returncode == 0 and "lab_test" in pivot.stdout and "average" in pivot.stdout
    assert max(len(line) for line in pivot.stdout.splitlines()) <= 80


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--metric", "exact"], "unknown metric 'exact'; this table has: ['exact_match', 'rouge_l']"),
        (["--task", "lab"], "unknown task 'lab'; this table has: ['lab_test']"),
        (["--filter", "source=techer"], "unknown source value 'techer'; this table has: ['gt', 'mix_request_gt'"),
    ],
)
def test_results_unknown_choice_lists_the_choices(tmp_path, option, expected):
    table = _summary(tmp_path / "summary.parquet")
    result = _run([KDLM, "results", "--table", str(table), *option], tmp_path)
    assert result.returncode == 2 and expected in result.stderr and result.stdout == ""


# ------------------------------------------------------------------------------------- the workflow


def _snakemake(workdir: Path, *args: str, snakefile: Path = REPO / "workflow" / "Snakefile"):
    return _run([sys.executable, "-m", "snakemake", "-n", "-s", str(snakefile), "-d", str(workdir), *args], workdir)


def test_instruct_eval_on_the_lab_stops_at_planning_naming_setting_and_models(tmp_path):
    result = _snakemake(tmp_path, "--configfile", str(REPO / "config" / "instruct_eval.yaml"))
    assert result.returncode == 2
    assert "evaluation.generation.max_new_tokens=256 leaves no room for a prompt in the 256-token context of " \
           "teacher 'llama-teacher' (results/lab/models/llama-teacher), in its evaluate jobs" in result.stderr  # fmt: skip
    assert "student 'llama-student'" in result.stderr and "Job stats" not in result.stdout
    fitted = tmp_path / "fit.yaml"
    fitted.write_text(yaml.safe_dump({"evaluation": {"generation": {"max_new_tokens": 128}}}))
    result = _snakemake(tmp_path, "--configfile", str(REPO / "config" / "instruct_eval.yaml"), str(fitted))
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "results").exists()


def test_a_config_error_has_no_traceback_lines(tmp_path):
    (tmp_path / "bad.yaml").write_text("training:\n  lr: -1\n")
    result = _snakemake(tmp_path, "--configfile", str(tmp_path / "bad.yaml"))
    assert result.returncode == 2
    assert "kdlm: invalid configuration:\n  training: lr must be > 0, got -1" in result.stderr
    assert 'File "' not in result.stderr


def test_a_yaml_syntax_error_in_the_study_config_names_file_and_line(tmp_path):
    copy = tmp_path / "kdlm"
    shutil.copytree(REPO / "workflow", copy / "workflow")
    shutil.copytree(REPO / "config", copy / "config")
    config = copy / "config" / "config.yaml"
    lines = config.read_text().splitlines()
    where = next(i for i, line in enumerate(lines) if line.startswith("training:")) + 2
    lines[where] = "  lr: [2.0e-3"
    config.write_text("\n".join(lines) + "\n")
    result = _snakemake(tmp_path, snakefile=copy / "workflow" / "Snakefile")
    assert result.returncode == 2
    assert f"kdlm: {config}: not valid YAML: line {where + 2}" in result.stderr, result.stderr[-2000:]


def test_check_config_names_the_line_snakemake_does_not(tmp_path):
    """`snakemake --configfile` reads the file before the workflow runs and says only "not valid JSON or
    YAML"; `kdlm check-config` names file, line and column, then checks the config as the workflow does."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr: 1.0e-3\n  epochs: [3\n")
    result = _run([KDLM, "check-config", str(bad)], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"kdlm check-config: error: {bad}: not valid YAML: line 4, column 1: " \
                                    "expected ',' or ']', but got '<stream end>'"  # fmt: skip
    result = _run([KDLM, "check-config", str(REPO / "config" / "instruct_eval.yaml")], tmp_path)
    assert result.returncode == 2 and "evaluation.generation.max_new_tokens=256 leaves no room" in result.stderr
    result = _run([KDLM, "check-config", str(REPO / "config" / "smoke.yaml")], tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("valid: ")
