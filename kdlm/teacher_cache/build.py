"""The teacher-signal stage: the teacher run once over an offline training file, its signal stored in parts.

- **What is stored.** Only the offline rows (the rows generated during training need the live teacher) and
  only at their counted tokens (the response), in the order the training dataset encodes them with the same
  tokenizer, template and `max_length`. Exact mode keeps the input of the teacher's output layer in its
  compute dtype plus the layer itself; compact mode the top-k log-probabilities (`kdlm.losses.compact`).
- **Parts as it goes.** Examples are cut into parts of `part_size` in row order; each part is written
  atomically to `<out>.parts/<digest>/part-<k>.safetensors`, `<digest>` naming the fingerprint and mode.
- **Resume.** A rerun skips the parts whose files exist: a killed job loses at most the part it was writing.
- **Split.** `shard=(i, n)` does only parts k with k % n == i, so n jobs (GPUs) share the work;
  `merge_only=True` moves the finished parts into `<out>` (atomically, `signal.json` last).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from kdlm.io import atomic_dir, atomic_path, check_output_dir
from kdlm.losses.compact import TopK
from kdlm.model_refs import context_from_config
from kdlm.models import load_model, load_tokenizer
from kdlm.teacher_cache.config import TeacherSignalConfig
from kdlm.teacher_cache.fingerprint import fingerprint
from kdlm.teacher_cache.store import OUTPUT_LAYER_FILE, SIGNAL_FILE, part_name
from kdlm.training.data import ExampleDataset, collate_indexed, load_rows
from kdlm.training.output_rows import CountedRows, counted_outputs, is_plain_linear_head, output_layer

log = logging.getLogger(__name__)


def parts_root(out: Path) -> Path:
    """Where the stage keeps the parts of `out` until they are merged."""
    return out.with_name(out.name + ".parts")


def _digest(fp: dict, cfg: TeacherSignalConfig, dtype: str) -> str:
    key = {**fp, "mode": cfg.mode, "top_k": cfg.top_k if cfg.mode == "compact" else None, "dtype": dtype,
           "part_size": cfg.part_size}  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def effective_max_length(max_length: int, *configs) -> int:
    """`max_length` capped to the shortest known context among the models' configs (as training caps it)."""
    contexts = [n for n in (context_from_config(c) for c in configs) if n is not None]
    return min([max_length, *contexts])


def _signal_of_part(teacher, dataset: ExampleDataset, examples: list[int], cfg: TeacherSignalConfig,
                    vocab: int, pad_token_id: int, bar) -> dict[str, torch.Tensor]:  # fmt: skip
    """The teacher's signal at the counted tokens of `examples` (dataset positions), in their order."""
    device = next(teacher.parameters()).device
    counts, pieces = [], []
    for start in range(0, len(examples), cfg.batch_size):
        batch = collate_indexed([dataset[i] for i in examples[start : start + cfg.batch_size]], pad_token_id)
        counted = CountedRows.of(batch["labels"])
        keep: list[torch.Tensor] = []
        exact = cfg.mode == "exact"
        with torch.no_grad(), counted_outputs(teacher, counted.positions.to(device), keep=keep, logits=not exact):
            out = teacher(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                          use_cache=False)  # fmt: skip
        if exact:
            pieces.append(keep[0][0].cpu())  # (N, d)
        else:
            pieces.append(TopK.from_logits(out.logits[0, :, :vocab], counted.targets.to(device), cfg.top_k).to("cpu"))
        counts.extend(counted.per_row.tolist())
        bar.update(len(batch["index"]))
    tensors = {"count": torch.tensor(counts, dtype=torch.int64)}
    if cfg.mode == "exact":
        tensors["hidden"] = torch.cat(pieces).contiguous()
    else:
        tensors.update(ids=torch.cat([p.ids for p in pieces]).to(torch.int32),
                       logprobs=torch.cat([p.logprobs for p in pieces]).contiguous(),
                       target_logprob=torch.cat([p.target_logprob for p in pieces]),
                       rest_logprob=torch.cat([p.rest_logprob for p in pieces]))  # fmt: skip
    return tensors


