"""``kdlm bench generate``: new tokens/s of kdlm's batched generation against a one-prompt-at-a-time loop.

kdlm's side is :func:`kdlm.generation.generate_responses` (length-sorted, left-padded batches of
``--batch-size``, KV cache); the other side is the straightforward loop that calls ``model.generate`` on
one prompt at a time (KV cache too). Both decode greedily, on the same model, the same ``--prompts`` lab
prompts and in the same process, after one warm-up call on each side. Only real response tokens count
(up to and excluding EOS) on both sides, so greedy decoding makes both count the same tokens.

Without ``--model`` a lab teacher of the default study's size (LLaMA, 4 layers x 256, random weights,
1024-token lab tokenizer) is built in a temporary directory.

Figures: each side's new tokens, seconds and tokens/s; ``speedup`` is batched tokens/s over the loop's,
and its check (``ok_speedup``) is ``speedup >= 3``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from kdlm.bench.common import console, mark, table, threads
from kdlm.data.templates import format_prompt
from kdlm.generation import GenerateConfig, generate_responses
from kdlm.lab.build import build_lab
from kdlm.lab.corpus import CorpusConfig, build_corpus
from kdlm.lab.models import LabModelConfig
from kdlm.models import load_model, load_tokenizer, set_threads

# the default study's teacher (config/config.yaml lab.models) over its 1024-token lab tokenizer
TEACHER = LabModelConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, seed=0)
VOCAB = 1024
MIN_CORPUS = 200  # lab train records drawn at least (the tokenizer's training text)


def _lab_teacher(root: Path, n_records: int) -> tuple[Path, list[dict]]:
    """A lab teacher of the default study's size (random weights) and lab records to prompt it with."""
    lab = build_lab(root, CorpusConfig(n_train=max(n_records, MIN_CORPUS), n_validation=1, n_test=1), {"teacher": TEACHER},
                    VOCAB)  # fmt: skip
    return lab["teacher"], json.loads(lab["train_json"].read_text(encoding="utf-8"))


def _loop_generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> int:
    """The straightforward way: one ``model.generate`` call per prompt; returns the new tokens made."""
    eos, made = tokenizer.eos_token_id, 0
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])  # (1, T)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=eos)  # fmt: skip
        new = out[0, ids.shape[1] :].tolist()  # (T + T_new,) -> (T_new,)
        made += new.index(eos) if eos in new else len(new)
    return made


def run(args: argparse.Namespace) -> int:
    """Run ``kdlm bench generate``: measure both sides, print the table (or JSON); returns 0."""
    if args.prompts < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        raise ValueError(f"--prompts, --batch-size and --max-new-tokens must be >= 1, got "
                         f"{args.prompts}, {args.batch_size}, {args.max_new_tokens}")  # fmt: skip
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="kdlm-bench-") as tmp:
        if args.model is None:
            model_path, records = _lab_teacher(Path(tmp), args.prompts)
        else:
            model_path, records = args.model, build_corpus(CorpusConfig(n_train=max(args.prompts, MIN_CORPUS)))["train"]
        model, tokenizer = load_model(model_path), load_tokenizer(model_path)
    model.eval()
    prompts = [format_prompt(r["instruction"], r["input"], args.template) for r in records[: args.prompts]]
    if len(prompts) < args.prompts:
        raise ValueError(f"only {len(prompts)} prompts available, asked for --prompts {args.prompts}")
    cfg = GenerateConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    generate_responses(model, tokenizer, prompts[:2], GenerateConfig(max_new_tokens=2, batch_size=2), desc="warm-up")
    _loop_generate(model, tokenizer, prompts[:1], 2)

    t0 = time.perf_counter()
    results = generate_responses(model, tokenizer, prompts, cfg, desc="bench batched")
    batched_s = time.perf_counter() - t0
    batched_tokens = sum(r["n_response_tokens"] for r in results)
    t0 = time.perf_counter()
    loop_tokens = _loop_generate(model, tokenizer, prompts, args.max_new_tokens)
    loop_s = time.perf_counter() - t0

    batched_tps, loop_tps = batched_tokens / batched_s, loop_tokens / loop_s
    figures = {
        "model": str(args.model) if args.model else "lab teacher (llama, 4 x 256, built for the benchmark)",
        "prompts": len(prompts),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "threads": threads(),
        "batched_tokens": batched_tokens,
        "batched_s": batched_s,
        "batched_tokens_per_s": batched_tps,
        "loop_tokens": loop_tokens,
        "loop_s": loop_s,
        "loop_tokens_per_s": loop_tps,
        "speedup": batched_tps / loop_tps,
        "ok_speedup": bool(batched_tps / loop_tps >= 3),
    }
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    result = table(f"kdlm bench generate: {figures['model']}, {len(prompts)} prompts, "
                   f"{args.max_new_tokens} new tokens, greedy, CPU, {threads()} threads",
                   ("side", "new tokens", "seconds", "tokens/s"), left=("side",))  # fmt: skip
    result.add_row(f"kdlm batched (batch {args.batch_size})", str(batched_tokens), f"{batched_s:.2f}", f"{batched_tps:.0f}")
    result.add_row("one prompt at a time", str(loop_tokens), f"{loop_s:.2f}", f"{loop_tps:.0f}")
    out = console(140)
    out.print(result)
    out.print(f"speedup {figures['speedup']:.1f}x (>= 3x: {mark(figures['ok_speedup'])})")
    return 0
