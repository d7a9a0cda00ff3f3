"""Batched generation: teacher data, on-policy samples and evaluation predictions all come from here.

Prompts are sorted by length so each batch pads little, padded on the left so every row's new tokens
start at the same column, and decoded with the KV cache.

`generate_for_records` (the `kdlm generate` stage) is built for long jobs on clusters:

- **Plan.** The records' prompts are tokenized, cut to the model's context (or skipped, per
  `overlong`), sorted by (length, id) and cut into shards of `shard_size` prompts; each shard is cut
  into batches of `batch_size`. The plan depends only on the records and the settings, so every run
  with the same inputs makes the same batches.
- **Shards as it goes.** Each shard is written atomically to `<out>.shards/<plan>/shard-<k>.parquet`
  as soon as it is done (`<plan>` is a fingerprint of records, model, template and decoding, so files
  of another configuration are never reused).
- **Resume.** A rerun skips the shards whose files exist; a killed job loses at most the shard it was
  working on, and nothing is duplicated.
- **Split.** `shard=(i, n)` does only shards k with k % n == i, so n jobs share the work;
  `merge_only=True` (`kdlm generate --merge`) joins the shards into `<out>` in the records' order.
  Without `shard` one call does everything and merges.
- **Seeds.** Sampling is seeded per batch from the seed of the batch's first record
  (`record_seed(seed, id)`); since batches come from the plan, an interrupted, resumed or sharded run
  gives exactly the responses of an uninterrupted one (greedy or sampled).

Backends: `hf` (transformers `generate`, the default) and `vllm` (`VLLMBackend`, used only when
configured and installed; same plan, seeds per record, same output schema; it cannot be tested on
the CPU-only machines this project is developed on).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
from tqdm.auto import tqdm

from kdlm.data.templates import DEFAULT_TEMPLATE, format_prompt
from kdlm.decoding import GenerateConfig
from kdlm.io import atomic_path
from kdlm.model_refs import context_from_config, generation_room
from kdlm.models import load_config, load_inference_model, load_tokenizer
from kdlm.schemas import GENERATED, RECORDS, read_table, write_table

log = logging.getLogger(__name__)

def record_seed(seed: int, key: str) -> int:
    """A 31-bit seed for one record, from the run's seed and the record's id (order-independent)."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def prompt_limit(model_config, cfg: GenerateConfig) -> int | None:
    """Most prompt tokens a prompt may keep: the context minus `max_new_tokens`, and `max_prompt_tokens`.

    Raises:
        ValueError: if `max_new_tokens` leaves no room for a prompt in the model's context.
    """
    context = context_from_config(model_config)
    limits = [cfg.max_prompt_tokens] if cfg.max_prompt_tokens else []
    if context is not None:
        problem = generation_room(context, cfg.max_new_tokens)
        if problem:
            raise ValueError(problem)
        limits.append(context - cfg.max_new_tokens)
    return min(limits) if limits else None


# ----------------------------------------------------------------------------------------- backends

Progress = Callable[[int, int], None]  # (prompts done, new tokens) after each batch


class Backend(Protocol):
    """Generates responses for token-id prompts; one call per shard (or per evaluation set)."""

    def generate(self, prompt_ids: Sequence[list[int]], seeds: Sequence[int], progress: Progress) -> list[dict]:
        """One dict per prompt, in order: response, n_response_tokens, finish_reason (eos|length)."""
        ...


class HFBackend:
    """transformers `generate`: left-padded batches of `batch_size` in the given order, KV-cached."""

    def __init__(self, model, tokenizer, cfg: GenerateConfig) -> None:
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        model.eval()

    def generate(self, prompt_ids: Sequence[list[int]], seeds: Sequence[int], progress: Progress) -> list[dict]:
        results: list[dict] = []
        for begin in range(0, len(prompt_ids), self.cfg.batch_size):
            batch = prompt_ids[begin : begin + self.cfg.batch_size]
            results.extend(self._batch(batch, seeds[begin]))
            progress(len(batch), sum(r["n_response_tokens"] for r in results[begin:]))
        return results

    def _batch(self, batch: Sequence[list[int]], seed: int) -> list[dict]:
        cfg, tokenizer = self.cfg, self.tokenizer
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T) left-padded
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for r, ids in enumerate(batch):
            input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[r, width - len(ids) :] = 1
        if cfg.sample:
            sampling = {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p}
        else:
            sampling = {"do_sample": False}
        device = self.model.device
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=cfg.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                use_cache=True,
                top_k=None,
                synced_gpus=False,  # each process decodes its own prompts alone (a sharded model is gathered first)
                **sampling,
            )
        new = output[:, width:]  # (B, T) -> (B, T_new)
        return [_finish(new[r].tolist(), eos, tokenizer) for r in range(len(batch))]


