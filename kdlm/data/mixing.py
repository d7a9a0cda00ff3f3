"""Training data per sample source: the parquet the trainer reads for one (teacher, source).

The paper compares where the training responses come from (the sources are defined in kdlm.study;
docs/design.md, "The study model"). Each source is one
parquet of the MIXED contract (id, prompt, response, origin, online) plus provenance columns
(`source`, `ratio`, `seed`). `online` tells the trainer which rows it must answer on-policy with the
current student; `response` then holds the off-policy answer, kept for reference. What each
source's rows look like:

| source                | response         | origin  | online                                   |
|-----------------------|------------------|---------|------------------------------------------|
| `gt`                  | ground truth     | gt      | never                                    |
| `teacher`             | teacher's answer | teacher | never                                    |
| `student`             | ground truth     | gt      | every row                                |
| `mix_token`           | teacher's answer | teacher | every row: the trainer generates each     |
|                       |                  |         | token from the student with probability   |
|                       |                  |         | `ratio`, else from the teacher            |
| `mix_request_teacher` | teacher's answer | teacher | a `ratio` share of rows, the rest train   |
|                       |                  |         | on the teacher's answer                   |
| `mix_request_gt`      | ground truth     | gt      | a `ratio` share of rows, the rest train   |
|                       |                  |         | on the ground truth                       |

The `ratio` column is the on-policy share of each row's source: 0 for `gt`/`teacher`, 1 for
`student`, the configured ratio (default 0.5, the paper's) for the mixes. For `mix_request_*` exactly
round(ratio·N) rows are online: those whose hash of (seed, id) ranks lowest, so the choice is
deterministic, independent of the records' order, and changes with the seed.

Records the teacher skipped as over-long (`kdlm generate` with overlong=skip, listed in the generated
file's metadata) are left out of the sources that need teacher answers.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdlm.data.templates import DEFAULT_TEMPLATE, format_prompt
from kdlm.schemas import GENERATED, MIXED, RECORDS, read_metadata, read_table, write_table
from kdlm.study import ONLINE_ALL, ONLINE_NEVER, ONLINE_TOKENS, SOURCES, Source

log = logging.getLogger(__name__)


@dataclass
class MixConfig:
    """Which source to build and how its on-policy share is drawn."""

    source: str
    ratio: float = 0.5  # mix_*: probability a token (mix_token) or a request (mix_request_*) is the student's
    seed: int = 0  # draws the online rows of mix_request_*
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; allowed: {list(SOURCES)}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"mix ratio must be in [0, 1], got {self.ratio}")

    @property
    def online_share(self) -> float:
        """The `ratio` provenance column: the share of on-policy data in this source."""
        return SOURCES[self.source].online_share(self.ratio)


def _draw(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode()).digest()[:8], "little")


def online_rows(ids: list[str], ratio: float, seed: int) -> list[bool]:
    """Exactly round(ratio·N) rows marked True: the ones whose (seed, id) hash ranks lowest."""
    k = round(ratio * len(ids))
    chosen = set(sorted(ids, key=lambda i: (_draw(seed, i), i))[:k])
    return [i in chosen for i in ids]


def _teacher_responses(generated_path: Path | None, records, prompts: list[str]):
    """(kept records mask, teacher responses of the kept records), checked against the records."""
    if generated_path is None:
        needing = [s.name for s in SOURCES.values() if s.needs_teacher_answers]
        raise ValueError(f"sources {needing} need the teacher's generated responses (--generated)")
    generated = read_table(generated_path, GENERATED).set_index("id")
    skipped = set(read_metadata(generated_path).get("overlong", {}).get("skipped_ids", []))
    keep = [i not in skipped for i in records["id"]]
    wanted = [i for i, k in zip(records["id"], keep, strict=True) if k]
    missing = [i for i in wanted if i not in generated.index]
    if missing:
        raise ValueError(
            f"{generated_path}: no teacher response for {len(missing)} record(s), e.g. id {missing[0]!r}"
        )
    for i, prompt, k in zip(records["id"], prompts, keep, strict=True):
        if k and generated.at[i, "prompt"] != prompt:
            raise ValueError(
                f"{generated_path}: id {i!r}: the teacher answered a different prompt (another prompt "
                "template?); regenerate with the template used here"
            )
    if skipped:
        log.warning("%s: %d record(s) the teacher skipped as over-long are left out", generated_path, len(skipped))
    return keep, generated.loc[wanted, "response"].tolist()


def mix(
    records_path: Path,
    out: Path,
    source: str | MixConfig,
    template: str = DEFAULT_TEMPLATE,
    generated_path: Path | None = None,
) -> int:
    """Write the mixed-data parquet for one source (see the module docstring); returns its row count.

    `source` is a source name (ratio 0.5, seed 0, `template`) or a full `MixConfig`.

    Raises:
        ValueError: for an unknown source or a ratio out of range, a missing teacher file, teacher rows
            that do not cover the records, or teacher prompts made with another template.
    """
    cfg = source if isinstance(source, MixConfig) else MixConfig(source=source, template=template)
    records = read_table(records_path, RECORDS)
    prompts = [format_prompt(r.instruction, r.input, cfg.template) for r in records.itertuples()]
    spec: Source = SOURCES[cfg.source]
    if spec.needs_teacher_answers:
        keep, responses = _teacher_responses(generated_path, records, prompts)
        records = records[keep].reset_index(drop=True)
        prompts = [p for p, k in zip(prompts, keep, strict=True) if k]
        origin = "teacher"
    else:
        responses, origin = records["output"].tolist(), "gt"
    ids = records["id"].tolist()
    if spec.online == ONLINE_NEVER:
        online = [False] * len(ids)
    elif spec.online in (ONLINE_ALL, ONLINE_TOKENS):
        online = [True] * len(ids)
    else:
        online = online_rows(ids, cfg.ratio, cfg.seed)
    df = pd.DataFrame({"id": ids, "prompt": prompts, "response": responses, "origin": origin, "online": online})
    df["source"] = cfg.source
    df["ratio"] = float(cfg.online_share)
    df["seed"] = int(cfg.seed)
    metadata = {"source": cfg.source, "ratio": cfg.online_share, "seed": cfg.seed, "template": cfg.template,
                "records": str(records_path), "generated": str(generated_path) if generated_path else None,
                "n_online": int(sum(online))}  # fmt: skip
    write_table(df, out, MIXED, extra_columns=True, metadata=metadata)
    return len(df)
