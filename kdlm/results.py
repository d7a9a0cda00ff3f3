"""`kdlm results`: the summary table in the terminal, filtered and sorted, for a quick look.

Made to be read in an 80-column terminal or a pipe: a run is shown by the parts that tell it apart
(student, teacher, source, method, seed, each its own column), and a column whose value is the same
in every shown row moves to the caption instead of taking width. `--pivot` shows one metric as
models × tasks, as the paper's tables do.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from kdlm.schemas import SUMMARY, read_table

ID_COLUMNS = ("student", "teacher", "source", "method", "seed")
NUMBER_COLUMNS = ("value", "95% CI", "n")


def _choose(df: pd.DataFrame, whole: pd.DataFrame, field: str, value: str, what: str) -> pd.DataFrame:
    """Rows of `df` whose `field` equals `value`; a value the `whole` table does not have is an error
    listing those it has (a typo must not look like an empty result).

    Raises:
        ValueError: naming the value and the choices.
    """
    known = set(whole[field].astype(str))
    if value not in known:
        raise ValueError(f"unknown {what} {value!r}; this table has: {sorted(known - {''})}")
    return df[df[field].astype(str) == value]


def _display(df: pd.DataFrame) -> pd.DataFrame:
    """The identifying columns as shown: reference models (teacher, untrained student) carry their kind
    as the method, since they have no source or method of their own."""
    shown = df.copy()
    reference = shown["kind"] != "run"
    shown.loc[reference, "method"] = "(" + shown.loc[reference, "kind"] + ")"
    shown.loc[reference, "source"] = "–"
    shown["seed"] = shown["seed"].astype(str)
    shown.loc[reference, "seed"] = "–"
    return shown


def _split_constant(df: pd.DataFrame, columns: list[str]) -> tuple[list[str], list[str]]:
    """(columns that vary, "name value" of those that do not) over `df`'s rows; blanks and "–" do not vary."""
    varying, constant = [], []
    for column in columns:
        values = set(df[column].astype(str)) - {"", "–"}
        if len(values) <= 1 and len(df) > 1:
            if values:
                constant.append(f"{column}={values.pop()}")
        else:
            varying.append(column)
    return varying, constant


def _long_table(df: pd.DataFrame, title: str) -> Table:
    shown = _display(df)
    shown["95% CI"] = [f"{lo:.3f}–{hi:.3f}" for lo, hi in zip(shown["ci_low"], shown["ci_high"], strict=True)]
    shown["value"] = [f"{v:.3f}" for v in shown["value"]]
    shown["n"] = shown["n"].astype(str)
    varying, constant = _split_constant(shown, [*ID_COLUMNS, "task", "metric", "n"])
    columns = [c for c in [*ID_COLUMNS, "task", "metric"] if c in varying] + ["value", "95% CI"] + ["n"] * ("n" in varying)
    table = Table(title=title, caption=" · ".join(constant) or None, title_justify="left", caption_justify="left")
    for column in columns:
        numeric = column in NUMBER_COLUMNS
        table.add_column(column, justify="right" if numeric else "left", no_wrap=numeric, overflow="fold")
    for row in shown[columns].itertuples(index=False):
        table.add_row(*map(str, row))
    return table


def _pivot_table(df: pd.DataFrame, metric: str, title: str) -> Table:
    """One metric as models (rows) × tasks (columns) plus their average."""
    shown = _display(df[df["metric"] == metric])
    tasks = sorted(shown["task"].unique())
    varying, constant = _split_constant(shown, list(ID_COLUMNS))
    keys = [c for c in ID_COLUMNS if c in varying] or ["method"]
    table = Table(title=f"{title}: {metric}", caption=" · ".join(constant) or None, title_justify="left",
                  caption_justify="left")  # fmt: skip
    for column in keys:
        table.add_column(column, overflow="fold")
    for column in [*tasks, "average"]:
        table.add_column(column, justify="right", no_wrap=True)
    for key, group in shown.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        by_task = dict(zip(group["task"], group["value"], strict=True))
        cells = [f"{by_task[t]:.3f}" if t in by_task else "–" for t in tasks]
        table.add_row(*map(str, key), *cells, f"{group['value'].mean():.3f}")
    return table


def show_results(
    table: Path,
    filters: list[str],
    metric: str | None,
    task: str | None,
    sort: str | None,
    pivot: bool = False,
    console: Console | None = None,
) -> int:
    """Print the long-form summary as a table that fits the terminal (or, with `pivot`, one metric's
    models × tasks).

    Raises:
        ValueError: for a malformed filter, an unknown column, or a metric, task or filter value the
            table does not have (naming the choices).
    """

    df = whole = read_table(table, SUMMARY)
    for expression in filters:
        field, sep, value = expression.partition("=")
        if not sep:
            raise ValueError(f"filter {expression!r} must look like FIELD=VALUE")
        if field not in df.columns:
            raise ValueError(f"unknown filter field {field!r}; allowed: {list(df.columns)}")
        df = _choose(df, whole, field, value, f"{field} value")
    if metric:
        df = _choose(df, whole, "metric", metric, "metric")
    if task:
        df = _choose(df, whole, "task", task, "task")
    if sort:
        if sort not in df.columns:
            raise ValueError(f"unknown sort column {sort!r}; allowed: {list(df.columns)}")
        df = df.sort_values(sort, ascending=False, kind="stable")
    console = console or Console()
    if pivot:
        metrics = list(dict.fromkeys(df["metric"]))
        for name in metrics:
            console.print(_pivot_table(df, name, str(table)))
    else:
        console.print(_long_table(df, f"{table} ({len(df)} rows)"))
    return 0