def _finish(tokens: list[int], eos: int, tokenizer) -> dict:
    finish = "length"
    if eos in tokens:
        tokens = tokens[: tokens.index(eos)]
        finish = "eos"
    return {
        "response": tokenizer.decode(tokens, skip_special_tokens=True),
        "n_response_tokens": len(tokens),
        "finish_reason": finish,
    }


class VLLMBackend:
    """vLLM's offline engine (https://docs.vllm.ai): the whole shard in one call, one seed per record.

    Used only when `backend="vllm"` is configured and the `vllm` package is installed (it needs a
    GPU). Prompts go in as token ids and responses are decoded with our tokenizer, so the plan, the
    truncation and the output schema are those of the HF backend. Untested here: the project's test
    machines have no GPU and no vLLM.
    """

    def __init__(self, model_path: str, tokenizer, cfg: GenerateConfig) -> None:
        try:
            from vllm import LLM
        except ImportError as err:
            raise ValueError("generation backend 'vllm' needs the vllm package (pip install vllm); "
                             "allowed without it: ['hf']") from err  # fmt: skip
        self.tokenizer, self.cfg = tokenizer, cfg
        self.llm = LLM(model=str(model_path), tokenizer=str(model_path), seed=cfg.seed)

    def generate(self, prompt_ids: Sequence[list[int]], seeds: Sequence[int], progress: Progress) -> list[dict]:
        from vllm import SamplingParams

        cfg, eos = self.cfg, self.tokenizer.eos_token_id
        params = [
            SamplingParams(
                max_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature if cfg.sample else 0.0,
                top_p=cfg.top_p if cfg.sample else 1.0,
                seed=seed,
                stop_token_ids=[eos],
            )
            for seed in seeds
        ]
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for output in outputs:
            tokens = list(output.outputs[0].token_ids)
            result = _finish(tokens, eos, self.tokenizer)
            if output.outputs[0].finish_reason == "stop":
                result["finish_reason"] = "eos"
            results.append(result)
        progress(len(results), sum(r["n_response_tokens"] for r in results))
        return results


def _progress_bar(total: int, desc: str, initial: int = 0) -> tuple[tqdm, Progress]:
    """A tqdm bar over prompts with a tokens/s postfix, and the callback that advances it."""
    bar = tqdm(total=total, initial=initial, desc=desc, unit="prompt", mininterval=2.0)
    start, tokens = time.perf_counter(), [0]

    def advance(prompts: int, new_tokens: int) -> None:
        tokens[0] += new_tokens
        bar.update(prompts)
        bar.set_postfix(tok_per_s=f"{tokens[0] / max(time.perf_counter() - start, 1e-9):.0f}")

    return bar, advance


def _cut(encoded: list[list[int]], limit: int | None) -> list[int]:
    """Indices of prompts longer than `limit` tokens."""
    return [i for i, ids in enumerate(encoded) if limit is not None and len(ids) > limit]


def generate_responses(model, tokenizer, prompts: list[str], cfg: GenerateConfig, desc: str = "generate") -> list[dict]:
    """Responses for `prompts`, in their order, with token counts and finish reasons (HF backend).

    Every prompt gets a response: prompts longer than `prompt_limit` are cut from the left whatever
    `cfg.overlong` says (skipping applies to `generate_for_records`).

    Returns:
        One dict per prompt: response, n_prompt_tokens, n_response_tokens, finish_reason (eos|length),
        prompt_truncated (cut from the left to fit).
    """
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    limit = prompt_limit(model.config, cfg)
    overlong = _cut(encoded, limit)
    if overlong:
        log.warning("%s: %d prompt(s) longer than %d tokens cut from the left", desc, len(overlong), limit)
        for i in overlong:
            encoded[i] = encoded[i][-limit:]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    seeds = [record_seed(cfg.seed, str(i)) for i in order]
    bar, advance = _progress_bar(len(prompts), desc)
    out = HFBackend(model, tokenizer, cfg).generate([encoded[i] for i in order], seeds, advance)
    bar.close()
    results: list[dict] = [{}] * len(prompts)
    for i, result in zip(order, out, strict=True):
        results[i] = {**result, "n_prompt_tokens": len(encoded[i])}
    cut = set(overlong)
    keys = ("response", "n_prompt_tokens", "n_response_tokens", "finish_reason")
    return [{**{k: r[k] for k in keys}, "prompt_truncated": i in cut} for i, r in enumerate(results)]


