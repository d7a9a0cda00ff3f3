"""What a cached teacher signal was made with, and the words for a distillation run that differs.

Each component is a short digest: the teacher's weights (the bytes of its weight files and its config),
the tokenizer (vocabulary, special tokens, padding), the template, the training `max_length`, the training
data file's bytes and the output layer's rows. A run compares its own with the cache's and stops, naming
each component that differs, before it trains a step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

COMPONENTS = ("teacher", "tokenizer", "template", "max_length", "data", "output_rows")
_WORDS = {
    "teacher": "another teacher (its weights or config differ)",
    "tokenizer": "another tokenizer (vocabulary, special tokens or padding differ)",
    "template": "another prompt template",
    "max_length": "another max_length",
    "data": "other training data (the file's bytes differ)",
    "output_rows": "another vocabulary padding (the output layer's rows differ)",
}
_BLOCK = 1 << 22


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (streamed), first 16 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()[:16]


def model_directory(ref: str | Path) -> Path:
    """The local directory of a model given by path or hub id (from the local hub cache; nothing is
    downloaded)."""
    path = Path(ref)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(ref), local_files_only=True))


def teacher_digest(ref: str | Path) -> str:
    """Digest of a model's weight files (every *.safetensors and *.bin, by name and bytes) and config.json."""
    directory = model_directory(ref)
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise FileNotFoundError(f"{directory}: no weight files (*.safetensors) to fingerprint the teacher by")
    return _digest([f"{p.name}:{file_digest(p)}".encode() for p in files])


def tokenizer_digest(tokenizer) -> str:
    """Digest of what token ids mean and how batches are padded."""
    special = {name: getattr(tokenizer, name, None) for name in ("pad_token_id", "eos_token_id", "bos_token_id")}
    return _digest([
        json.dumps(sorted(tokenizer.get_vocab().items())).encode(),
        json.dumps({**special, "padding_side": tokenizer.padding_side, "size": len(tokenizer)}, sort_keys=True).encode(),
    ])  # fmt: skip


def fingerprint(*, teacher: str, tokenizer, template: str, max_length: int, data: Path, output_rows: int) -> dict:
    """The components a cache is keyed by (plain JSON values)."""
    return {
        "teacher": teacher_digest(teacher),
        "tokenizer": tokenizer_digest(tokenizer),
        "template": template,
        "max_length": int(max_length),
        "data": file_digest(Path(data)),
        "output_rows": int(output_rows),
    }


def differences(cache: dict, run: dict) -> list[str]:
    """One phrase per component where the cache and the run differ, e.g. "another max_length (cache: 128,
    this run: 256)"."""
    return [f"{_WORDS[key]} (cache: {cache.get(key)!r}, this run: {run.get(key)!r})"
            for key in COMPONENTS if cache.get(key) != run.get(key)]  # fmt: skip
