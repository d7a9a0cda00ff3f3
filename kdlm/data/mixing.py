"""Training data per sample source: the parquet the trainer reads for one (teacher, source).

Offline sources are complete here. On-policy sources mark rows `online` so the trainer knows which
responses it must generate with the current student (DESIGN.md).
"""

from __future__ import annotations

from pathlib import Path

OFFLINE_SOURCES = ("gt", "teacher")
SOURCES = OFFLINE_SOURCES  # on-policy sources (student, mix_*) arrive with the on-policy trainer


def mix(records_path: Path, out: Path, source: str, template: str = "paper", generated_path: Path | None = None) -> int:
    """Write the mixed-data parquet for `source`; returns its row count.

    Raises:
        ValueError: for an unknown source, a missing teacher file, or teacher rows that do not cover
            the records.
    """
    import pandas as pd

    from kdlm.data.templates import format_prompt
    from kdlm.schemas import GENERATED, MIXED, RECORDS, read_table, write_table

    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; allowed: {list(SOURCES)}")
    records = read_table(records_path, RECORDS)
    prompts = [format_prompt(r.instruction, r.input, template) for r in records.itertuples()]
    if source == "gt":
        df = pd.DataFrame({"id": records["id"], "prompt": prompts, "response": records["output"], "origin": "gt"})
    else:
        if generated_path is None:
            raise ValueError("source 'teacher' needs the teacher's generated responses (--generated)")
        generated = read_table(generated_path, GENERATED).set_index("id")
        missing = sorted(set(records["id"]) - set(generated.index))
        if missing:
            raise ValueError(
                f"{generated_path}: no teacher response for {len(missing)} record(s) of {records_path}, "
                f"e.g. id {missing[0]!r}"
            )
        df = pd.DataFrame(
            {
                "id": records["id"],
                "prompt": prompts,
                "response": generated.loc[records["id"], "response"].values,
                "origin": "teacher",
            }
        )
    df["online"] = False
    write_table(df, out, MIXED)
    return len(df)
