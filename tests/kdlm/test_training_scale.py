"""Token-exact loss across accumulation and processes, and FSDP2 sharding measured on 2 gloo processes.

Every run goes through `kdlm.training.trainer.train` in a subprocess (`tests/kdlm/train_probe.py`,
under `torchrun` for two processes), which records the first step's gradients and the final weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from kdlm.data.mixing import MixConfig, mix
from kdlm.generation import GenerateConfig, generate_for_records
from kdlm.schemas import RECORDS, write_table

PROBE = Path(__file__).with_name("train_probe.py")


@pytest.fixture(scope="module")
def eight_rows(lab_records, tmp_path_factory) -> Path:
    """A `gt` training parquet of 8 rows whose answers differ in length (so per-micro-batch means differ)."""
    root = tmp_path_factory.mktemp("eight")
    records = pd.read_parquet(lab_records["train"])
    records = records.assign(n=records["output"].str.len()).sort_values("n").drop(columns="n")
    picked = pd.concat([records.head(4), records.tail(4)]).reset_index(drop=True)  # short and long answers
    write_table(picked, root / "records.parquet", RECORDS)
    mix(root / "records.parquet", root / "gt.parquet", MixConfig("gt"))
    return root / "gt.parquet"


def _run(lab, data: Path, root: Path, name: str, *, processes: int = 1, check: bool = True, **spec) -> dict:
    spec = {"student": str(lab["student"]), "teacher": str(lab["teacher"]), "data": str(data),
            "out": str(root / name), "checkpoint_dir": str(root / f"{name}.ckpt"),
            "gradients": str(root / f"{name}.grads.pt"), "weights": str(root / f"{name}.weights.pt"), **spec}  # fmt: skip
    path = root / f"{name}.json"
    path.write_text(json.dumps(spec))
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    done = subprocess.run([*launcher, str(PROBE), str(path)], capture_output=True, text=True, timeout=600)
    (root / f"{name}.stderr").write_text(done.stderr)
    if check:
        assert done.returncode == 0, f"{root / name}.stderr: " + done.stderr[-4000:]
    return {"rc": done.returncode, "stderr": done.stderr, **spec}


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    num = sum(float((a[k].double() - b[k].double()).norm() ** 2) for k in a) ** 0.5
    den = sum(float(a[k].double().norm() ** 2) for k in a) ** 0.5
    return num / den


def _training(**overrides) -> dict:
    return {"max_steps": 1, "lr": 1e-3, "max_length": 64, "max_grad_norm": 1e9, "logging_steps": 1,
            "threads": 1, "seed": 0, **overrides}  # fmt: skip


def test_one_step_gradient_does_not_depend_on_how_the_batch_is_split(lab, eight_rows, tmp_path):
    runs = {
        "8x1x1": _run(lab, eight_rows, tmp_path, "a", training=_training(batch_size=8, grad_accum=1)),
        "4x2x1": _run(lab, eight_rows, tmp_path, "b", training=_training(batch_size=4, grad_accum=2)),
        "2x2x2": _run(lab, eight_rows, tmp_path, "c", processes=2, training=_training(batch_size=2, grad_accum=2)),
    }
    grads = {key: torch.load(run["gradients"]) for key, run in runs.items()}
    for key in ("4x2x1", "2x2x2"):
        assert _relative(grads["8x1x1"], grads[key]) < 1e-5, key
    # the reference code's per-micro-batch mean weighs a short answer's tokens more: the split shows
    per_micro_batch = _run(lab, eight_rows, tmp_path, "d",
                           training=_training(batch_size=4, grad_accum=2, loss_normalization="micro_batch"))  # fmt: skip
    assert _relative(grads["8x1x1"], torch.load(per_micro_batch["gradients"])) > 1e-3


def test_fsdp_shards_the_student_and_trains_like_one_process(lab, eight_rows, tmp_path):
    # 2 processes x 1 row x 2 accumulation steps against one process x 4 rows
    training = _training(max_steps=3, batch_size=1, grad_accum=2, save_steps=1)
    single = _run(lab, eight_rows, tmp_path, "single", training={**training, "batch_size": 4, "grad_accum": 1})
    fsdp = _run(lab, eight_rows, tmp_path, "fsdp", processes=2, training=training, distributed={"strategy": "fsdp"})

    run = json.loads((Path(fsdp["out"]) / "run.json").read_text())
    alone = json.loads((Path(single["out"]) / "run.json").read_text())
    assert run["strategy"] == "fsdp" and run["world_size"] == 2
    # measured from the tensors each process holds, not from the configuration
    total = alone["held_bytes"][0]
    assert len(run["held_bytes"]) == 2
    for held in run["held_bytes"]:
        for kind in ("parameters", "optimizer"):
            assert 0.4 < held[kind] / total[kind] < 0.6, (kind, held, total)
    assert sum(h["parameters"] for h in run["held_bytes"]) == pytest.approx(total["parameters"], rel=0.02)

    # the same losses and weights as one process training on the whole batch
    losses = [pd.read_parquet(Path(r["out"]) / "train_log.parquet")["loss"].tolist() for r in (single, fsdp)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    gathered = torch.load(fsdp["weights"])
    assert _relative(torch.load(single["weights"]), gathered) < 1e-5

    # one HF directory, loadable, equal to the weights gathered from the live sharded model
    saved = AutoModelForCausalLM.from_pretrained(fsdp["out"]).state_dict()
    for key, value in load_file(Path(fsdp["out"]) / "model.safetensors").items():
        assert torch.equal(value, gathered[key]), key
    assert all(torch.equal(saved[key], gathered[key]) for key in gathered)


def test_fsdp_resumes_a_killed_run_to_the_same_weights(lab, eight_rows, tmp_path):
    training = _training(max_steps=4, batch_size=2, grad_accum=1, save_steps=2)
    whole = _run(lab, eight_rows, tmp_path, "whole", processes=2, training=training, distributed={"strategy": "fsdp"})
    killed = _run(lab, eight_rows, tmp_path, "cut", processes=2, check=False, training=training,
                  distributed={"strategy": "fsdp"}, kill_after_step=3)  # fmt: skip
    assert killed["rc"] != 0 and not Path(killed["out"]).exists()
    assert (Path(killed["checkpoint_dir"]) / "checkpoint-2").is_dir()
    # its optimizer state is sharded: a DDP / single-process rerun is refused, naming why, and changes nothing
    alone = _run(lab, eight_rows, tmp_path, "cut", check=False, training=training)
    assert alone["rc"] != 0 and "optimizer_state" in alone["stderr"]
    assert (Path(killed["checkpoint_dir"]) / "checkpoint-2").is_dir()
    resumed = _run(lab, eight_rows, tmp_path, "cut", processes=2, training=training, distributed={"strategy": "fsdp"})
    run = json.loads((Path(resumed["out"]) / "run.json").read_text())
    assert run["resumed_from"].endswith("checkpoint-2") and run["global_steps"] == 4
    assert _relative(torch.load(whole["weights"]), torch.load(resumed["weights"])) < 1e-5


def test_gradient_checkpointing_recomputes_the_same_gradient(lab, eight_rows, tmp_path):
    plain = _run(lab, eight_rows, tmp_path, "plain", training=_training(batch_size=4, grad_accum=2))
    ckpt = _run(lab, eight_rows, tmp_path, "ckpt", training=_training(batch_size=4, grad_accum=2,
                                                                      gradient_checkpointing=True))  # fmt: skip
    assert _relative(torch.load(plain["gradients"]), torch.load(ckpt["gradients"])) < 1e-6


@pytest.mark.parametrize("source", ["mix_token", "mix_request_teacher"])
def test_fsdp_on_policy_generation_with_a_sharded_teacher(lab, lab_records, tmp_path, source):
    """mix_token decodes with student and teacher token by token, mix_request_* with HF generate: the models
    are sharded, gathered for decoding, and every process decodes its own rows alone."""
    generated = tmp_path / "generated.parquet"
    generate_for_records(str(lab["teacher"]), lab_records["train"], generated,
                         GenerateConfig(max_new_tokens=4, batch_size=64), "t")  # fmt: skip
    data = tmp_path / f"{source}.parquet"
    mix(lab_records["train"], data, MixConfig(source, ratio=0.5), generated_path=generated)
    training = _training(max_steps=2, batch_size=2, grad_accum=2, onpolicy={"max_new_tokens": 4})
    fsdp = _run(lab, data, tmp_path, "onpolicy", processes=2, training=training,
                distributed={"strategy": "fsdp", "teacher": "shard"})  # fmt: skip
    run = json.loads((Path(fsdp["out"]) / "run.json").read_text())
    assert run["strategy"] == "fsdp" and run["teacher_sharded"] and run["global_steps"] == 2
    assert run["n_online"] > 0
    assert run["teacher_dtype"] == "float32"  # the training precision on a CPU


def test_tensorboard_logs_are_kept_with_the_student(lab, eight_rows, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(lab, eight_rows, tmp_path, "tb", training=_training(max_steps=2, batch_size=4, report_to="tensorboard"))
    events = list((Path(run["out"]) / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    losses = [e.value for e in accumulator.Scalars("train/loss")]
    logged = pd.read_parquet(Path(run["out"]) / "train_log.parquet")["loss"].tolist()
    assert losses == pytest.approx(logged, rel=1e-6)


def test_a_checkpoint_too_large_for_one_file_is_read_from_its_shards(lab, tmp_path):
    """save_pretrained splits big models (over 50 GB by default) into shards and an index; resume reads both."""
    from kdlm.models import load_model
    from kdlm.training.sharding import read_weights

    model = load_model(str(lab["teacher"]))
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    weights = read_weights(tmp_path / "sharded")
    expected = load_file(Path(lab["teacher"]) / "model.safetensors")
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