# --------------------------------------------------------------------------------- the sharded stage


@dataclass
class Plan:
    """The deterministic work list of one `kdlm generate` configuration."""

    ids: list[str]  # every record id, in the records' order
    prompts: list[str]
    prompt_ids: list[list[int]]  # after truncation
    shards: list[list[int]]  # record indices per shard, sorted by (length, id); skipped records absent
    limit: int | None
    truncated: list[str] = field(default_factory=list)  # ids cut from the left
    skipped: list[str] = field(default_factory=list)  # ids left out (overlong="skip")
    fingerprint: str = ""

    def overlong(self, policy: str) -> dict:
        return {"policy": policy, "limit": self.limit, "truncated": len(self.truncated),
                "skipped": len(self.skipped), "skipped_ids": self.skipped}  # fmt: skip


def make_plan(ids: list[str], prompts: list[str], tokenizer, limit: int | None, cfg: GenerateConfig, identity: dict) -> Plan:
    """Tokenize, apply the overlong policy, sort by length and cut into shards.

    `identity` (model, template, ...) enters the fingerprint with the prompts and the settings.
    """
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    overlong = _cut(encoded, limit)
    truncated, skipped = [], []
    if cfg.overlong == "truncate":
        for i in overlong:
            encoded[i] = encoded[i][-limit:]
        truncated = [ids[i] for i in overlong]
    else:
        skipped = [ids[i] for i in overlong]
    dropped = set(overlong) if cfg.overlong == "skip" else set()
    order = sorted((i for i in range(len(ids)) if i not in dropped), key=lambda i: (len(encoded[i]), ids[i]))
    shards = [order[k : k + cfg.shard_size] for k in range(0, len(order), cfg.shard_size)]
    digest = hashlib.sha256(json.dumps({"identity": identity, "decoding": cfg.describe(), "limit": limit},
                                       sort_keys=True).encode())  # fmt: skip
    for i in range(len(ids)):
        digest.update(f"\x00{ids[i]}\x01{prompts[i]}".encode())
    return Plan(ids, prompts, encoded, shards, limit, truncated, skipped, digest.hexdigest()[:16])


def shards_root(out: Path) -> Path:
    """Where `kdlm generate` keeps the shards of `out` until they are merged."""
    return out.with_name(out.name + ".shards")


