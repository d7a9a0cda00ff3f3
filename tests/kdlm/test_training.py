"""Training a real tiny student: loss goes down, outputs are complete, mismatched vocabularies stop early."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from kdlm.data.mixing import mix
from kdlm.generation import GenerateConfig, generate_for_records
from kdlm.lab.models import LabModelConfig, build_model
from kdlm.lab.tokenizer import train_tokenizer
from kdlm.losses import LOSSES
from kdlm.schemas import GENERATED, MIXED, read_table
from kdlm.sections import build
from kdlm.training.config import MethodConfig, TrainConfig
from kdlm.training.trainer import train

FAST = {"epochs": 3, "lr": 3e-3, "batch_size": 16, "grad_accum": 1, "max_length": 64, "logging_steps": 2}


@pytest.fixture(scope="module")
def teacher_mixed(lab, lab_records, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed")
    generate_for_records(
        str(lab["teacher"]), lab_records["train"], out / "gen.parquet", GenerateConfig(max_new_tokens=8, batch_size=64), "t"
    )
    mix(lab_records["train"], out / "teacher.parquet", "teacher", generated_path=out / "gen.parquet")
    mix(lab_records["train"], out / "gt.parquet", "gt")
    return out


def test_mixed_sources_have_the_contract_columns(teacher_mixed, lab_records):
    gen = read_table(teacher_mixed / "gen.parquet", GENERATED)
    assert set(gen["finish_reason"]) <= {"eos", "length"}
    assert (gen["n_response_tokens"] <= 8).all()
    teacher = read_table(teacher_mixed / "teacher.parquet", MIXED)
    gt = read_table(teacher_mixed / "gt.parquet", MIXED)
    assert teacher["id"].tolist() == gt["id"].tolist()
    assert teacher["prompt"].tolist() == gt["prompt"].tolist() == gen["prompt"].tolist()
    assert set(teacher["origin"]) == {"teacher"} and set(gt["origin"]) == {"gt"}
    assert teacher["response"].tolist() == gen["response"].tolist()
    assert not teacher["online"].any()


@pytest.mark.parametrize(
    ("loss", "source"), [(name, "gt") for name in LOSSES] + [("forward", "teacher"), ("sft", "teacher")]
)
def test_training_lowers_the_loss_and_writes_a_complete_run(lab, teacher_mixed, tmp_path, loss, source):
    # every loss of the library trains on ground truth; the teacher source both with KD and as SeqKD
    out = tmp_path / "run"
    run = train(
        student_path=str(lab["student"]),
        teacher_path=None if loss == "sft" else str(lab["teacher"]),
        data_path=teacher_mixed / f"{source}.parquet",
        out_dir=out,
        method=MethodConfig(loss=loss),
        cfg=TrainConfig(**FAST),
    )
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "train_log.parquet", "run.json"}
    log = pd.read_parquet(out / "train_log.parquet")
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(log.columns)
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]
    assert (log["tokens_per_s"] > 0).all()
    saved = json.loads((out / "run.json").read_text())
    assert saved["method"] == {"loss": loss} and saved["global_steps"] == run["global_steps"] > 0
    assert saved["teacher"] == (None if loss == "sft" else str(lab["teacher"]))
    before = AutoModelForCausalLM.from_pretrained(lab["student"])
    after = AutoModelForCausalLM.from_pretrained(out)
    assert not torch.equal(before.model.embed_tokens.weight, after.model.embed_tokens.weight)
    assert not list(tmp_path.glob(".run.*")), "no temporary directory may be left behind"


def test_teacher_with_another_vocabulary_is_refused_before_training(lab, teacher_mixed, tmp_path):
    train_tokenizer(["completely different text " * 50], 300, tmp_path / "tok")
    build_model(LabModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), tmp_path / "tok", tmp_path / "other")
    with pytest.raises(ValueError, match=r"vocabularies differ \(student tokenizer \d+ tokens, teacher \d+\)"):
        train(
            student_path=str(lab["student"]),
            teacher_path=str(tmp_path / "other"),
            data_path=teacher_mixed / "gt.parquet",
            out_dir=tmp_path / "run",
            method=MethodConfig(loss="forward"),
            cfg=TrainConfig(**FAST),
        )
    assert not (tmp_path / "run").exists()


def test_unknown_training_option_and_method_are_named():
    with pytest.raises(ValueError, match=r"training: unknown option\(s\) \['lr_rate'\]"):
        build(TrainConfig, {"lr_rate": 1.0}, "training")
    with pytest.raises(ValueError, match="has no 'loss' key"):
        MethodConfig.from_dict({"lam": 0.2})
