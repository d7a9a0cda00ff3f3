"""FSDP2 for the student (and optionally the teacher): sharding, gathering for generation and saving,
sharded optimizer checkpoints, and what each process holds (docs/design.md, "Scale").

We shard with torch's own ``fully_shard`` rather than the HF Trainer's ``fsdp=`` option: the Trainer's
option silently trains plain DDP on CPUs (accelerate reports ``MULTI_CPU``), so nothing could prove the
sharding without a GPU, while ``fully_shard`` runs the same code on gloo and NCCL. One FSDP unit per
decoder layer (the classes a model lists in ``_no_split_modules``) plus the root for the embeddings
and the output layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

OPTIMIZER_DIR = "optimizer_dcp"  # the sharded optimizer state inside a checkpoint directory


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks, by the class names it declares unsplittable."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers found to shard (no _no_split_modules)")
    return layers


def shard(model: nn.Module, *, bf16: bool, cpu_offload: bool, trainable: bool = True) -> nn.Module:
    """Fully shard `model` over the default process group, in place: one unit per decoder layer and the
    root. Under `bf16`, layers compute in bfloat16 from float32 shards and reduce gradients in float32."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    kwargs = {
        "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16 and trainable
        else MixedPrecisionPolicy(),
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    }
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _fsdp_units(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model: nn.Module | None) -> Iterator[nn.Module | None]:
    """`model` with every unit's full parameters gathered and kept for the block, so that each process
    can decode on its own (any number of forwards, no collective per step); all processes must enter.
    An unsharded model (or None) is yielded as it is."""
    if model is None or not is_sharded(model):
        yield model
        return
    units = _fsdp_units(model)
    for unit in units:
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            # fully_shard's default: the root keeps its parameters after forward (backward needs them at once)
            unit.set_reshard_after_forward(unit is not model)


def init_offload_process_group() -> None:
    """The default process group with NCCL for GPU tensors and gloo for CPU ones (CPU-offloaded shards:
    gradient clipping all-reduces their norms on the CPU)."""
    if not dist.is_initialized():
        dist.init_process_group(backend="cuda:nccl,cpu:gloo")


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's full weights: one `model.safetensors`, or the shards its index lists (large models)."""
    import json

    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {key: value for name in files for key, value in load_file(directory / name).items()}
    return load_file(directory / "model.safetensors")


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU of process 0 (empty elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Scatter full weights (as read from a checkpoint on every process) into the sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    tied = _tied_keys(model)
    missing = [key for key in model.state_dict() if key not in state and key not in tied]
    if missing:
        raise ValueError(f"checkpoint weights lack {missing[:5]}")
    state = {**state, **{key: state[source] for key, source in tied.items() if source in state}}
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def _tied_keys(model: nn.Module) -> dict[str, str]:
    """Parameter names that share a tensor with an earlier name (output layer tied to the embeddings)."""
    seen: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied[name] = seen[id(param)]
        else:
            seen[id(param)] = name
    return tied


def save_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
    """Each process writes its own shards of the optimizer state (torch.distributed.checkpoint)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(checkpoint / OPTIMIZER_DIR))


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(checkpoint / OPTIMIZER_DIR))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, int]:
    """Bytes of the student's parameters and optimizer state this process holds (its shards under FSDP)."""
    params = sum(_local_bytes(p) for p in model.parameters())
    state = 0
    if optimizer is not None:
        for values in optimizer.state.values():
            state += sum(_local_bytes(v) for v in values.values() if torch.is_tensor(v) and v.dim() > 0)
    return {"parameters": params, "optimizer": state}


def held_bytes_by_rank(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> list[dict[str, int]]:
    """:func:`held_bytes` of every process (all must call it), in rank order."""
    mine = held_bytes(model, optimizer)
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone
