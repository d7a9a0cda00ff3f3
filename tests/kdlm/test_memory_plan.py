"""The memory plan: shipped configs count the published parameters, and the estimates move the right way."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, OPTConfig, OPTForCausalLM

from kdlm.memory_plan import (
    GPU_COUNTS,
    USABLE_FRACTION,
    TrainingJob,
    choose,
    estimate,
    format_plan,
    model_shape,
    plan_rows,
    shipped_config_dir,
)

# the published sizes (model cards, papers), as the brief to ship them gave them
PUBLISHED = {
    "facebook/opt-1.3b": 1.316e9,
    "facebook/opt-2.7b": 2.65e9,
    "facebook/opt-6.7b": 6.66e9,
    "EleutherAI/pythia-410m": 4.05e8,
    "EleutherAI/pythia-1.4b": 1.41e9,
    "EleutherAI/pythia-6.9b": 6.86e9,
    "huggyllama/llama-7b": 6.74e9,
    "huggyllama/llama-13b": 1.30e10,
}

OPT_PAIR = TrainingJob("distill opt-1.3b ← opt-6.7b", "facebook/opt-1.3b", "facebook/opt-6.7b", 1, 512, True)
LLAMA_PAIR = TrainingJob("distill llama-7b ← llama-13b", "huggyllama/llama-7b", "huggyllama/llama-13b", 1, 512, True)


@pytest.mark.parametrize("ref", sorted(PUBLISHED))
def test_shipped_configs_load_and_count_the_published_parameters(ref):
    directory = shipped_config_dir(ref)
    assert directory is not None and (directory / "config.json").is_file()
    config = AutoConfig.from_pretrained(directory)
    shape = model_shape(ref)
    assert shape.parameters == pytest.approx(PUBLISHED[ref], rel=0.01)
    assert shape.model_type == config.model_type
    assert shape.layers == config.num_hidden_layers
    assert shape.hidden == config.hidden_size
    assert shape.context == 2048
    # the decoder layers and the rest (embeddings, output layer, final norm) make up the whole model
    assert shape.layers * shape.largest_layer_parameters + shape.root_parameters == shape.parameters


def test_pythia_vocab_padding_and_tied_opt_embeddings():
    assert model_shape("EleutherAI/pythia-410m").vocab == 50304
    assert model_shape("EleutherAI/pythia-6.9b").vocab == 50432
    opt = model_shape("facebook/opt-1.3b")
    # tied: one vocab x hidden matrix in the root, plus positions (2048 + 2 offset) and the final norm
    assert opt.root_parameters == opt.vocab * opt.hidden + 2050 * opt.hidden + 2 * opt.hidden


def test_shipped_config_dir_is_none_for_unknown_or_odd_refs():
    assert shipped_config_dir("facebook/opt-125m") is None
    assert shipped_config_dir("opt-1.3b") is None
    assert shipped_config_dir("../facebook/opt-1.3b") is None


def test_model_shape_of_a_tiny_local_model_matches_the_instantiated_count(tmp_path):
    config = OPTConfig(
        vocab_size=97, hidden_size=16, num_hidden_layers=3, ffn_dim=40, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=16,
    )  # fmt: skip
    config.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = OPTForCausalLM(config)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, so counted once
    real = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.model.decoder.layers[0].parameters())
    shape = model_shape(str(tmp_path))
    assert shape.parameters == real
    assert shape.largest_layer_parameters == layer
    assert (shape.layers, shape.hidden, shape.intermediate, shape.vocab, shape.context) == (3, 16, 40, 97, 64)


def test_a_ref_without_config_is_a_value_error_naming_it(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match="no-such-model.*no config is shipped") as info:
        model_shape(missing)
    assert "\n" not in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        model_shape(str(empty))


def test_fsdp_divides_the_student_states_by_the_gpus():
    job = TrainingJob("ft opt-2.7b", "facebook/opt-2.7b", None, 1, 512, True)
    shape = model_shape(job.student)
    ddp = estimate(job, "ddp", 1, checkpointing=False, teacher_sharded=False)
    for gpus in (2, 4, 8):
        fsdp = estimate(job, "fsdp", gpus, checkpointing=False, teacher_sharded=False)
        # float32 master weights / gpus plus the bf16 gather buffer (2 layers and the root)
        buffer = 2 * (2 * shape.largest_layer_parameters + shape.root_parameters)
        assert fsdp.parameters == pytest.approx(4 * shape.parameters / gpus + buffer)
        assert buffer < 0.2 * 4 * shape.parameters
        assert fsdp.optimizer == pytest.approx(ddp.optimizer / gpus)
        assert fsdp.gradients < ddp.gradients / gpus + 4 * shape.largest_layer_parameters + 1
        assert fsdp.activations == ddp.activations and fsdp.logits == ddp.logits
    # ddp's bf16 weight cache: 6 bytes per parameter held against fsdp's 4 / gpus
    assert ddp.parameters == pytest.approx(6 * shape.parameters)
    f32 = estimate(TrainingJob("f32", job.student, None, 1, 512, False), "ddp", 1, checkpointing=False,
                   teacher_sharded=False)  # fmt: skip
    assert f32.parameters + f32.gradients + f32.optimizer == pytest.approx(16 * shape.parameters)


def test_checkpointing_lowers_activations():
    for strategy, gpus in (("ddp", 1), ("fsdp", 4)):
        full = estimate(LLAMA_PAIR, strategy, gpus, checkpointing=False, teacher_sharded=False)
        ckpt = estimate(LLAMA_PAIR, strategy, gpus, checkpointing=True, teacher_sharded=False)
        assert ckpt.activations < full.activations / 4
        assert ckpt.total < full.total
        assert (ckpt.parameters, ckpt.teacher, ckpt.logits) == (full.parameters, full.teacher, full.logits)


def test_activations_and_logits_grow_with_the_tokens():
    small = estimate(OPT_PAIR, "ddp", 1, checkpointing=False, teacher_sharded=False)
    big = TrainingJob(OPT_PAIR.name, OPT_PAIR.student, OPT_PAIR.teacher, 4, 512, True)
    large = estimate(big, "ddp", 1, checkpointing=False, teacher_sharded=False)
    assert large.activations == pytest.approx(4 * small.activations)
    assert 3 * small.logits < large.logits < 4 * small.logits  # the chunk workspace does not grow


def test_teacher_float32_doubles_the_teacher_bytes():
    f32 = TrainingJob(OPT_PAIR.name, OPT_PAIR.student, OPT_PAIR.teacher, 1, 512, True, teacher_float32=True)
    for strategy, gpus, sharded in (("ddp", 1, False), ("fsdp", 4, False), ("fsdp", 4, True)):
        bf16 = estimate(OPT_PAIR, strategy, gpus, checkpointing=False, teacher_sharded=sharded)
        both = estimate(f32, strategy, gpus, checkpointing=False, teacher_sharded=sharded)
        assert both.teacher == pytest.approx(2 * bf16.teacher)
        assert both.parameters == bf16.parameters
    replicated = estimate(OPT_PAIR, "ddp", 1, checkpointing=False, teacher_sharded=False)
    assert replicated.teacher == 2 * model_shape(OPT_PAIR.teacher).parameters


def test_sharding_the_teacher_divides_it():
    replicated = estimate(LLAMA_PAIR, "fsdp", 8, checkpointing=False, teacher_sharded=False)
    sharded = estimate(LLAMA_PAIR, "fsdp", 8, checkpointing=False, teacher_sharded=True)
    assert sharded.teacher < replicated.teacher / 4
    with pytest.raises(ValueError, match="fsdp"):
        estimate(LLAMA_PAIR, "ddp", 2, checkpointing=False, teacher_sharded=True)
    with pytest.raises(ValueError, match="strategy"):
        estimate(LLAMA_PAIR, "zero3", 2, checkpointing=False, teacher_sharded=False)


def test_choose_opt_on_one_gpu_and_llama_on_several_with_fsdp():
    opt = choose(OPT_PAIR, 80)
    assert opt.estimate is not None
    assert (opt.estimate.strategy, opt.estimate.gpus, opt.estimate.teacher_sharded) == ("ddp", 1, False)
    assert opt.estimate.gb <= 80

    llama = choose(LLAMA_PAIR, 80)
    e = llama.estimate
    assert e is not None and e.strategy == "fsdp" and e.gpus > 1 and e.gb <= 80
    assert not e.checkpointing
    # nothing with fewer GPUs, nor ddp at the same count, fits
    for gpus in [g for g in GPU_COUNTS if g < e.gpus]:
        for strategy, shard in (("ddp", False), ("fsdp", False), ("fsdp", True)):
            assert estimate(LLAMA_PAIR, strategy, gpus, checkpointing=False, teacher_sharded=shard).gb > 80 * USABLE_FRACTION
    assert estimate(LLAMA_PAIR, "ddp", e.gpus, checkpointing=False, teacher_sharded=False).gb > 80 * USABLE_FRACTION
    if e.teacher_sharded:
        assert estimate(LLAMA_PAIR, "fsdp", e.gpus, checkpointing=False, teacher_sharded=False).gb > 80 * USABLE_FRACTION


def test_an_impossible_job_has_no_estimate_and_says_why():
    job = TrainingJob("ft llama-7b", "huggyllama/llama-7b", None, 1, 512, True)
    choice = choose(job, 10)
    assert choice.estimate is None
    assert choice.reason.startswith("ft llama-7b: needs ")
    assert "batch_size/max_length" in choice.reason
    best = min(
        estimate(job, s, g, checkpointing=False, teacher_sharded=False).gb for s in ("ddp", "fsdp") for g in GPU_COUNTS
    )
    assert f"{best:.1f} GB" in choice.reason


def test_plan_table(tmp_path):
    jobs = [OPT_PAIR, LLAMA_PAIR, TrainingJob("ft llama-7b", "huggyllama/llama-7b", None, 1, 512, True)]
    rows = plan_rows(jobs, 4)
    assert [r["job"] for r in rows] == [j.name for j in jobs]
    assert all(r["choice"] == "fits nowhere" and r["fsdp_gpus"] == max(GPU_COUNTS) for r in rows)
    assert rows[2]["teacher_b"] is None
    rows = plan_rows(jobs, 80)
    assert rows[0]["choice"] == "ddp×1" and rows[1]["choice"].startswith("fsdp×")
    for r in rows:
        assert r["ddp1_ckpt"] < r["ddp1"] and r["fsdp_ckpt"] < r["fsdp"]
    text = format_plan(rows)
    lines = text.splitlines()
    assert len(lines) >= 2 + len(jobs)
    assert all(len(line) <= 110 for line in lines)
    assert lines[0].startswith("| job") and set(lines[1]) <= set("|-: ")
    for job, row in zip(jobs, lines[2:], strict=False):
        assert row.startswith(f"| {job.name}")
    assert f"{rows[1]['ddp1']:.1f}" in lines[3]
    json.dumps(rows)  # plain values, ready for a report


def test_a_job_that_fits_on_more_gpus_than_allowed_says_how_many():
    choice = choose(LLAMA_PAIR, 80, gpu_counts=(1, 2))
    assert choice.estimate is None
    allowed = choose(LLAMA_PAIR, 80)
    assert f"max_gpus >= {allowed.estimate.gpus} (fsdp on {allowed.estimate.gpus} GPUs" in choice.reason
