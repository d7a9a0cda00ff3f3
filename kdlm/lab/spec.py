"""Settings of the lab's models and tokenizer (config sections `lab.models.<name>` and `lab.tokenizer`).

Torch-free, so the workflow checks them at planning time; :mod:`kdlm.lab.models` and
:mod:`kdlm.lab.tokenizer` build from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdlm.sections import check_range

FAMILIES = ("llama", "gpt_neox", "opt")


@dataclass
class LabModelConfig:
    """Architecture of one lab model; sizes are the knobs that make a teacher larger than a student."""

    family: str = "llama"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; allowed: {list(FAMILIES)}")
        check_range("hidden_size", self.hidden_size, minimum=8)
        check_range("num_layers", self.num_layers, minimum=1)
        check_range("num_heads", self.num_heads, minimum=1)
        check_range("intermediate_size", self.intermediate_size, minimum=8)
        check_range("max_position_embeddings", self.max_position_embeddings, minimum=16)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )


@dataclass
class TokenizerSettings:
    """The `lab.tokenizer` section: the lab's byte-level BPE."""

    vocab_size: int = 1024

    def __post_init__(self) -> None:
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size must be >= 300 (bytes and special tokens), got {self.vocab_size}")
