"""Shared fixtures: a tiny real lab (corpus, tokenizer, models) built once per test session."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kdlm.lab.build import build_lab
from kdlm.lab.corpus import CorpusConfig
from kdlm.lab.models import LabModelConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed():
    import torch

    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> dict[str, Path]:
    """Corpus splits (Alpaca JSON), a tokenizer and a tiny teacher/student pair of the LLaMA family."""
    return build_lab(
        tmp_path_factory.mktemp("lab"),
        CorpusConfig(n_train=200, n_validation=10, n_test=20),
        {
            "teacher": LabModelConfig(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96, seed=0),
            "student": LabModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seed=1),
        },
        vocab_size=400,
    )


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


def _kill_when_written(command: list[str], marker: Path) -> None:
    """Start `command` in its own process group and SIGKILL the group once `marker` exists (or it exits)."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not marker.exists() and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def kill_when_written():
    """A job killed mid-way, as a scheduler or a crash would: the resume tests rerun it afterwards."""
    return _kill_when_written
