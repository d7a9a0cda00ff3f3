"""Prompt templates: exact strings, fschat's own rendering, and one prompt across train/generate/evaluate."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from kdlm.data.templates import check_template, format_prompt


def test_paper_template_is_the_papers():
    assert format_prompt("Add.", "1 + 2") == "Human:\nAdd. 1 + 2\n\nAssistant:\n"
    assert format_prompt("Hi", "") == "Human:\nHi\n\nAssistant:\n"


def test_alpaca_has_its_two_prompts():
    assert format_prompt("Add.", "", "alpaca").endswith("### Instruction:\nAdd.\n\n### Response:\n")
    with_input = format_prompt("Add.", "1 + 2", "alpaca")
    assert "paired with an input" in with_input
    assert with_input.endswith("### Instruction:\nAdd.\n\n### Input:\n1 + 2\n\n### Response:\n")


@pytest.mark.parametrize("name", ["vicuna_v1.1", "llama-2", "fschat:alpaca"])
def test_fschat_templates_render_through_fschat(name):
    from fastchat.conversation import get_conv_template

    conv = get_conv_template(name.removeprefix("fschat:"))
    conv.append_message(conv.roles[0], "Add. 1 + 2")
    conv.append_message(conv.roles[1], None)
    assert format_prompt("Add.", "1 + 2", name) == conv.get_prompt()
    assert format_prompt("Hi", "", name) != format_prompt("Hi", "", "paper")


def test_vicuna_prompt_is_vicunas():
    prompt = format_prompt("Hi", "", "vicuna_v1.1")
    assert prompt.startswith("A chat between a curious user and an artificial intelligence assistant.")
    assert prompt.endswith("USER: Hi ASSISTANT:")


def test_unknown_template_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown prompt template 'vicuna'; allowed: \['paper', 'alpaca'\] or an fschat"):
        format_prompt("x", "", "vicuna")
    with pytest.raises(ValueError, match="'vicuna_v1.1'"):
        check_template("nope")


@pytest.mark.parametrize("template", ["paper", "alpaca", "vicuna_v1.1"])
def test_training_generation_and_evaluation_see_the_same_prompt(tmp_path, lab, template):
    """The reference code's bug (train and eval prompts differ) cannot happen: all stages agree."""
    from kdlm.data.mixing import mix
    from kdlm.data.records import PrepareConfig, prepare
    from kdlm.data.tokenize import encode_example
    from kdlm.evaluation.evaluate import evaluate_model
    from kdlm.generation import GenerateConfig, generate_for_records
    from kdlm.models import load_tokenizer
    from kdlm.schemas import EVAL, GENERATED, MIXED, read_table
    from kdlm.training.data import load_pairs

    records = json.loads(lab["train_json"].read_text())[:4]
    records[0]["input"] = records[0]["input"] or "with an input"
    src = tmp_path / "src.json"
    src.write_text(json.dumps(records))
    rec = tmp_path / "records.parquet"
    prepare(PrepareConfig(input=src, out=rec, dataset="lab"))
    expected = [format_prompt(r["instruction"], r["input"], template) for r in records]

    model = str(lab["student"])
    cfg = GenerateConfig(max_new_tokens=1, batch_size=4)
    generate_for_records(model, rec, tmp_path / "gen.parquet", cfg, "s", template)
    generated = read_table(tmp_path / "gen.parquet", GENERATED)
    evaluate_model(model, rec, tmp_path / "eval.parquet", cfg, template)
    evaluated = read_table(tmp_path / "eval.parquet", EVAL)
    mix(rec, tmp_path / "mixed.parquet", "teacher", template=template, generated_path=tmp_path / "gen.parquet")
    mixed = read_table(tmp_path / "mixed.parquet", MIXED)
    train_from_mixed, _ = load_pairs(tmp_path / "mixed.parquet", template)
    train_from_records, _ = load_pairs(rec, template)

    for stage in (generated["prompt"], evaluated["prompt"], mixed["prompt"], pd.Series(train_from_mixed),
                  pd.Series(train_from_records)):  # fmt: skip
        assert stage.tolist() == expected
    # token level: training's prompt tokens are exactly the tokens generation starts from
    tokenizer = load_tokenizer(model)
    for prompt, n_prompt in zip(expected, generated["n_prompt_tokens"], strict=True):
        example = encode_example(tokenizer, prompt, "answer", max_length=10_000)
        assert sum(label == -100 for label in example["labels"]) == n_prompt
        assert example["input_ids"][:n_prompt] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
