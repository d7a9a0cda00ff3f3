"""Batched generation: teacher data, on-policy samples and evaluation predictions all come from here.

Prompts are sorted by length so each batch pads little, padded on the left so every row's new tokens
start at the same column, and decoded with the KV cache.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm


@dataclass
class GenerateConfig:
    """Decoding settings; `decoding` in the output parquet records them as JSON."""

    max_new_tokens: int = 256
    batch_size: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    max_prompt_tokens: int | None = None  # longer prompts are cut from the left

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def describe(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def generate_responses(model, tokenizer, prompts: list[str], cfg: GenerateConfig, desc: str = "generate") -> list[dict]:
    """Responses for `prompts`, in their order, with token counts and finish reasons.

    Returns:
        One dict per prompt: response, n_prompt_tokens, n_response_tokens, finish_reason (eos|length).
    """
    import torch

    model.eval()
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if cfg.max_prompt_tokens:
        encoded = [ids[-cfg.max_prompt_tokens :] for ids in encoded]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    results: list[dict | None] = [None] * len(prompts)
    generator = torch.Generator().manual_seed(cfg.seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    progress = tqdm(total=len(prompts), desc=desc, unit="prompt", mininterval=2.0)
    start, new_tokens = time.perf_counter(), 0
    for begin in range(0, len(order), cfg.batch_size):
        rows = order[begin : begin + cfg.batch_size]
        width = max(len(encoded[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T) left-padded
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for r, i in enumerate(rows):
            n = len(encoded[i])
            input_ids[r, width - n :] = torch.tensor(encoded[i])
            attention_mask[r, width - n :] = 1
        sampling = {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.do_sample else {
            "do_sample": False
        }
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=cfg.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                use_cache=True,
                top_k=None,
                **sampling,
            )
        new = output[:, width:]  # (B, T_new)
        for r, i in enumerate(rows):
            tokens = new[r].tolist()
            finish = "length"
            if eos in tokens:
                tokens = tokens[: tokens.index(eos)]
                finish = "eos"
            new_tokens += len(tokens)
            results[i] = {
                "response": tokenizer.decode(tokens, skip_special_tokens=True),
                "n_prompt_tokens": len(encoded[i]),
                "n_response_tokens": len(tokens),
                "finish_reason": finish,
            }
        progress.update(len(rows))
        progress.set_postfix(tok_per_s=f"{new_tokens / (time.perf_counter() - start):.0f}")
    progress.close()
    return results  # type: ignore[return-value]


def generate_for_records(
    model_path: str, records_path: Path, out: Path, cfg: GenerateConfig, model_name: str, template: str = "paper"
) -> int:
    """The `kdlm generate` stage: a records parquet → a generated-responses parquet."""
    import pandas as pd

    from kdlm.data.templates import format_prompt
    from kdlm.models import load_model, load_tokenizer
    from kdlm.schemas import GENERATED, RECORDS, read_table, write_table

    records = read_table(records_path, RECORDS)
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path)
    prompts = [format_prompt(r.instruction, r.input, template) for r in records.itertuples()]
    results = generate_responses(model, tokenizer, prompts, cfg, desc=f"generate {model_name}")
    df = pd.DataFrame(results)
    df.insert(0, "id", records["id"].values)
    df.insert(1, "prompt", prompts)
    df["model"] = model_name
    df["decoding"] = cfg.describe()
    write_table(df, out, GENERATED)
    return len(df)
