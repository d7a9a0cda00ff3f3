"""`torchrun --nproc-per-node 2` on CPU (gloo): both processes train one DDP student, written once."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
from safetensors.torch import load_file

from kdlm.data.mixing import MixConfig, mix


def test_two_process_ddp_run_writes_one_student(lab, lab_records, tmp_path):
    data = tmp_path / "mix_request_gt.parquet"
    mix(lab_records["train"], data, MixConfig("mix_request_gt"))
    training = {"max_steps": 3, "lr": 3e-3, "batch_size": 4, "grad_accum": 1, "max_length": 48, "logging_steps": 1,
                "threads": 1, "onpolicy": {"max_new_tokens": 4}}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "kdlm.cli", "distill", "--student", str(lab["student"]), "--teacher", str(lab["teacher"]),
               "--data", str(data), "--method", '{"loss": "atkd"}', "--training", json.dumps(training),
               "--out", str(tmp_path / "run"), "--checkpoint-dir", str(tmp_path / "ckpt")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["world_size"] == 2 and run["global_steps"] == 3
    assert run["distributed"] == "MULTI_CPU", "the student is wrapped for DDP over gloo"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")] == [], "one atomic output, no leftovers"
    assert load_file(tmp_path / "run" / "model.safetensors")
    log = pd.read_parquet(tmp_path / "run" / "train_log.parquet")
    assert log["step"].tolist() == [1, 2, 3] and "atkd_threshold" in log.columns
