"""Shared fixtures: a tiny real lab (corpus, tokenizer, models) built once per test session."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kdlm.lab.corpus import CorpusConfig, build_corpus, write_corpus
from kdlm.lab.models import LabModelConfig, build_model
from kdlm.lab.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
    import torch

    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> dict[str, Path]:
    """Corpus splits (Alpaca JSON), a tokenizer and a tiny teacher/student pair of the LLaMA family."""
    from kdlm.lab.corpus import training_texts

    root = tmp_path_factory.mktemp("lab")
    write_corpus(build_corpus(CorpusConfig(n_train=200, n_validation=10, n_test=20)), root / "corpus")
    train_tokenizer(training_texts([root / "corpus" / "train.json"]), 400, root / "tokenizer")
    build_model(
        LabModelConfig(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96, seed=0),
        root / "tokenizer",
        root / "teacher",
    )
    build_model(
        LabModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seed=1),
        root / "tokenizer",
        root / "student",
    )
    return {
        "root": root,
        "train_json": root / "corpus" / "train.json",
        "test_json": root / "corpus" / "test.json",
        "tokenizer": root / "tokenizer",
        "teacher": root / "teacher",
        "student": root / "student",
    }


@pytest.fixture(scope="session")
def lab_records(lab, tmp_path_factory) -> dict[str, Path]:
    """The lab splits as records parquet files (through the real prepare loader)."""
    from kdlm.data.records import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("records")
    result = {}
    for split, src in (("train", lab["train_json"]), ("test", lab["test_json"])):
        result[split] = out / f"{split}.parquet"
        prepare(PrepareConfig(input=src, out=result[split], dataset="lab"))
    return result
