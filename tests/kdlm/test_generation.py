"""Batched generation: order kept, greedy equals one-at-a-time, sampling deterministic given the seed."""

from __future__ import annotations

import pytest

from kdlm.generation import GenerateConfig, generate_responses
from kdlm.models import load_model, load_tokenizer

PROMPTS = ["Human:\nAdd the two numbers. 1 + 2\n\nAssistant:\n", "Human:\nHi\n\nAssistant:\n", "Human:\nReverse the letters. c a t s\n\nAssistant:\n"]


@pytest.fixture(scope="module")
def teacher(lab):
    return load_model(lab["teacher"]), load_tokenizer(lab["teacher"])


def test_batched_greedy_equals_one_prompt_at_a_time(teacher):
    model, tokenizer = teacher
    batched = generate_responses(model, tokenizer, PROMPTS, GenerateConfig(max_new_tokens=6, batch_size=3))
    single = [generate_responses(model, tokenizer, [p], GenerateConfig(max_new_tokens=6))[0] for p in PROMPTS]
    assert [r["response"] for r in batched] == [r["response"] for r in single]
    for result, prompt in zip(batched, PROMPTS, strict=True):
        assert result["n_prompt_tokens"] == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert result["finish_reason"] in {"eos", "length"}
        assert result["n_response_tokens"] <= 6
        if result["finish_reason"] == "length":
            assert result["n_response_tokens"] == 6


def test_sampling_is_deterministic_given_the_seed(teacher):
    model, tokenizer = teacher
    cfg = GenerateConfig(max_new_tokens=8, sample=True, temperature=1.5, seed=7)
    first = generate_responses(model, tokenizer, PROMPTS, cfg)
    assert generate_responses(model, tokenizer, PROMPTS, cfg) == first
    other = generate_responses(model, tokenizer, PROMPTS, GenerateConfig(max_new_tokens=8, sample=True, temperature=1.5, seed=8))
    assert other != first


def test_bad_decoding_settings_are_rejected():
    with pytest.raises(ValueError, match="top_p must be in"):
        GenerateConfig(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        GenerateConfig(max_new_tokens=0)
