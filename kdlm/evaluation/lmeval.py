"""`kdlm harness`: the paper's knowledge benchmarks (MMLU, BBH, DROP) through EleutherAI's lm-eval.

lm-eval is an optional extra (`pip install -e .[lmeval]`) and its data sets come from the Hugging Face
hub, which many machines cannot reach. Either failure stops the command with a message saying which and
what to do; with `on_error="missing"` it instead writes the tasks as missing (status + error) so that
the workflow's report shows an empty cell rather than failing as a whole.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kdlm.io import atomic_path

log = logging.getLogger(__name__)

# the number the paper reports for each benchmark (lm-eval metric name, before its ",<filter>" suffix)
PRIMARY_METRIC = {"mmlu": "acc", "bbh": "exact_match", "drop": "f1"}
COLUMNS = ["task", "metric", "filter", "value", "stderr", "status", "error"]
ON_ERROR = ("raise", "missing")


class HarnessUnavailable(RuntimeError):
    """lm-eval is not installed, or it could not load a task's data."""


@dataclass
class HarnessConfig:
    """What lm-eval runs on one model directory."""

    tasks: list[str] = field(default_factory=lambda: ["mmlu", "bbh", "drop"])
    num_fewshot: int | None = None  # None: each task's default
    batch_size: int = 8
    limit: int | None = None  # examples per task (a quick look); None: all
    device: str = "cpu"
    on_error: str = "raise"  # raise | missing (write the tasks as missing and succeed)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if not self.tasks:
            raise ValueError("tasks must name at least one lm-eval task")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def _run(model_dir: str, cfg: HarnessConfig) -> dict:
    try:
        import lm_eval
    except ImportError as err:
        raise HarnessUnavailable(
            "lm-eval is not installed; install the optional extra: pip install -e '.[lmeval]'"
        ) from err
    try:
        return lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={model_dir},dtype=float32" if cfg.device == "cpu" else f"pretrained={model_dir}",
            tasks=list(cfg.tasks),
            num_fewshot=cfg.num_fewshot,
            batch_size=cfg.batch_size,
            limit=cfg.limit,
            device=cfg.device,
        )
    except (OSError, ConnectionError, ValueError, KeyError) as err:  # hub unreachable, unknown task, ...
        raise HarnessUnavailable(
            f"lm-eval could not run tasks {list(cfg.tasks)} on {model_dir}: {type(err).__name__}: {err}. "
            "Its data sets are fetched from the Hugging Face hub: run where the hub is reachable or the "
            "data sets are in the HF cache (HF_DATASETS_OFFLINE=1 uses the cache only)."
        ) from err


def results_table(output: dict):
    """Long table of lm-eval's `results` (and `groups`): one row per task × metric × filter."""

    rows = []
    sections = {**output.get("results", {}), **output.get("groups", {})}
    for task, metrics in sections.items():
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if name.endswith("_stderr") or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            stderr = metrics.get(f"{name}_stderr,{filt}")
            rows.append({"task": task, "metric": name, "filter": filt, "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, int | float) else float("nan"),
                         "status": "ok", "error": ""})  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def evaluate_harness(model_dir: str, out: Path, cfg: HarnessConfig, label: dict | None = None):
    """Run lm-eval on `model_dir` and write `out` (parquet, COLUMNS; `label` in its metadata).

    Raises:
        HarnessUnavailable: lm-eval missing or a data set unreachable, unless `cfg.on_error == "missing"`.
    """

    try:
        table = results_table(_run(model_dir, cfg))
    except HarnessUnavailable as err:
        if cfg.on_error == "raise":
            raise
        log.warning("%s; writing the tasks as missing", err)
        table = pd.DataFrame([{"task": t, "metric": PRIMARY_METRIC.get(t, ""), "filter": "", "value": float("nan"),
                               "stderr": float("nan"), "status": "missing", "error": str(err)} for t in cfg.tasks],
                             columns=COLUMNS)  # fmt: skip


    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), "kdlm": json.dumps(label or {})})
    with atomic_path(out) as tmp:
        pq.write_table(arrow, tmp)
    return table


def primary_scores(table, tasks: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """(value, stderr) of each requested task's headline metric (NaN where missing)."""
    result = {}
    for task in tasks or list(dict.fromkeys(table["task"])):
        rows = table[(table["task"] == task) & (table["metric"] == PRIMARY_METRIC.get(task, ""))]
        if rows.empty:
            rows = table[table["task"] == task]
        result[task] = (float(rows["value"].iloc[0]), float(rows["stderr"].iloc[0])) if len(rows) else (
            float("nan"), float("nan"))  # fmt: skip
    return result
