"""Benchmarks that print figures: ``kdlm bench losses``, ``kdlm bench generate``, ``kdlm bench train``.

This module is the command line: :func:`add_arguments` registers the three sub-commands and their
options, :func:`run` runs the chosen one. Each benchmark is one module, which says what it measures
and what each figure means:

* :mod:`kdlm.bench.losses`: time and peak extra memory of every KD loss against its straightforward
  version and against the floor;
* :mod:`kdlm.bench.generate`: tokens/s of batched generation against a one-prompt-at-a-time loop;
* :mod:`kdlm.bench.train`: distillation tokens/s of kdlm's trainer against TRL's ``GKDTrainer``;

and :mod:`kdlm.bench.common` holds what they share. The benchmark modules never import this one.

Only the standard library is imported here: ``kdlm``'s parser registers these options on every
``kdlm`` call, and every ``kdlm bench losses`` measurement runs in a fresh process that imports this
package, while a benchmark module imports torch and transformers (seconds). So :func:`run` imports the
chosen benchmark's module, by the name registered with its sub-command.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

DEFAULT_LOSSES_OUT = Path("results/bench/losses.parquet")
DEFAULT_LOSSES_REALISTIC_OUT = Path("results/bench/losses_realistic.parquet")  # `kdlm bench losses --mask realistic`
MASKS = ("all", "realistic")  # `kdlm bench losses --mask`
DEFAULT_TRAIN_OUT = Path("results/bench/train.parquet")
DTYPES = ("bfloat16", "float16", "float32")  # `kdlm bench losses --dtype`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` subcommands (``losses``, ``generate``, ``train``) to ``parser``."""
    sub = parser.add_subparsers(dest="bench_command", required=True, metavar="{losses,generate,train}")

    p = sub.add_parser("losses", help="time and memory of every loss vs its straightforward version")
    p.add_argument("--tokens", type=int, default=1024,
                   help="tokens B*T (default 1024); all counted, or with --mask realistic the batch's positions")  # fmt: skip
    p.add_argument("--vocab", type=int, default=50272, help="vocabulary size V (default 50272, OPT's)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement; the median is kept (>= 3, default 5)")
    p.add_argument("--losses", nargs="+", default=None, metavar="NAME", help="only these losses (default all)")
    p.add_argument("--no-reference", action="store_true", help="skip the straightforward implementations")
    p.add_argument("--mask", default="all", choices=MASKS,
                   help="all: every token counts (default); realistic: a --batch x tokens/batch batch with prompt and "
                        "padding masked (56%% counted), each loss on its (B, T, V) logits and on the (1, N, V) counted rows")  # fmt: skip
    p.add_argument("--batch", type=int, default=4, help="rows of the --mask realistic batch (default 4: 4 x 256 tokens)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"parquet file to write (default {DEFAULT_LOSSES_OUT}, with --mask realistic {DEFAULT_LOSSES_REALISTIC_OUT})")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; on CUDA memory is the allocator's peak")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="logits dtype (default float32)")
    p.add_argument("--chunk-size", type=int, default=None, help="kdlm's chunk_size hparam (default: each loss's default)")
    p.set_defaults(bench_module="kdlm.bench.losses")

    p = sub.add_parser("generate", help="tokens/s of batched generation vs a one-prompt-at-a-time loop")
    p.add_argument("--model", type=Path, default=None, help="model directory (default: build a lab teacher)")
    p.add_argument("--prompts", type=int, default=64, help="lab prompts generated for (default 64)")
    p.add_argument("--batch-size", type=int, default=16, help="kdlm's batch size (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per prompt (default 32)")
    p.add_argument("--template", default="paper", help="prompt template (default paper)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    p.set_defaults(bench_module="kdlm.bench.generate")

    p = sub.add_parser("train", help="distillation tokens/s of kdlm's trainer vs TRL's GKDTrainer")
    p.add_argument("--teacher", type=Path, default=None, help="teacher directory (default: build a lab pair)")
    p.add_argument("--student", type=Path, default=None, help="student directory (default: build a lab pair)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per side (default 20)")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before them (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (default 32, the study's)")
    p.add_argument("--max-length", type=int, default=128, help="max tokens per example (default 128, the study's)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per side, interleaved; the fastest is kept (default 3)")
    p.add_argument("--losses", nargs="+", default=["forward", "atkd"], metavar="NAME",
                   help="kdlm losses to measure (default: forward atkd; forward is always measured)")  # fmt: skip
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate (default 2e-3, the study's)")
    p.add_argument("--template", default="paper", help="prompt template (default paper)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--bf16", action="store_true", help="train in bf16 with the teacher in bf16 (a GPU), as the paper")
    p.add_argument("--lengthen", type=int, default=1,
                   help="repeat each lab input this many times and each answer a quarter as many (long sequences; default 1)")  # fmt: skip
    p.add_argument("--signals", nargs="+", default=["live", "exact", "compact"], metavar="SIGNAL",
                   help="teacher signals per loss: live, exact and compact caches (default: all three)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=64, help="compact signal's k for the timed rows (default 64)")
    p.add_argument("--error-k", type=int, nargs="*", default=[16, 64, 256], metavar="K",
                   help="k values of the compact signal's loss error against exact, every loss (default 16 64 256)")  # fmt: skip
    p.add_argument("--error-batches", type=int, default=2, help="batches the compact signal's error is taken on (default 2)")
    p.add_argument("--no-trl", action="store_true", help="measure kdlm only (TRL is the optional bench extra)")
    p.add_argument("--out", type=Path, default=DEFAULT_TRAIN_OUT, help=f"parquet file to write (default {DEFAULT_TRAIN_OUT})")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    p.set_defaults(bench_module="kdlm.bench.train")


def run(args: argparse.Namespace) -> int:
    """Run the bench subcommand chosen in ``args`` (its module's ``run``); returns the exit status."""
    return importlib.import_module(args.bench_module).run(args)
