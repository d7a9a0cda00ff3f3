"""Randomly initialised models of a real checkpoint's shape, for benchmarks at paper scale without weights.

    python -m kdlm.bench.shapes OUT_DIR STUDENT_REF TEACHER_REF

writes ``OUT_DIR/student`` (float32, as training loads it) and ``OUT_DIR/teacher`` (bfloat16 on a GPU,
the training precision its trainer loads it in) from the configs kdlm ships (``kdlm/model_configs``),
each with a lab BPE tokenizer padded with unused tokens to the model's vocabulary, so that the loss
works over the real vocabulary width. Throughput and memory do not depend on the weights' values.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from kdlm.lab.corpus import CorpusConfig, build_corpus
from kdlm.lab.tokenizer import train_tokenizer
from kdlm.memory_plan import model_shape, shipped_config_dir


def padded_tokenizer(vocab: int, out: Path) -> None:
    """A lab BPE of 1024 tokens plus unused added tokens up to `vocab` entries, saved in `out`."""
    records = build_corpus(CorpusConfig(n_train=3000, n_validation=1, n_test=1))["train"]
    with tempfile.TemporaryDirectory() as tmp:
        train_tokenizer((f"{r['instruction']} {r['input']} {r['output']}" for r in records), 1024, Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    tokenizer.add_tokens([f"<unused_{i}>" for i in range(vocab - len(tokenizer))])
    tokenizer.save_pretrained(out)


def random_model(ref: str, out: Path, dtype: torch.dtype) -> None:
    """A model of `ref`'s shape (its shipped or local config) with random weights, saved in `out`."""
    source = shipped_config_dir(ref) or Path(ref)
    config = AutoConfig.from_pretrained(source)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    del model


def build(out: Path, student: str, teacher: str) -> dict[str, Path]:
    vocab = model_shape(student).vocab
    if model_shape(teacher).vocab != vocab:
        raise ValueError(f"{student} and {teacher} have different vocabularies")
    half = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    paths = {"student": out / "student", "teacher": out / "teacher"}
    for name, ref, dtype in (("student", student, torch.float32), ("teacher", teacher, half)):
        random_model(ref, paths[name], dtype)
        padded_tokenizer(vocab, paths[name])
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    for name, path in build(Path(sys.argv[1]), sys.argv[2], sys.argv[3]).items():
        print(f"{name}: {path}")
