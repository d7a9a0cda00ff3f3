"""The `kdlm evaluate` stage: a model answers an evaluation task's prompts and each answer is scored."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdlm.data.templates import DEFAULT_TEMPLATE, format_prompt
from kdlm.evaluation.metrics import SCORERS
from kdlm.generation import GenerateConfig, generate_responses, prompt_limit
from kdlm.io import check_output_file
from kdlm.models import load_config, load_inference_model, load_tokenizer
from kdlm.schemas import EVAL, RECORDS, read_table, write_table
from kdlm.study import EVAL_METRICS


def evaluate_model(
    model_path: str,
    records_path: Path,
    out: Path,
    cfg: GenerateConfig,
    template: str = DEFAULT_TEMPLATE,
    label: dict | None = None,
) -> dict:
    """Generate with the training prompt template, score ROUGE-L and exact match, write the eval parquet.

    Args:
        label: what was evaluated (kind, model, student, teacher, source, method, seed, task), stored
            in the file so the report needs nothing else.

    Prompts cut from the left to fit the context are counted in the file's metadata
    (`truncated_prompts`), which the report shows.

    Returns:
        Task means, keyed by metric.
    """

    check_output_file(out)  # before minutes of generation, not after
    prompt_limit(load_config(model_path), cfg)  # max_new_tokens against the context, before any weight loads
    records = read_table(records_path, RECORDS)
    tokenizer = load_tokenizer(model_path)
    model = load_inference_model(model_path)
    prompts = [format_prompt(r.instruction, r.input, template) for r in records.itertuples()]
    results = generate_responses(model, tokenizer, prompts, cfg, desc=f"evaluate {Path(model_path).name}")
    predictions = [r["response"] for r in results]
    references = records["output"].tolist()
    df = pd.DataFrame(
        {
            "id": records["id"].values,
            "prompt": prompts,
            "reference": references,
            "prediction": predictions,
            **{m.column: SCORERS[m.name](predictions, references) for m in EVAL_METRICS if m.scored},
            "n_response_tokens": [r["n_response_tokens"] for r in results],
            "finish_reason": [r["finish_reason"] for r in results],
        }
    )
    truncated = sum(r["prompt_truncated"] for r in results)
    write_table(df, out, EVAL, metadata={**(label or {}), "decoding": cfg.describe(), "truncated_prompts": truncated})
    return {m.name: float(df[m.column].mean()) for m in EVAL_METRICS if m.scored}
