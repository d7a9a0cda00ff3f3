"""`kdlm results`: the summary table in the terminal, filtered and sorted, for a quick look."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from kdlm.schemas import SUMMARY, read_table


def show_results(
    table: Path, filters: list[str], metric: str | None, task: str | None, sort: str | None
) -> int:
    """Print the long-form summary as a rich table.

    Raises:
        ValueError: for a malformed filter or an unknown column.
    """

    df = read_table(table, SUMMARY)
    for expression in filters:
        field, sep, value = expression.partition("=")
        if not sep:
            raise ValueError(f"filter {expression!r} must look like FIELD=VALUE")
        if field not in df.columns:
            raise ValueError(f"unknown filter field {field!r}; allowed: {list(df.columns)}")
        df = df[df[field].astype(str) == value]
    if metric:
        df = df[df["metric"] == metric]
    if task:
        df = df[df["task"] == task]
    if sort:
        if sort not in df.columns:
            raise ValueError(f"unknown sort column {sort!r}; allowed: {list(df.columns)}")
        df = df.sort_values(sort, ascending=False)
    out = Table(title=f"{table} ({len(df)} rows)")
    columns = ["model", "task", "metric", "value", "ci_low", "ci_high", "n"]
    for column in columns:
        out.add_column(column, justify="right" if column in ("value", "ci_low", "ci_high", "n") else "left")
    for row in df.itertuples():
        out.add_row(
            row.model, row.task, row.metric, f"{row.value:.3f}", f"{row.ci_low:.3f}", f"{row.ci_high:.3f}", str(row.n)
        )
    Console().print(out)
    return 0
