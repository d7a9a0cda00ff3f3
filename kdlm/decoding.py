"""Decoding settings of every generation: teacher data, on-policy rows and evaluation answers.

Torch-free, so the workflow checks them at planning time (see docs/design.md, "Configuration").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

OVERLONG = ("truncate", "skip")
BACKENDS = ("hf", "vllm")


@dataclass
class GenerateConfig:
    """Decoding settings (config sections `teacher_generation` and `evaluation.generation`); `decoding`
    in the output parquet records them as JSON."""

    max_new_tokens: int = 256
    batch_size: int = 32  # prompts per generate() call
    sample: bool = False  # greedy unless True
    temperature: float = 1.0  # used when sampling
    top_p: float = 1.0  # used when sampling
    seed: int = 0
    max_prompt_tokens: int | None = None  # longer prompts are cut from the left (besides the model's context)
    overlong: str = "truncate"  # prompts over the context: truncate (from the left) | skip (kdlm generate only)
    shard_size: int = 256  # prompts per shard file of `kdlm generate` (the unit of resume)
    backend: str = "hf"  # hf | vllm
    shards: int = 1  # the workflow splits `kdlm generate` into this many jobs (--shard i/n) and one merge

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1 or None, got {self.max_prompt_tokens}")
        if self.overlong not in OVERLONG:
            raise ValueError(f"unknown overlong policy {self.overlong!r}; allowed: {list(OVERLONG)}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown generation backend {self.backend!r}; allowed: {list(BACKENDS)}")
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")

    def describe(self) -> str:
        """The settings that shape the responses, as JSON (how many jobs share the work does not)."""
        settings = asdict(self)
        del settings["shards"]
        return json.dumps(settings, sort_keys=True)
