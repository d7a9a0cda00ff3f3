"""The cached teacher signal: exact mode equals the live teacher, a cache made otherwise is refused, a killed
build resumes, compact mode with every token kept equals exact, and training reads it without the teacher."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from kdlm.data.mixing import MixConfig, mix
from kdlm.losses import LOSSES
from kdlm.losses.compact import compact_loss
from kdlm.losses.signal import HiddenStates
from kdlm.models import load_model, load_tokenizer
from kdlm.sections import build
from kdlm.teacher_cache.build import build_teacher_signal, parts_root
from kdlm.teacher_cache.config import TeacherSignalConfig
from kdlm.teacher_cache.store import TeacherSignalCache
from kdlm.training.config import MethodConfig, TrainConfig
from kdlm.training.data import ExampleDataset, collate_indexed, load_rows
from kdlm.training.output_rows import CountedRows, counted_outputs, output_layer
from kdlm.training.trainer import train

MAX_LENGTH = 48
TRAINING = {"max_steps": 3, "lr": 3e-3, "batch_size": 8, "grad_accum": 1, "max_length": MAX_LENGTH,
            "logging_steps": 1, "save_steps": 100, "threads": 1, "onpolicy": {"max_new_tokens": 4}}  # fmt: skip


@pytest.fixture(scope="module")
def files(lab_records, tmp_path_factory):
    """Training files of sources gt and mix_request_gt."""
    root = tmp_path_factory.mktemp("signal-data")
    out = {}
    for source in ("gt", "mix_request_gt"):
        out[source] = root / f"{source}.parquet"
        mix(lab_records["train"], out[source], MixConfig(source))
    return out


def _build(lab, data, out, **signal):
    cfg = build(TeacherSignalConfig, {"batch_size": 16, "part_size": 64, **signal}, "teacher_signal")
    return build_teacher_signal(teacher=str(lab["teacher"]), data=data, out=out, template="paper",
                                max_length=MAX_LENGTH, cfg=cfg)  # fmt: skip


@pytest.fixture(scope="module")
def sharp(lab, files, tmp_path_factory):
    """The lab teacher with its output layer x 8, and its exact cache of gt: a teacher as peaked as a trained
    one, so that the divergences compared are far from 0 (near-uniform random models give losses of ~1e-2,
    whose float32 roundoff is relative to log V, not to the loss)."""
    root = tmp_path_factory.mktemp("sharp")
    teacher = root / "teacher"
    shutil.copytree(lab["teacher"], teacher)
    model = load_model(str(teacher))
    with torch.no_grad():
        output_layer(model).weight.mul_(8.0)
    model.save_pretrained(teacher)
    cfg = build(TeacherSignalConfig, {"batch_size": 16, "part_size": 64}, "teacher_signal")
    build_teacher_signal(teacher=str(teacher), data=files["gt"], out=root / "gt", template="paper",
                         max_length=MAX_LENGTH, cfg=cfg)  # fmt: skip
    return teacher, root / "gt"


@pytest.fixture(scope="module")
def exact_cache(lab, files, tmp_path_factory):
    out = tmp_path_factory.mktemp("signal") / "gt"
    _build(lab, files["gt"], out)
    return out


def _batch(lab, data, rows: list[int]):
    tokenizer = load_tokenizer(str(lab["student"]))
    training_rows = load_rows(data, "paper")
    dataset = ExampleDataset(training_rows.prompts, training_rows.responses, tokenizer, MAX_LENGTH)
    return collate_indexed([dataset[i] for i in rows], tokenizer.pad_token_id), len(tokenizer)


def _student_logits(student, batch, counted):
    with counted_outputs(student, counted.positions):
        return student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("name", sorted(set(LOSSES) - {"sft"}))
def test_every_loss_from_the_exact_cache_equals_the_live_teacher(lab, files, sharp, name):
    teacher_dir, exact_cache = sharp
    rows = [5, 17, 3, 120, 64, 9, 33, 150]  # a training batch: not the cache's batches, other padding
    batch, vocab = _batch(lab, files["gt"], rows)
    counted = CountedRows.of(batch["labels"])
    teacher = load_model(str(teacher_dir)).eval()
    with torch.no_grad():  # the live teacher as before the cache: full logits, then the counted rows
        full = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    live = full[:, :-1, :vocab].reshape(-1, vocab)[  # (B*(T-1), V) rows at the counted positions
        (batch["labels"][:, 1:] != -100).reshape(-1)][None]
    cache = TeacherSignalCache(exact_cache)
    weight, bias = cache.output_layer()
    cached = HiddenStates(cache.hidden(rows, counted.per_row.tolist())[None], weight, bias, vocab)
    student = load_model(str(lab["student"]))
    results = []
    for signal_ in (live, cached):
        student.zero_grad()
        logits = _student_logits(student, batch, counted)[..., :vocab]
        loss = LOSSES[name](logits, signal_, counted.labels)
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in student.parameters()])
        results.append((loss.detach(), grad))
    (loss_live, grad_live), (loss_cached, grad_cached) = results
    assert abs(float(loss_cached - loss_live)) <= 1e-6 * abs(float(loss_live)) + 1e-12
    assert float((grad_cached - grad_live).norm()) <= 1e-6 * float(grad_live.norm()) + 1e-12


def _train(lab, data, out, loss, **kwargs):
    return train(student_path=str(lab["student"]), teacher_path=str(lab["teacher"]), data_path=data, out_dir=out,
                 method=MethodConfig(loss=loss), cfg=build(TrainConfig, TRAINING, "training"), template="paper",
                 **kwargs)  # fmt: skip


def _relative_difference(a_dir, b_dir) -> float:
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5
    return num / sum(float(a[k].norm() ** 2) for k in a) ** 0.5


@pytest.mark.parametrize("loss", ["forward", "atkd"])
def test_training_from_the_exact_cache_ends_with_the_live_weights_without_loading_the_teacher(
    lab, files, exact_cache, tmp_path, loss
):
    live = _train(lab, files["gt"], tmp_path / "live", loss)
    cached = _train(lab, files["gt"], tmp_path / "cached", loss, teacher_signal=exact_cache)
    assert live["teacher_loaded"] and live["teacher_signal"] is None
    assert not cached["teacher_loaded"] and cached["teacher_signal"]["mode"] == "exact"
    assert cached["teacher"] == str(lab["teacher"])
    assert _relative_difference(tmp_path / "live", tmp_path / "cached") <= 1e-5


def test_online_rows_use_the_live_teacher_and_offline_rows_the_cache(lab, files, tmp_path):
    cache = tmp_path / "mix_request_gt"
    meta = _build(lab, files["mix_request_gt"], cache)
    online = load_rows(files["mix_request_gt"], "paper").online
    assert meta["n_examples"] == online.count(False) and 0 < meta["n_examples"] < len(online)
    live = _train(lab, files["mix_request_gt"], tmp_path / "live", "forward")
    cached = _train(lab, files["mix_request_gt"], tmp_path / "cached", "forward", teacher_signal=cache)
    assert cached["teacher_loaded"] and live["n_online"] == cached["n_online"] > 0
    assert _relative_difference(tmp_path / "live", tmp_path / "cached") <= 1e-5


def test_compact_signal_keeping_every_token_equals_exact(lab, files, exact_cache, tmp_path):
    rows = [2, 4, 6, 8, 10, 12]
    batch, vocab = _batch(lab, files["gt"], rows)
    counted = CountedRows.of(batch["labels"])
    compact = tmp_path / "compact"
    meta = _build(lab, files["gt"], compact, mode="compact", top_k=vocab)  # capped to V - 2
    assert meta["mode"] == "compact" and meta["bytes_per_token"] > 0
    topk = TeacherSignalCache(compact).topk(rows, counted.per_row.tolist())
    assert topk.k == vocab - 2
    cache = TeacherSignalCache(exact_cache)
    exact = HiddenStates(cache.hidden(rows, counted.per_row.tolist())[None], *cache.output_layer(), vocab)
    student = load_model(str(lab["student"]))
    with torch.no_grad():
        logits = _student_logits(student, batch, counted)[..., :vocab]
    for name in ("forward", "reverse", "atkd", "tvd"):
        want = float(LOSSES[name](logits, exact, counted.labels))
        got = float(compact_loss(LOSSES[name], logits, topk, counted.targets))
        # float32 roundoff of two log-normalizers of about log V = 6 (the lab students are near uniform, so
        # the divergences are small next to them)
        assert abs(got - want) <= 1e-5 * abs(want) + 2e-5, name


@pytest.mark.parametrize("change", ["template", "max_length", "teacher", "tokenizer", "data"])
def test_a_cache_made_otherwise_is_refused_naming_the_difference(lab, files, exact_cache, tmp_path, change):
    teacher, data, template, training = str(lab["teacher"]), files["gt"], "paper", dict(TRAINING)
    student = str(lab["student"])
    if change == "template":
        template, words = "alpaca", "another prompt template (cache: 'paper', this run: 'alpaca')"
    elif change == "max_length":
        training["max_length"], words = 40, "another max_length (cache: 48, this run: 40)"
    elif change == "teacher":
        teacher = str(tmp_path / "teacher")
        shutil.copytree(lab["teacher"], teacher)
        model = load_model(teacher)
        with torch.no_grad():
            output_layer(model).weight.mul_(1.01)
        model.save_pretrained(teacher)
        words = "another teacher (its weights or config differ)"
    elif change == "tokenizer":
        student = str(tmp_path / "student")
        shutil.copytree(lab["student"], student)
        tokenizer = load_tokenizer(student)
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(student)
        words = "another tokenizer"
    else:
        data = tmp_path / "gt.parquet"
        pd.read_parquet(files["gt"]).iloc[:-1].to_parquet(data)  # one row fewer
        words = "other training data"
    with pytest.raises(ValueError, match="teacher signal cache .* was made with ") as err:
        train(student_path=student, teacher_path=teacher, data_path=data, out_dir=tmp_path / "out",
              method=MethodConfig(loss="forward"), cfg=build(TrainConfig, training, "training"), template=template,
              teacher_signal=exact_cache)  # fmt: skip
    assert words in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.checkpoints").exists()


def test_a_killed_build_resumes_after_its_last_whole_part(lab, files, tmp_path):
    signal_cfg = json.dumps({"batch_size": 4, "part_size": 8})
    command = [sys.executable, "-m", "kdlm.cli", "teacher-signal", "--teacher", str(lab["teacher"]), "--data",
               str(files["gt"]), "--signal", signal_cfg, "--training", json.dumps({"max_length": MAX_LENGTH}),
               "--template", "paper"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run([*command, "--out", str(whole)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen([*command, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        while proc.poll() is None and len(list(parts_root(killed).glob("*/part-*.safetensors"))) < 3:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = sorted(parts_root(killed).glob("*/part-*.safetensors"))
    assert len(kept) >= 3 and not (killed / "signal.json").exists(), "killed after some parts, before the end"
    stamps = {p.name: p.stat().st_mtime_ns for p in kept}

    done = subprocess.run([*command, "--out", str(killed)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(kept)} of " in done.stderr and "already in" in done.stderr
    assert {name: (killed / name).stat().st_mtime_ns for name in stamps} == stamps, "kept parts are not redone"
    assert not parts_root(killed).exists()
    a, b = json.loads((whole / "signal.json").read_text()), json.loads((killed / "signal.json").read_text())
    assert a["parts"] == b["parts"] and a["fingerprint"] == b["fingerprint"] and a["n_tokens"] == b["n_tokens"]
    for name in a["parts"]:
        x, y = load_file(whole / name), load_file(killed / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


def test_exact_mode_refuses_a_teacher_whose_logits_are_not_a_plain_matmul(lab, files, tmp_path):
    teacher = tmp_path / "softcapped"
    shutil.copytree(lab["teacher"], teacher)
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "final_logit_softcapping": 30.0}))
    cfg = build(TeacherSignalConfig, {}, "teacher_signal")
    with pytest.raises(ValueError, match="use mode: compact"):
        build_teacher_signal(teacher=str(teacher), data=files["gt"], out=tmp_path / "out", template="paper",
                             max_length=MAX_LENGTH, cfg=cfg)  # fmt: skip
    assert not (tmp_path / "out").exists()


