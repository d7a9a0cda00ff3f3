"""Tiny models of the paper's three families (OPT, GPT-NeoX/Pythia, LLaMA) built from transformers configs.

They are ordinary HF directories (config.json, model.safetensors, tokenizer files), so every later
stage loads them exactly as it would load a hub checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig, LlamaConfig, OPTConfig

from kdlm.io import atomic_dir
from kdlm.lab.spec import FAMILIES, LabModelConfig

__all__ = ["FAMILIES", "LabModelConfig", "build_config", "build_model"]

def build_config(cfg: LabModelConfig, tokenizer):
    """The transformers config of `cfg`'s family, with the tokenizer's special token ids."""

    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "max_position_embeddings": cfg.max_position_embeddings,
    }
    if cfg.family == "llama":
        return LlamaConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads,
            tie_word_embeddings=True,
            **ids,
        )
    if cfg.family == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            **ids,
        )
    return OPTConfig(
        hidden_size=cfg.hidden_size,
        ffn_dim=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        word_embed_proj_dim=cfg.hidden_size,
        do_layer_norm_before=True,
        **ids,
    )


def build_model(cfg: LabModelConfig, tokenizer_dir: Path, out_dir: Path) -> int:
    """Randomly initialise a model (seeded) and save it with its tokenizer; returns the parameter count."""

    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{tokenizer_dir}: no tokenizer here (no tokenizer.json); build it with `kdlm lab tokenizer`")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(build_config(cfg, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return sum(p.numel() for p in model.parameters())
