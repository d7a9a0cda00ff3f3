"""A `kdlm distill` killed mid-way and rerun with the same command ends with an uninterrupted run's weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from kdlm.data.mixing import MixConfig, mix
from kdlm.sections import build
from kdlm.training.config import MethodConfig, TrainConfig
from kdlm.training.trainer import train

TRAINING = {"max_steps": 30, "lr": 3e-3, "batch_size": 4, "grad_accum": 2, "max_length": 48, "logging_steps": 1,
            "save_steps": 2, "threads": 1, "onpolicy": {"max_new_tokens": 4, "sample": True}}  # fmt: skip


@pytest.fixture(scope="module")
def data(lab_records, tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "mix_request_gt.parquet"
    mix(lab_records["train"], path, MixConfig("mix_request_gt"))
    return path


def _command(lab, data, out, checkpoints) -> list[str]:
    return [sys.executable, "-m", "kdlm.cli", "distill", "--student", str(lab["student"]), "--teacher",
            str(lab["teacher"]), "--data", str(data), "--method", '{"loss": "forward"}', "--training",
            json.dumps(TRAINING), "--out", str(out), "--checkpoint-dir", str(checkpoints)]  # fmt: skip


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_killed_run_resumes_to_the_uninterrupted_weights(lab, data, tmp_path, kill_when_written):
    _run(_command(lab, data, tmp_path / "whole", tmp_path / "whole.ckpt"))
    assert not (tmp_path / "whole.ckpt").exists(), "checkpoints are removed once the student is written"

    command = _command(lab, data, tmp_path / "resumed", tmp_path / "ckpt")
    first = tmp_path / "ckpt" / "checkpoint-2" / "trainer_state.json"
    kill_when_written(command, first)
    assert first.exists() and not (tmp_path / "resumed").exists(), "killed after its first checkpoint, before the end"

    with pytest.raises(ValueError, match=r"belong to another run; differing: training\.lr \(checkpoint 0\.003, now 0\.001\)"):
        train(student_path=str(lab["student"]), teacher_path=str(lab["teacher"]), data_path=data,
              out_dir=tmp_path / "other", method=MethodConfig(loss="forward"),
              cfg=build(TrainConfig, {**TRAINING, "lr": 1e-3}, "training"), checkpoint_dir=tmp_path / "ckpt")  # fmt: skip

    _run(command)
    run = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert run["resumed_from"] and run["global_steps"] == 30
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for name, tensor in whole.items():
        assert (tensor - resumed[name]).abs().max().item() <= 1e-6, name
    import pandas as pd

    log = pd.read_parquet(tmp_path / "resumed" / "train_log.parquet")
    assert log["step"].tolist() == list(range(1, 31)), "the log keeps the steps before the kill"


def test_checkpoint_of_another_architecture_is_refused(lab, data, tmp_path):
    from kdlm.models import load_model
    from kdlm.training.checkpoints import claim_checkpoint_dir, last_checkpoint, run_identity

    student = load_model(str(lab["student"]))
    identity = run_identity(student, str(lab["teacher"]), data, MethodConfig(loss="forward"), TrainConfig(), "paper")
    claim_checkpoint_dir(tmp_path, identity, None)  # a fresh run records what it is
    assert last_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint-4").mkdir()
    assert last_checkpoint(tmp_path) is None, "a checkpoint without trainer_state.json is incomplete"
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    student.config.hidden_size = 24
    student.config.save_pretrained(tmp_path / "checkpoint-4")
    resume = last_checkpoint(tmp_path)
    assert resume == tmp_path / "checkpoint-4"
    with pytest.raises(ValueError, match=r"differing: architecture\.hidden_size \(checkpoint 24, now 16\)"):
        claim_checkpoint_dir(tmp_path, identity, resume)
