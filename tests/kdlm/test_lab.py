"""The embedded lab: deterministic corpus and tokenizer, models that round-trip through from_pretrained."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdlm.lab.build import build_lab
from kdlm.lab.corpus import (
    FAMILIES,
    MEMORIZED,
    CorpusConfig,
    build_corpus,
    fact_table,
    training_texts,
    write_corpus,
)
from kdlm.lab.models import FAMILIES as MODEL_FAMILIES
from kdlm.lab.models import LabModelConfig, build_model
from kdlm.lab.tokenizer import train_tokenizer


def test_same_seed_same_corpus_and_other_seed_differs():
    cfg = CorpusConfig(seed=3, n_train=120, n_validation=10, n_test=20)
    assert build_corpus(cfg) == build_corpus(CorpusConfig(seed=3, n_train=120, n_validation=10, n_test=20))
    assert build_corpus(cfg)["train"] != build_corpus(CorpusConfig(seed=4, n_train=120, n_validation=10, n_test=20))["train"]


def test_computed_eval_prompts_never_appear_in_train():
    splits = build_corpus(CorpusConfig(n_train=1500, n_validation=100, n_test=200))
    assert {k: len(v) for k, v in splits.items()} == {"test": 200, "validation": 100, "train": 1500}
    train_keys = {(r["instruction"], r["input"]) for r in splits["train"]}
    for record in splits["test"] + splits["validation"]:
        key = (record["instruction"], record["input"])
        is_fact = record["instruction"].startswith(("What is the capital", "Name the capital", "Describe", "Give the key"))
        assert is_fact or key not in train_keys, key


def test_answers_are_correct():
    splits = build_corpus(CorpusConfig(n_train=700, n_validation=10, n_test=10))
    capitals = {c.name: c.capital for c in fact_table()}
    checked = 0
    for r in splits["train"]:
        if "+" in r["input"]:
            a, b = map(int, r["input"].split(" + "))
            assert r["output"] == str(a + b)
        elif " - " in r["input"]:
            a, b = map(int, r["input"].split(" - "))
            assert r["output"] == str(a - b)
        elif r["instruction"].startswith(("Sort", "Put these")):
            assert r["output"] == " ".join(map(str, sorted(map(int, r["input"].split()))))
        elif r["instruction"].startswith(("Reverse", "Write the letters")):
            assert r["output"] == " ".join(reversed(r["input"].split()))
        elif "capital" in r["instruction"] and not r["input"]:
            country = re.search(r"of (\w+)\?", r["instruction"])
            country = country or re.search(r"city of (\w+)\.", r["instruction"])
            assert r["output"] == capitals[country.group(1)]
        else:
            continue
        checked += 1
    assert checked > 300


def test_every_family_is_used_and_unknown_family_rejected():
    splits = build_corpus(CorpusConfig(n_train=len(FAMILIES) * 5, n_validation=len(FAMILIES), n_test=len(FAMILIES)))
    assert len({r["instruction"] for r in splits["train"]}) >= len(FAMILIES)
    assert set(FAMILIES) >= MEMORIZED
    with pytest.raises(ValueError, match="unknown corpus families.*'bogus'"):
        CorpusConfig(families=["addition", "bogus"])


def test_tokenizer_is_deterministic_with_distinct_pad_and_eos(lab, tmp_path):
    texts = list(training_texts([lab["train_json"]]))
    train_tokenizer(texts, 400, tmp_path / "again")
    first = json.loads((lab["tokenizer"] / "tokenizer.json").read_text())
    second = json.loads((tmp_path / "again" / "tokenizer.json").read_text())
    assert first == second
    tokenizer = AutoTokenizer.from_pretrained(lab["tokenizer"])
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.decode(tokenizer("Human:\nAdd 12 + 7")["input_ids"]) == "Human:\nAdd 12 + 7"


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_models_round_trip_through_from_pretrained(lab, tmp_path, family):
    cfg = LabModelConfig(family=family, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, seed=5)
    n_params = build_model(cfg, lab["tokenizer"], tmp_path / family)
    assert (tmp_path / family / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / family, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / family)
    assert model.config.model_type == family
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    ids = torch.tensor([tokenizer("Human:\nhello")["input_ids"]])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    again = AutoModelForCausalLM.from_pretrained(tmp_path / family, use_safetensors=True)
    torch.testing.assert_close(again(input_ids=ids).logits, logits)
    # same seed, same weights
    build_model(cfg, lab["tokenizer"], tmp_path / f"{family}-2")
    twin = AutoModelForCausalLM.from_pretrained(tmp_path / f"{family}-2", use_safetensors=True)
    torch.testing.assert_close(twin(input_ids=ids).logits, logits)


def test_bad_model_config_is_rejected():
    with pytest.raises(ValueError, match="unknown model family 'gpt2'"):
        LabModelConfig(family="gpt2")
    with pytest.raises(ValueError, match="divisible"):
        LabModelConfig(hidden_size=30, num_heads=4)


def test_build_lab_is_the_three_steps_in_one_directory(tmp_path):
    corpus = CorpusConfig(n_train=40, n_validation=3, n_test=3)
    models = {"big": LabModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seed=2),
              "small": LabModelConfig(family="opt", hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16, seed=3)}  # fmt: skip
    lab = build_lab(tmp_path / "lab", corpus, models, vocab_size=300)
    assert set(lab) == {"root", "corpus", "tokenizer", "train_json", "validation_json", "test_json", "big", "small"}
    assert all(path.parent == tmp_path / "lab" or path == tmp_path / "lab" for k, path in lab.items() if not k.endswith("_json"))
    # the same files as the steps run one by one (what `kdlm lab corpus|tokenizer|model` do)
    steps = tmp_path / "steps"
    write_corpus(build_corpus(corpus), steps / "corpus")
    train_tokenizer(training_texts([steps / "corpus" / "train.json"]), 300, steps / "tokenizer")
    for name, cfg in models.items():
        build_model(cfg, steps / "tokenizer", steps / name)
    for path in sorted(steps.rglob("*")):
        if path.is_file():
            assert (tmp_path / "lab" / path.relative_to(steps)).read_bytes() == path.read_bytes(), path
    with pytest.raises(ValueError, match="plain directory names"):
        build_lab(tmp_path / "bad", corpus, {"tokenizer": models["big"]}, vocab_size=300)
