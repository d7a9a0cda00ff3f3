"""`kdlm bench generate`: the CLI wiring and one tiny run on the lab teacher (no timing assertions)."""

from __future__ import annotations

import argparse
import json

import pytest

import kdlm.bench as bench


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_are_the_acceptance_setting():
    args = _parse("generate")
    assert (args.model, args.prompts, args.batch_size, args.json) == (None, 64, 16, False)


def test_bench_generate_measures_both_sides_on_the_same_prompts(lab, capsys):
    args = _parse("generate", "--model", str(lab["teacher"]), "--prompts", "6", "--batch-size", "3",
                  "--max-new-tokens", "4", "--json")  # fmt: skip
    assert bench.run(args) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["prompts"] == 6 and figures["batch_size"] == 3
    assert figures["batched_tokens"] == figures["loop_tokens"] > 0, "greedy: both sides make the same tokens"
    assert figures["speedup"] == pytest.approx(figures["batched_tokens_per_s"] / figures["loop_tokens_per_s"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="must be >= 1"):
        bench.run(_parse("generate", "--prompts", "0"))
