"""The lab's pretraining stage: running text without held-out questions, and a causal-LM run that resumes."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from safetensors.torch import load_file

from kdlm.lab.corpus import FAMILIES, MEMORIZED, fact_table
from kdlm.lab.pretraining import (
    PretrainTextConfig,
    held_out_inputs,
    pretraining_passages,
    pretraining_sentences,
    write_pretraining_text,
)

TRAINING = {"max_steps": 24, "lr": 3e-3, "batch_size": 8, "max_length": 64, "logging_steps": 1, "save_steps": 2,
            "threads": 1}  # fmt: skip


def test_text_is_deterministic_and_states_the_lab_world():
    cfg = PretrainTextConfig(seed=5, n_passages=300)
    passages = pretraining_passages(cfg)
    assert passages == pretraining_passages(PretrainTextConfig(seed=5, n_passages=300))
    assert passages != pretraining_passages(PretrainTextConfig(seed=6, n_passages=300))
    text = " ".join(passages)
    assert all(country.capital in text for country in fact_table()), "every capital is stated somewhere"
    assert " = " in text and "reverse" in text and "uppercase" in text.lower()
    assert "Human:" not in text and "Assistant:" not in text, "running text, not the instruction template"
    lengths = [p.count(". ") + 1 for p in passages]
    assert min(lengths) >= 3 and max(lengths) <= 6 + 6, "3-6 sentences (sorted lists add '. ' rarely)"


def test_no_held_out_question_is_stated(lab):
    held_out = held_out_inputs([lab["validation_json"], lab["test_json"]])
    computed = {r["input"] for path in (lab["validation_json"], lab["test_json"])
                for r in json.loads(path.read_text()) if r["input"] and " " in r["input"]}  # fmt: skip
    assert computed and computed <= held_out
    cfg = PretrainTextConfig(n_passages=3000)
    stated = [(text, i) for passage in pretraining_sentences(cfg, held_out) for text, i in passage if i]
    operands = [(text, i.replace("+", " ").replace("-", " ").split()) for text, i in stated]
    assert stated and all(all(o in text for o in ops) for text, ops in operands), "each sentence states its input"
    assert not {i for _, i in stated} & computed, "no held-out question is stated"
    # the same draw without the held-out set does state some: the filter is what keeps them out
    unfiltered = {i for passage in pretraining_sentences(cfg) for _, i in passage if i}
    assert unfiltered & computed


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="n_passages"):
        PretrainTextConfig(n_passages=0)
    with pytest.raises(ValueError, match="sentences_per_passage"):
        PretrainTextConfig(sentences_per_passage=[4, 2])
    with pytest.raises(ValueError, match="families"):
        PretrainTextConfig(families=["poetry"])
    assert set(MEMORIZED) <= set(FAMILIES)


def _command(lab, text, out, checkpoints) -> list[str]:
    return [sys.executable, "-m", "kdlm.cli", "sft", "--student", str(lab["student"]), "--data", str(text),
            "--training", json.dumps(TRAINING), "--out", str(out), "--checkpoint-dir", str(checkpoints)]  # fmt: skip


def test_pretraining_counts_every_token_and_resumes_after_a_kill(lab, tmp_path, kill_when_written):
    text = write_pretraining_text(pretraining_passages(PretrainTextConfig(n_passages=200)), tmp_path / "text.parquet")
    rows = pd.read_parquet(text)
    assert (rows["prompt"] == "").all() and not rows["online"].any()

    whole = subprocess.run(_command(lab, text, tmp_path / "whole", tmp_path / "whole.ckpt"), capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = json.loads((tmp_path / "whole" / "run.json").read_text())
    words = sum(len(p.split()) for p in rows["response"])
    assert run["n_label_tokens"] >= words, "every token of a passage counts (no prompt is masked)"
    log = pd.read_parquet(tmp_path / "whole" / "train_log.parquet")
    assert log["loss"].iloc[-4:].mean() < log["loss"].iloc[:4].mean() - 0.5, "the causal LM learns the text"

    first = tmp_path / "ckpt" / "checkpoint-4" / "trainer_state.json"
    kill_when_written(_command(lab, text, tmp_path / "resumed", tmp_path / "ckpt"), first)
    assert first.exists() and not (tmp_path / "resumed").exists(), "killed mid-way, before the model was written"

    again = subprocess.run(_command(lab, text, tmp_path / "resumed", tmp_path / "ckpt"), capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    resumed_run = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert resumed_run["resumed_from"] and resumed_run["global_steps"] == TRAINING["max_steps"]
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert (tensor - b[name]).abs().max().item() <= 1e-6, name
