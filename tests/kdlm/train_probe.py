"""Runs `kdlm.training.trainer.train` (alone or under torchrun) and records what the scale tests compare.

    python tests/kdlm/train_probe.py SPEC.json

SPEC holds train()'s arguments (`student`, `teacher`, `data`, `out`, `checkpoint_dir`, `method`,
`training`, `distributed`) and where to put the evidence: `gradients` (the first optimizer step's
gradients, full tensors, as the optimizer sees them), `weights` (the student's weights gathered at the
end of training, from the live, possibly sharded, model) and `kill_after_step` (the process exits
hard after that optimizer step, as a killed job would).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from kdlm.training import sharding
from kdlm.training.config import DistributedConfig, MethodConfig, TrainConfig
from kdlm.training.trainer import train


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class Probe(TrainerCallback):
    def __init__(self, spec: dict) -> None:
        self.spec = spec

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 and self.spec.get("gradients"):
            grads = {n: _full(p.grad).detach().clone() for n, p in model.named_parameters() if p.grad is not None}
            if _rank() == 0:
                torch.save(grads, self.spec["gradients"])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.spec.get("kill_after_step"):
            sys.stdout.flush()
            os._exit(17)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.spec.get("weights"):
            weights = sharding.full_state_dict(model) if sharding.is_sharded(model) else model.state_dict()
            if _rank() == 0:
                torch.save({k: v.detach().clone() for k, v in weights.items()}, self.spec["weights"])


def main(path: str) -> None:
    spec = json.loads(Path(path).read_text())
    train(
        student_path=spec["student"],
        teacher_path=spec.get("teacher"),
        data_path=Path(spec["data"]),
        out_dir=Path(spec["out"]),
        method=MethodConfig.from_dict(spec.get("method", {"loss": "forward"})),
        cfg=TrainConfig(**spec["training"]),
        checkpoint_dir=Path(spec["checkpoint_dir"]),
        distributed=DistributedConfig(**spec.get("distributed", {})),
        callbacks=[Probe(spec)],
    )


if __name__ == "__main__":
    main(sys.argv[1])
