"""A model reference (a local directory or a hub id), checked and read before any weight is loaded.

Torch-free: the workflow uses it at planning time and every verb before it loads a model, so a typo in
a path or a length that does not fit the model's context is one line, not a traceback after minutes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

# The config keys that hold a model's context length, by family (OPT/LLaMA/NeoX, GPT-2, others).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")

# Context lengths of the paper's hub models (config.json `max_position_embeddings`), so that planning
# config/paper.yaml checks lengths offline; a local directory's own config.json always wins.
KNOWN_CONTEXTS = {
    "facebook/opt-1.3b": 2048,
    "facebook/opt-2.7b": 2048,
    "facebook/opt-6.7b": 2048,
    "EleutherAI/pythia-410m": 2048,
    "EleutherAI/pythia-1.4b": 2048,
    "EleutherAI/pythia-6.9b": 2048,
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def is_hub_id(ref: str) -> bool:
    """`name` or `namespace/name`, as the hub spells repository ids (and not a path that exists)."""
    return bool(_HUB_ID.match(ref)) and ".." not in ref and not Path(ref).exists()


def check_model_ref(ref: str | Path) -> str:
    """`ref` as a string if it can name a model: an existing directory with a config.json, or a hub id.

    Raises:
        FileNotFoundError: a path that does not exist and cannot be a hub id.
        ValueError: a directory without config.json, or a file where a model directory is expected.
    """
    text = str(ref)
    path = Path(text)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{text}: not a model directory (it has no config.json)")
        return text
    if path.exists():
        raise ValueError(f"{text}: is a file; a model directory or hub id (namespace/name) is expected")
    if not is_hub_id(text):
        raise FileNotFoundError(f"{text}: no such model directory (nor a hub id of the form namespace/name)")
    return text


def context_from_config(config: Mapping | object) -> int | None:
    """The model's maximum sequence length from its config (a dict or a transformers config)."""
    for name in CONTEXT_KEYS:
        value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def read_context(ref: str | Path) -> int | None:
    """The context length of a local model directory (its config.json) or a known hub model; None when
    it cannot be known without the network (the verb then checks once the config is loaded)."""
    config_file = Path(ref) / "config.json"
    if config_file.is_file():
        try:
            return context_from_config(json.loads(config_file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            raise ValueError(f"{config_file}: not a readable model config ({err})") from None
    return KNOWN_CONTEXTS.get(str(ref))


def generation_room(context: int | None, max_new_tokens: int) -> str | None:
    """Why `max_new_tokens` cannot be generated within `context` (no room left for a prompt), or None."""
    if context is not None and context - max_new_tokens < 1:
        return (
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a context of {context} tokens "
            f"(allowed: max_new_tokens < {context})"
        )
    return None
