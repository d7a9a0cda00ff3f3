"""`kdlm <verb>`: each verb parses its options into a typed config and calls one library function.

Every Snakemake rule's shell is one of these calls, and each works without Snakemake.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from kdlm import bench
from kdlm.data.templates import DEFAULT_TEMPLATE, check_template
from kdlm.decoding import GenerateConfig
from kdlm.io import atomic_path, check_output_dir, check_output_file
from kdlm.job_plan import GPU_MEMORY_GB, MAX_GPUS
from kdlm.lab.corpus import FAMILIES as CORPUS_FAMILIES
from kdlm.lab.spec import FAMILIES as MODEL_FAMILIES
from kdlm.lab.spec import TokenizerSettings
from kdlm.sections import build, merged
from kdlm.study import SOURCES

# Only the light modules above load with the parser: each verb imports its heavy dependencies (torch,
# transformers, pandas, jsonschema) itself, so a job pays for what it uses. Every Snakemake job starts
# this CLI once, and the eager imports cost about 3 s a job (docs/design.md, "Job start-up").

def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err.msg}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding (a flag given here overrides the same key of --generation)")
    group.add_argument("--generation", type=_json_dict, default={}, help="JSON object of GenerateConfig fields")
    group.add_argument("--max-new-tokens", type=int, default=None)
    group.add_argument("--batch-size", type=int, default=None, help="prompts per generate() call")
    group.add_argument("--sample", action="store_true", default=None, help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=float, default=None)
    group.add_argument("--top-p", type=float, default=None)
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--max-prompt-tokens", type=int, default=None, help="cut longer prompts from the left")
    parser.add_argument(
        "--template", default=DEFAULT_TEMPLATE, help="prompt template: paper | alpaca | an fschat template (kdlm.data.templates)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _generation_config(args: argparse.Namespace) -> GenerateConfig:
    flags = ("max_new_tokens", "batch_size", "sample", "temperature", "top_p", "seed", "max_prompt_tokens",
             "overlong", "shard_size", "backend")  # fmt: skip
    values = merged(args.generation, **{k: getattr(args, k) for k in flags if hasattr(args, k)})
    return build(GenerateConfig, values, "generation")


# ---------------------------------------------------------------------------------------------- lab


def _lab_corpus(args: argparse.Namespace) -> int:
    from kdlm.lab.corpus import CorpusConfig, build_corpus, write_corpus

    values = merged(args.config, seed=args.seed, n_train=args.n_train, n_validation=args.n_validation,
                    n_test=args.n_test, families=args.families)  # fmt: skip
    cfg = build(CorpusConfig, values, "lab.corpus")
    for path in write_corpus(build_corpus(cfg), args.out_dir):
        print(path)
    return 0


def _lab_tokenizer(args: argparse.Namespace) -> int:
    from kdlm.lab.corpus import training_texts
    from kdlm.lab.tokenizer import train_tokenizer

    cfg = build(TokenizerSettings, merged(args.config, vocab_size=args.vocab_size), "lab.tokenizer")
    train_tokenizer(training_texts(args.corpus, args.template), cfg.vocab_size, args.out)
    print(args.out)
    return 0


def _lab_model(args: argparse.Namespace) -> int:
    from kdlm.lab.models import LabModelConfig, build_model

    flags = ("family", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings", "seed")
    cfg = build(LabModelConfig, merged(args.config, **{k: getattr(args, k) for k in flags}), "lab model")
    n = build_model(cfg, args.tokenizer, args.out)
    print(f"{args.out}: {cfg.family}, {n:,} parameters")
    return 0


def _lab_pretraining_text(args: argparse.Namespace) -> int:
    from kdlm.lab.pretraining import (
        PretrainTextConfig,
        held_out_inputs,
        pretraining_passages,
        write_pretraining_text,
    )

    cfg = build(PretrainTextConfig, merged(args.config, seed=args.seed, n_passages=args.n_passages), "lab.pretraining.text")
    passages = pretraining_passages(cfg, held_out_inputs(args.held_out))
    write_pretraining_text(passages, args.out)
    print(f"{args.out}: {len(passages)} passages, {sum(len(p.split()) for p in passages):,} words")
    return 0


def _add_lab(sub) -> None:
    lab = sub.add_parser("lab", help="build the embedded lab: corpus, tokenizer, tiny models")
    lab_sub = lab.add_subparsers(dest="lab_verb", required=True)

    p = lab_sub.add_parser("corpus", help="write the synthetic instruction corpus as Alpaca JSON splits")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--config", type=_json_dict, default={}, help="JSON object of CorpusConfig fields (lab.corpus)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-validation", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--families", nargs="+", default=None, help=f"from {list(CORPUS_FAMILIES)}")
    p.set_defaults(func=_lab_corpus)

    p = lab_sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on corpus files")
    p.add_argument("--corpus", type=Path, nargs="+", required=True, help="Alpaca JSON files")
    p.add_argument("--config", type=_json_dict, default={}, help="JSON object of lab.tokenizer settings")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--template", default=DEFAULT_TEMPLATE)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_lab_tokenizer)

    p = lab_sub.add_parser("pretraining-text", help="write the running text lab models are pretrained on (then `kdlm sft` on it)")
    p.add_argument("--held-out", type=Path, nargs="*", default=[],
                   help="Alpaca JSON files whose inputs the text must not state (the validation and test splits)")
    p.add_argument("--config", type=_json_dict, default={}, help="JSON object of PretrainTextConfig fields (lab.pretraining.text)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--n-passages", type=int, default=None)
    p.add_argument("--out", type=Path, required=True, help="parquet training file (prompt empty, every token counted)")
    p.set_defaults(func=_lab_pretraining_text)

    p = lab_sub.add_parser("model", help="initialise a tiny model of one family and save it as an HF directory")
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--config", type=_json_dict, default={}, help="JSON object of LabModelConfig fields (lab.models.<name>)")
    p.add_argument("--family", default=None, help=f"one of {list(MODEL_FAMILIES)}")
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--num-heads", type=int, default=None)
    p.add_argument("--intermediate-size", type=int, default=None)
    p.add_argument("--max-position-embeddings", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_lab_model)


# --------------------------------------------------------------------------------------- data stages


def _prepare(args: argparse.Namespace) -> int:
    from kdlm.data.records import PrepareConfig, prepare

    values = merged(args.spec, format=args.format, fields=args.fields, on_bad_record=args.on_bad_record,
                    hf_split=args.hf_split, hf_name=args.hf_name)  # fmt: skip
    cfg = build(PrepareConfig, {**values, "input": args.input, "out": args.out, "dataset": args.dataset}, "prepare")
    n = prepare(cfg)
    print(f"{args.out}: {n} records")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from kdlm.generation import generate_for_records, parse_shard
    from kdlm.models import set_threads

    check_template(args.template)
    shard = parse_shard(args.shard) if args.shard else None
    set_threads(args.threads)
    n = generate_for_records(
        args.model, args.records, args.out, _generation_config(args), args.name, args.template, shard, args.merge
    )
    if shard is not None:
        print(f"{args.out}: shard {args.shard}: {n} responses in {args.out}.shards/")
    else:
        print(f"{args.out}: {n} responses")
    if args.done is not None:
        with atomic_path(args.done) as tmp:
            tmp.write_text(json.dumps({"out": str(args.out), "shard": args.shard, "responses": n}) + "\n")
    return 0


def _mix(args: argparse.Namespace) -> int:
    from kdlm.data.mixing import MixConfig, mix

    check_template(args.template)
    values = merged(args.mix, ratio=args.ratio, seed=args.seed)
    cfg = build(MixConfig, {**values, "source": args.source, "template": args.template}, "mix")
    n = mix(args.records, args.out, cfg, generated_path=args.generated)
    print(f"{args.out}: {n} rows ({args.source})")
    return 0


# ------------------------------------------------------------------------------------------ training


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--training", type=_json_dict, default={}, help="JSON object of TrainConfig fields")
    parser.add_argument("--distributed", type=_json_dict, default={},
                        help="JSON object of DistributedConfig fields (strategy ddp/fsdp, cpu_offload, teacher)")  # fmt: skip
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="prompt template (for records input)")
    parser.add_argument("--out", type=Path, required=True, help="output model directory")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="where resumable checkpoints go (default <out>.checkpoints); the same command resumes from the newest",
    )
    parser.add_argument("--info", type=_json_dict, default={}, help="JSON object added to run.json")


def _train(args: argparse.Namespace, teacher: str | None, method: dict) -> int:
    from kdlm.training.config import DistributedConfig, MethodConfig, TrainConfig
    from kdlm.training.trainer import train

    run = train(
        student_path=args.student,
        teacher_path=teacher,
        data_path=args.data,
        out_dir=args.out,
        method=MethodConfig.from_dict(method),
        cfg=build(TrainConfig, args.training, "training"),
        distributed=build(DistributedConfig, args.distributed, "distributed"),
        template=args.template,
        checkpoint_dir=args.checkpoint_dir,
        extra_info=args.info,
        teacher_signal=getattr(args, "teacher_signal", None),
    )
    print(f"{args.out}: {run['global_steps']} steps in {run['train_seconds']:.0f} s")
    return 0


def _sft(args: argparse.Namespace) -> int:
    return _train(args, None, {"loss": "sft"})


def _distill(args: argparse.Namespace) -> int:
    return _train(args, args.teacher, args.method)


def _teacher_signal(args: argparse.Namespace) -> int:
    from kdlm.generation import parse_shard
    from kdlm.models import set_threads
    from kdlm.teacher_cache.build import build_teacher_signal
    from kdlm.teacher_cache.config import TeacherSignalConfig
    from kdlm.training.config import TrainConfig
    from kdlm.training.trainer import teacher_dtype

    check_template(args.template)
    shard = parse_shard(args.shard) if args.shard else None
    cfg = build(TrainConfig, args.training, "training")
    set_threads(cfg.threads)
    meta = build_teacher_signal(
        teacher=args.teacher, data=args.data, out=args.out, template=args.template, max_length=cfg.max_length,
        cfg=build(TeacherSignalConfig, args.signal, "teacher_signal"), dtype=teacher_dtype(cfg), shard=shard,
        merge_only=args.merge,
    )  # fmt: skip
    if shard is not None:
        print(f"{args.out}: shard {args.shard}: {meta['written']} parts written")
    else:
        print(f"{args.out}: {meta['mode']} signal of {meta['n_tokens']} tokens ({meta['n_examples']} examples), "
              f"{meta['bytes_per_token']:.0f} bytes/token, built in {meta['build_seconds']:.0f} s")  # fmt: skip
    return 0


def _uncertainty(args: argparse.Namespace) -> int:
    from kdlm.claims import write_uncertainty
    from kdlm.models import set_threads
    from kdlm.training.config import TrainConfig
    from kdlm.uncertainty import teacher_uncertainty

    check_template(args.template)
    cfg = build(TrainConfig, args.training, "training")
    set_threads(cfg.threads)
    rows, values = teacher_uncertainty(args.teacher, args.data, args.template, cfg.max_length)
    write_uncertainty(rows, values, args.out, teacher=args.name or args.teacher, source=args.source, data=str(args.data))
    easy = sum(v < 0.1 for v in values) / max(len(values), 1)
    print(f"{args.out}: {len(values)} tokens, mean uncertainty {sum(values) / max(len(values), 1):.3f}, "
          f"{easy:.1%} under 0.1")  # fmt: skip
    return 0


def _claims(args: argparse.Namespace) -> int:
    from kdlm.claims import ClaimsConfig, write_claims

    cfg = build(ClaimsConfig, args.config, "claims")
    print(write_claims(args.evals, args.uncertainty, cfg, args.out, args.plot))
    return 0


# -------------------------------------------------------------------------------------- evaluation


def _evaluate(args: argparse.Namespace) -> int:
    from kdlm.evaluation.evaluate import evaluate_model
    from kdlm.models import set_threads

    set_threads(args.threads)
    means = evaluate_model(args.model, args.records, args.out, _generation_config(args), args.template, args.label)
    print(f"{args.out}: " + ", ".join(f"{k}={v:.3f}" for k, v in means.items()))
    return 0


def _report(args: argparse.Namespace) -> int:
    from kdlm.report import ReportConfig, write_report

    values = merged({}, baseline_method=args.baseline_method, n_resamples=args.n_resamples)
    if values.get("baseline_method") == "":  # '' on the command line: no Δ
        values["baseline_method"] = None
    cfg = build(ReportConfig, {**values, "plots_dir": args.plots_dir, "train_logs": args.train_logs,
                               "judge_files": args.judge, "harness_files": args.harness}, "report")  # fmt: skip
    md = write_report(args.evals, args.out_dir, cfg)
    print(md.read_text())
    return 0


def _judge(args: argparse.Namespace) -> int:
    from kdlm.evaluation.judge import JudgeConfig, judge_evaluation

    values = merged(args.judge, base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                    concurrency=args.concurrency, max_retries=args.max_retries, timeout=args.timeout,
                    backoff=args.backoff, both_orders=False if args.one_order else None)  # fmt: skip
    values["api_key_env"] = values.get("api_key_env", "OPENAI_API_KEY") or None  # '' means no key
    cfg = build(JudgeConfig, values, "judge")
    s = judge_evaluation(args.eval, args.out, cfg, args.records, args.cache)
    print(
        f"{args.out}: judge score {s['score']:.3f} (Σ student / Σ reference) over {s['valid']} of {s['examples']}"
        f" examples; {s['unparsable_replies']} unparsable repl(ies); {s['requests']} request(s), {s['retries']} retries"
    )
    return 0


def _harness(args: argparse.Namespace) -> int:
    from kdlm.evaluation.lmeval import HarnessConfig, evaluate_harness, primary_scores

    values = merged(args.lm_eval, tasks=args.tasks, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                    limit=args.limit, device=args.device, on_error=args.on_error)  # fmt: skip
    cfg = build(HarnessConfig, values, "lm_eval")
    table = evaluate_harness(args.model, args.out, cfg, args.label)
    scores = primary_scores(table, cfg.tasks)
    print(f"{args.out}: " + ", ".join(f"{task}={value:.3f}" for task, (value, _) in scores.items()))
    return 0


def _results(args: argparse.Namespace) -> int:
    from kdlm.results import show_results

    return show_results(args.table, args.filter, args.metric, args.task, args.sort, pivot=args.pivot)


def _check_config(args: argparse.Namespace) -> int:
    from kdlm.config_checks import check_config_files
    from kdlm.study import Study

    config, notes = check_config_files(args.configfile, args.checkout)
    for note in notes:
        print(f"note: {note}")
    study = Study(config)
    print(f"valid: {len(study.runs())} runs of {len(study.pairs())} pair(s), {len(study.tasks())} task(s)")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from kdlm.config_checks import check_config_files
    from kdlm.job_plan import format_teacher_compute, plan_study, profile_gpus
    from kdlm.memory_plan import format_plan

    config, _ = check_config_files(args.configfile, args.checkout)
    declared = profile_gpus(args.workflow_profile) if args.workflow_profile else {}
    plan = plan_study(config, args.gpu_memory_gb or declared.get("gpu_memory_gb", GPU_MEMORY_GB),
                      args.max_gpus or declared.get("max_gpus", MAX_GPUS))  # fmt: skip
    print(format_plan(plan.rows))
    print(f"\n{format_teacher_compute(plan)}")
    for problem in plan.problems:
        print(f"fits nowhere: {problem}")
    return 2 if plan.problems else 0


def _bench(args: argparse.Namespace) -> int:
    return bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True)
    _add_lab(sub)

    p = sub.add_parser("prepare", help="load a user data file into the records parquet")
    p.add_argument("--input", required=True, help="data file; for --format hf a hub id or a local directory")
    p.add_argument("--spec", type=_json_dict, default={},
                   help="JSON object: the data set's format, fields, on_bad_record, hf_split, hf_name")
    p.add_argument("--format", default=None, help="alpaca | jsonl | parquet | csv | hf")
    p.add_argument("--dataset", required=True, help="dataset name stored in each record")
    p.add_argument(
        "--fields", type=_json_dict, default=None, help='e.g. {"output": "response"} or {"output": "instances.0.output"}'
    )
    p.add_argument("--on-bad-record", default=None, help="error | skip (counts go to <out>.skipped.json)")
    p.add_argument("--hf-split", default=None, help="--format hf: the split to load (default: the only one)")
    p.add_argument("--hf-name", default=None, help="--format hf: the data set's configuration name")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("generate", help="generate responses for a records parquet")
    p.add_argument("--model", required=True, help="model directory or hub id")
    p.add_argument("--name", required=True, help="model name written to the output")
    p.add_argument("--records", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    _add_generation_options(p)
    group = p.add_argument_group("shards, resume and backends")
    group.add_argument("--shard", default=None, metavar="I/N", help="generate only shards k with k %% N == I; no merge")
    group.add_argument("--merge", action="store_true", help="join the finished shards into --out (same options)")
    group.add_argument("--shard-size", type=int, default=None, help="prompts per shard file (the unit of resume)")
    group.add_argument("--overlong", default=None, help="prompts over the context: truncate | skip")
    group.add_argument("--backend", default=None, help="hf | vllm (vllm only where installed)")
    group.add_argument("--done", type=Path, default=None, help="write a JSON summary here when finished (job marker)")
    p.set_defaults(func=_generate)

    p = sub.add_parser("mix", help="build the training parquet of one sample source")
    p.add_argument("--records", type=Path, required=True)
    p.add_argument(
        "--generated", type=Path, default=None, help="teacher responses (sources teacher, mix_token, mix_request_teacher)"
    )
    p.add_argument("--source", required=True, help=" | ".join(SOURCES))
    p.add_argument("--mix", type=_json_dict, default={}, help="JSON object: the mix section's ratio and seed")
    p.add_argument("--ratio", type=float, default=None, help="on-policy share of the mix_* sources (default 0.5)")
    p.add_argument("--seed", type=int, default=None, help="draws the online rows of mix_request_*")
    p.add_argument("--template", default=DEFAULT_TEMPLATE)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_mix)

    p = sub.add_parser("sft", help="fine-tune a model with cross-entropy on a records or mixed parquet")
    p.add_argument("--student", required=True, help="model to fine-tune (directory or hub id)")
    p.add_argument("--data", type=Path, required=True)
    _add_training_options(p)
    p.set_defaults(func=_sft)

    p = sub.add_parser("distill", help="distill a teacher into a student with one method")
    p.add_argument("--student", required=True)
    p.add_argument("--teacher", default=None, help="teacher model (not needed for loss sft)")
    p.add_argument(
        "--data", type=Path, required=True, help="mixed-data parquet of one source (online rows are generated each step)"
    )
    p.add_argument("--method", type=_json_dict, required=True, help='e.g. {"loss": "atkd", "lam": 0.2}')
    p.add_argument("--teacher-signal", type=Path, default=None,
                   help="a cached teacher signal of --data (kdlm teacher-signal): offline rows are distilled from it")  # fmt: skip
    _add_training_options(p)
    p.set_defaults(func=_distill)

    p = sub.add_parser("teacher-signal", help="run the teacher once over a training file and cache its signal")
    p.add_argument("--teacher", required=True, help="teacher model (directory or hub id)")
    p.add_argument("--data", type=Path, required=True, help="mixed-data parquet of one source (its offline rows)")
    p.add_argument("--out", type=Path, required=True, help="output cache directory")
    p.add_argument("--signal", type=_json_dict, default={},
                   help="JSON object of the teacher_signal section: mode exact|compact, top_k, batch_size, part_size")  # fmt: skip
    p.add_argument("--training", type=_json_dict, default={},
                   help="JSON object of the distillation's training section (max_length, bf16, threads)")  # fmt: skip
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help="prompt template")
    p.add_argument("--shard", default=None, metavar="I/N", help="build only parts k with k %% N == I; no merge")
    p.add_argument("--merge", action="store_true", help="move the finished parts into --out (same options)")
    p.set_defaults(func=_teacher_signal)

    p = sub.add_parser("uncertainty", help="a teacher's 1 - p(target) at every counted token of a training file")
    p.add_argument("--teacher", required=True, help="teacher model (directory or hub id)")
    p.add_argument("--name", default=None, help="the teacher's name in the study (default: --teacher)")
    p.add_argument("--source", required=True, help="the training file's source (gt, teacher, ...)")
    p.add_argument("--data", type=Path, required=True, help="training parquet of an offline source")
    p.add_argument("--training", type=_json_dict, default={},
                   help="JSON object of the distillation's training section (max_length, threads)")  # fmt: skip
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help="prompt template")
    p.add_argument("--out", type=Path, required=True, help="parquet: row, uncertainty")
    p.set_defaults(func=_uncertainty)

    p = sub.add_parser("claims", help="test the paper's claims on a study's evaluations: claims.md with verdicts")
    p.add_argument("--evals", type=Path, nargs="+", required=True, help="evaluation parquet files (teachers included)")
    p.add_argument("--uncertainty", type=Path, nargs="*", default=[], help="`kdlm uncertainty` files")
    p.add_argument("--config", type=_json_dict, required=True, help="JSON object of the claims section (ClaimsConfig)")
    p.add_argument("--out", type=Path, required=True, help="markdown report (results/tables/claims.md)")
    p.add_argument("--plot", type=Path, default=None, help="uncertainty plot PNG (results/plots/uncertainty.png)")
    p.set_defaults(func=_claims)

    p = sub.add_parser("evaluate", help="answer a task's prompts and score them")
    p.add_argument("--model", required=True)
    p.add_argument("--records", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--label", type=_json_dict, default={}, help="description stored with the results")
    _add_generation_options(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("report", help="write summary tables from evaluation files")
    p.add_argument("--evals", type=Path, nargs="+", required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument(
        "--baseline-method", default=None, help="method Δ is taken against (default fkl, forward KL); '' for no Δ"
    )
    p.add_argument("--n-resamples", type=int, default=None, help="bootstrap resamples of every interval (1000)")
    p.add_argument("--plots-dir", type=Path, default=None, help="write PNG figures here")
    p.add_argument(
        "--train-logs", type=Path, nargs="*", default=[], help="results/runs/<run>/train_log.parquet files to plot"
    )
    p.add_argument("--judge", type=Path, nargs="*", default=[], help="kdlm judge files: adds the metric `judge`")
    p.add_argument("--harness", type=Path, nargs="*", default=[], help="kdlm harness files: adds the metric `harness`")
    p.set_defaults(func=_report)

    p = sub.add_parser("judge", help="score a task's answers against its references with an LLM judge")
    p.add_argument("--eval", type=Path, required=True, help="evaluation parquet (kdlm evaluate)")
    p.add_argument("--records", type=Path, default=None, help="the task's records: the question without the template")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=None, help="reply cache (default: <out>.cache.parquet)")
    p.add_argument("--judge", type=_json_dict, default={}, help="JSON object of JudgeConfig fields (evaluation.judge)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default=None, help="judge model name on that server")
    p.add_argument("--api-key-env", default=None, help="NAME of the variable holding the key (OPENAI_API_KEY); '' for none")
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--max-retries", type=int, default=None)
    p.add_argument("--timeout", type=float, default=None, help="seconds per request")
    p.add_argument("--backoff", type=float, default=None, help="first retry delay in seconds, doubled each retry")
    p.add_argument("--one-order", action="store_true", help="ask only with the student as Assistant 1 (as the paper)")
    p.set_defaults(func=_judge)

    p = sub.add_parser("harness", help="MMLU / BBH / DROP through lm-eval (optional extra [lmeval])")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lm-eval", type=_json_dict, default={}, help="JSON object of HarnessConfig fields (evaluation.lm_eval)")
    p.add_argument("--tasks", nargs="+", default=None, help="lm-eval task names (mmlu bbh drop)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="examples per task (quick look)")
    p.add_argument("--device", default=None, help="cpu (default) | cuda | ...")
    p.add_argument("--on-error", default=None, help="raise (default) | missing (lm-eval or its data unavailable)")
    p.add_argument("--label", type=_json_dict, default={}, help="description stored with the results")
    p.set_defaults(func=_harness)

    p = sub.add_parser("results", help="print the summary table in the terminal")
    p.add_argument("--table", type=Path, default=Path("results/tables/summary.parquet"))
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE", help="e.g. source=teacher")
    p.add_argument("--metric", default=None)
    p.add_argument("--task", default=None)
    p.add_argument("--sort", default=None, help="column to sort by (descending)")
    p.add_argument("--pivot", action="store_true", help="one table per metric: models × tasks and their average")
    p.set_defaults(func=_results)

    p = sub.add_parser("check-config", help="check study config files as `snakemake --configfile` would use them")
    p.add_argument("configfile", type=Path, nargs="*", help="files layered over config/config.yaml, in order")
    p.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parents[1],
                   help="the kdlm checkout whose config/config.yaml and workflow schema apply (default: this one)")
    p.set_defaults(func=_check_config)

    p = sub.add_parser("plan", help="GPU memory of every training job of a study, and the GPUs each gets")
    p.add_argument("--configfile", type=Path, nargs="*", default=[], help="files layered over config/config.yaml")
    p.add_argument("--workflow-profile", type=Path, default=None,
                   help="read the GPUs from this profile's set-resources (e.g. profiles/slurm)")  # fmt: skip
    p.add_argument("--gpu-memory-gb", type=float, default=None,
                   help=f"memory of one GPU (default: the profile's, else {GPU_MEMORY_GB:g})")  # fmt: skip
    p.add_argument("--max-gpus", type=int, default=None, help=f"most GPUs per job (default: the profile's, else {MAX_GPUS})")
    p.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parents[1],
                   help="the kdlm checkout whose config/config.yaml and workflow schema apply (default: this one)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("bench", help="benchmarks that print figures")
    bench.add_arguments(p)
    p.set_defaults(func=_bench)
    return parser


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path that cannot be written before any work is done (a typo must not cost the
    minutes of generation or training that precede the write)."""
    makes_dir = args.verb in ("sft", "distill", "teacher-signal") or getattr(args, "lab_verb", None) in ("tokenizer", "model")
    if getattr(args, "out", None) is not None:
        (check_output_dir if makes_dir else check_output_file)(args.out)
    if getattr(args, "out_dir", None) is not None:
        check_output_dir(args.out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    if not args.verbose:  # its retry warnings would precede the one line that names an unreachable hub id
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        _check_outputs(args)
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as err:  # OSError: missing, unreadable or misplaced paths
        if args.verbose:  # the whole story for a bug report; without -v one line names what is wrong
            traceback.print_exc()
        print(f"kdlm {args.verb}: error: {err}", file=sys.stderr)
        return 2


def run() -> None:
    """The `kdlm` command: `main`, then an exit that skips the interpreter's teardown.

    Tearing down torch and transformers takes about 1.3 s, and every Snakemake job pays it once. By the
    time `main` returns, every output is closed and renamed into place, so after the atexit handlers
    (logging's flush among them) and a flush of stdout and stderr nothing is left to lose. An exception
    that escapes `main` takes the normal path, traceback and all.
    """
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