def shard_file(out: Path, plan: Plan, k: int) -> Path:
    return shards_root(out) / plan.fingerprint / f"shard-{k:05d}.parquet"


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/n"` -> (i, n), with 0 <= i < n.

    Raises:
        ValueError: naming the value and the allowed form.
    """
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r} is not of the form i/n (e.g. 0/4)") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need n >= 1 and 0 <= i < n")
    return i, n


def _plan_for(model_path: str, records_path: Path, cfg: GenerateConfig, model_name: str, template: str):
    limit = prompt_limit(load_config(model_path), cfg)  # before any weight or record is read
    records = read_table(records_path, RECORDS)
    prompts = [format_prompt(r.instruction, r.input, template) for r in records.itertuples()]
    tokenizer = load_tokenizer(model_path)
    identity = {"model": model_name, "model_path": str(model_path), "template": template}
    return make_plan(records["id"].tolist(), prompts, tokenizer, limit, cfg, identity), tokenizer


def generate_for_records(
    model_path: str,
    records_path: Path,
    out: Path,
    cfg: GenerateConfig,
    model_name: str,
    template: str = DEFAULT_TEMPLATE,
    shard: tuple[int, int] | None = None,
    merge_only: bool = False,
) -> int:
    """The `kdlm generate` stage: a records parquet → a generated-responses parquet, in resumable shards.

    Args:
        shard: (i, n): generate only this job's shards (k % n == i) and do not merge.
        merge_only: generate nothing; join the finished shards into `out`.

    Returns:
        Rows written to `out` (or, with `shard`, rows in this job's shards).

    Raises:
        ValueError: for `shard` with `merge_only`, a missing shard at merge time, or bad settings.
    """

    if shard is not None and merge_only:
        raise ValueError("--shard and --merge exclude each other: merge once after every shard job is done")
    out = Path(out)
    plan, tokenizer = _plan_for(model_path, records_path, cfg, model_name, template)
    if plan.truncated or plan.skipped:
        log.warning("%s: %d prompt(s) over %s tokens: %d cut from the left, %d skipped", records_path,
                    len(plan.truncated) + len(plan.skipped), plan.limit, len(plan.truncated), len(plan.skipped))  # fmt: skip
    if merge_only:
        return merge_shards(plan, out, cfg, model_name, records_path, template)
    i, n = shard or (0, 1)
    mine = [k for k in range(len(plan.shards)) if k % n == i]
    todo = [k for k in mine if not shard_file(out, plan, k).exists()]
    if len(todo) < len(mine):
        log.info("resuming: %d of %d shard(s) already done in %s", len(mine) - len(todo), len(mine),
                 shards_root(out) / plan.fingerprint)  # fmt: skip
    _write_plan(out, plan, cfg, model_name, template)
    if todo:
        backend = _backend(model_path, tokenizer, cfg)
        done = sum(len(plan.shards[k]) for k in mine if k not in todo)
        bar, advance = _progress_bar(sum(len(plan.shards[k]) for k in mine), f"generate {model_name}", done)
        for k in todo:
            rows = plan.shards[k]
            seeds = [record_seed(cfg.seed, plan.ids[r]) for r in rows]
            results = backend.generate([plan.prompt_ids[r] for r in rows], seeds, advance)
            df = _frame(plan, rows, results, model_name, cfg)
            write_table(df, shard_file(out, plan, k), GENERATED, metadata={"fingerprint": plan.fingerprint, "shard": k})
        bar.close()
    if shard is not None:
        return sum(len(plan.shards[k]) for k in mine)
    return merge_shards(plan, out, cfg, model_name, records_path, template)


def _backend(model_path: str, tokenizer, cfg: GenerateConfig) -> Backend:
    if cfg.backend == "vllm":
        return VLLMBackend(model_path, tokenizer, cfg)

    return HFBackend(load_inference_model(model_path), tokenizer, cfg)


def _frame(plan: Plan, rows: list[int], results: list[dict], model_name: str, cfg: GenerateConfig):
    df = pd.DataFrame(results)
    df.insert(0, "id", [plan.ids[r] for r in rows])
    df.insert(1, "prompt", [plan.prompts[r] for r in rows])
    df["model"] = model_name
    df["n_prompt_tokens"] = [len(plan.prompt_ids[r]) for r in rows]
    df["decoding"] = cfg.describe()
    return df


def _write_plan(out: Path, plan: Plan, cfg: GenerateConfig, model_name: str, template: str) -> None:
    """A readable description of the plan beside its shards (for people; resume does not read it)."""

    path = shards_root(out) / plan.fingerprint / "plan.json"
    if path.exists():
        return
    description = {"fingerprint": plan.fingerprint, "model": model_name, "template": template,
                   "decoding": json.loads(cfg.describe()), "n_records": len(plan.ids),
                   "n_shards": len(plan.shards), "overlong": plan.overlong(cfg.overlong)}  # fmt: skip
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(description, indent=1) + "\n", encoding="utf-8")


def merge_shards(plan: Plan, out: Path, cfg: GenerateConfig, model_name: str, records_path: Path, template: str) -> int:
    """Join every shard of `plan` into `out` (records' order), then delete the shard directory.

    Raises:
        ValueError: if a shard is missing or the shards do not hold exactly the planned records.
    """

    files = [shard_file(out, plan, k) for k in range(len(plan.shards))]
    missing = [k for k, f in enumerate(files) if not f.exists()]
    if missing:
        raise ValueError(
            f"{out}: cannot merge, {len(missing)} of {len(files)} shard(s) missing in "
            f"{shards_root(out) / plan.fingerprint} (first: shard {missing[0]}); run `kdlm generate` with "
            "the same options (with --shard i/n for every i) first"
        )
    frames = [read_table(f, GENERATED) for f in files]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=GENERATED.names)
    expected = [plan.ids[r] for r in sorted(r for s in plan.shards for r in s)]
    if sorted(df["id"]) != sorted(expected):
        raise ValueError(f"{shards_root(out) / plan.fingerprint}: shards do not hold exactly the planned records")
    df = df.set_index("id").loc[expected].reset_index()
    metadata = {"model": model_name, "template": template, "records": str(records_path), "decoding": cfg.describe(),
                "n_records": len(plan.ids), "n_generated": len(df), "n_shards": len(plan.shards),
                "fingerprint": plan.fingerprint, "overlong": plan.overlong(cfg.overlong)}  # fmt: skip
    write_table(df, out, GENERATED, metadata=metadata)
    # every plan's directory goes (stale ones of other settings too); files beside them, such as
    # Snakemake's job markers, are left to their owner
    root = shards_root(out)
    if root.exists():
        for child in root.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
        if not any(root.iterdir()):
            root.rmdir()
    return len(df)