def build_teacher_signal(
    *,
    teacher: str,
    data: Path,
    out: Path,
    template: str,
    max_length: int,
    cfg: TeacherSignalConfig,
    dtype: str = "float32",
    shard: tuple[int, int] | None = None,
    merge_only: bool = False,
) -> dict:
    """Run `teacher` over the offline rows of the training file `data` and write its signal to `out`.

    Args:
        max_length: the distillation's training max_length (capped here to the teacher's context, as the
            trainer caps it; a student with a shorter context makes the run refuse this cache).
        dtype: the teacher's weights dtype (the training precision the distillation loads it in).
        shard, merge_only: see the module docstring.

    Returns:
        The cache's signal.json content (with `shard`: what this job wrote).

    Raises:
        ValueError: exact mode for a teacher whose logits are not its output layer's plain matmul, a data
            file without offline rows, `shard` with `merge_only`, or parts missing at merge time.
    """
    out = check_output_dir(Path(out))
    if shard is not None and merge_only:
        raise ValueError("shard and merge are exclusive: merge once every shard has finished")
    start_time = time.perf_counter()
    rows = load_rows(Path(data), template)
    offline = [i for i, online in enumerate(rows.online) if not online]
    if not offline:
        raise ValueError(f"{data}: every row is generated during training (source {rows.source!r}); nothing to cache")
    tokenizer = load_tokenizer(teacher)
    model = load_model(teacher, dtype=dtype)
    model.eval().requires_grad_(False)
    if cfg.mode == "exact" and not is_plain_linear_head(model):
        raise ValueError(f"{teacher}: its logits are not a plain linear layer of its final hidden states; "
                         "exact mode cannot recompute them, use mode: compact")  # fmt: skip
    max_length = effective_max_length(max_length, model.config)
    vocab = len(tokenizer)
    weight = output_layer(model).weight
    fp = fingerprint(teacher=teacher, tokenizer=tokenizer, template=template, max_length=max_length, data=Path(data),
                     output_rows=int(weight.shape[0]))  # fmt: skip
    root = parts_root(out) / _digest(fp, cfg, dtype)
    dataset = ExampleDataset([rows.prompts[i] for i in offline], [rows.responses[i] for i in offline], tokenizer,
                             max_length)  # fmt: skip
    parts = [list(range(k, min(k + cfg.part_size, len(offline)))) for k in range(0, len(offline), cfg.part_size)]
    mine = [k for k in range(len(parts)) if shard is None or k % shard[1] == shard[0]]
    todo = [] if merge_only else [k for k in mine if not (root / part_name(k)).is_file()]
    if len(todo) < len(mine) and not merge_only:
        log.info("resuming: %d of %d parts already in %s", len(mine) - len(todo), len(mine), root)
    with tqdm(total=sum(len(parts[k]) for k in todo), desc=f"teacher signal {out.name}", unit="ex") as bar:
        for k in todo:
            tensors = _signal_of_part(model, dataset, parts[k], cfg, vocab, tokenizer.pad_token_id, bar)
            tensors["index"] = torch.tensor([offline[i] for i in parts[k]], dtype=torch.int64)
            with atomic_path(root / part_name(k)) as tmp:
                save_file(tensors, str(tmp))
    if shard is not None:
        return {"parts": [part_name(k) for k in mine], "written": len(todo)}
    missing = [part_name(k) for k in range(len(parts)) if not (root / part_name(k)).is_file()]
    if missing:
        raise ValueError(f"{out}: parts {missing} of {root} are not finished; run their shards first")
    n_tokens = dataset.n_label_tokens
    meta = {
        "fingerprint": fp,
        "mode": cfg.mode,
        "top_k": cfg.top_k if cfg.mode == "compact" else None,
        "dtype": dtype,
        "teacher": str(teacher),
        "data": str(data),
        "source": rows.source,
        "n_examples": len(offline),
        "n_tokens": n_tokens,
        "hidden_size": int(weight.shape[1]),
        "vocab": vocab,
        "parts": [part_name(k) for k in range(len(parts))],
        "build_seconds": time.perf_counter() - start_time,
    }
    with atomic_dir(out) as tmp:
        for k in range(len(parts)):
            os.replace(root / part_name(k), tmp / part_name(k))
        if cfg.mode == "exact":
            layer = {"weight": weight.detach().contiguous()}
            if getattr(output_layer(model), "bias", None) is not None:
                layer["bias"] = output_layer(model).bias.detach().contiguous()
            save_file(layer, str(tmp / OUTPUT_LAYER_FILE))
        meta["bytes"] = sum(f.stat().st_size for f in tmp.iterdir())
        # the per-token signal alone (the parts), not the output layer stored once
        meta["bytes_per_token"] = sum((tmp / part_name(k)).stat().st_size for k in range(len(parts))) / max(n_tokens, 1)
        (tmp / SIGNAL_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(parts_root(out), ignore_errors=True)
    return meta
