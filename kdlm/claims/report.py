"""The claims report: each of the paper's claims tested on a claims study, written as claims.md.

This module ties the others together: it computes the evidence of each claim (paired differences
between the study's arms with their bootstrap intervals), applies the claim's verdict rule, renders
what was run, a summary table and one section per claim as markdown, and writes it, with the teacher
uncertainty plot, atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kdlm.claims.config import ClaimsConfig
from kdlm.claims.design import Arm, Design, load_design
from kdlm.claims.uncertainty import (
    EASY,
    HARD,
    _frac,
    plot_uncertainty,
    read_uncertainty,
    uncertainty_difference,
    uncertainty_stats,
)
from kdlm.claims.verdicts import Judgement, c1_verdict, c2_verdict, c3_verdict, c4_verdict
from kdlm.evaluation.seed_bootstrap import Grid, Interval, contrast_bootstrap
from kdlm.io import atomic_path


@dataclass(frozen=True)
class Evidence:
    """One row of a claim's evidence: a labelled difference with its interval."""

    key: str  # what the judgement refers to it by
    label: str
    interval: Interval
    unit: str = "metric"  # "metric": a score difference (also shown in points); "uncertainty": a probability


@dataclass
class Claim:
    """A claim of the paper with the study's evidence and verdict."""

    key: str
    statement: str
    evidence: list[Evidence]
    judgement: Judgement
    how: str  # how the rule turns the evidence into the verdict

    def headline(self) -> Evidence:
        return next((e for e in self.evidence if e.key == self.judgement.headline), self.evidence[0])


def _boot(cfg: ClaimsConfig, terms: Sequence[tuple[float, Sequence[Grid]]]) -> Interval:
    return contrast_bootstrap(terms, cfg.n_resamples, cfg.level, cfg.seed)


def claim_c1(d: Design) -> Claim:
    cfg = d.cfg
    small, large = cfg.small_teacher, cfg.large_teacher
    gap = _boot(cfg, [(1.0, d.contrast(d.teacher(large), d.teacher(small)))])
    rows = [Evidence("teacher gap", f"teacher {large} − teacher {small}", gap)]
    students = {}
    for source in cfg.sources:
        for method in (cfg.baseline, cfg.atkd):
            key = f"student({large}) − student({small}), source {source}, {method}"
            students[key] = _boot(
                cfg, [(1.0, d.contrast(d.run(large, source, method), d.run(small, source, method)))]
            )
            rows.append(Evidence(key, key, students[key]))
    how = (
        "Untested (inconclusive) unless the teacher gap's interval is above 0; then supported if some "
        "student difference lies entirely below 0, contradicted if every one lies entirely above 0."
    )
    return Claim(
        "C1",
        "A larger teacher does not always give a better student.",
        rows,
        c1_verdict(gap, students, cfg.level),
        how,
    )


def claim_c2(d: Design, uncertainties: Sequence[tuple[dict, pd.DataFrame]]) -> Claim:
    cfg = d.cfg
    small, large = cfg.small_teacher, cfg.large_teacher
    by_key = {(m["teacher"], m["source"]): df for m, df in uncertainties}
    rows, unc = [], {}
    for source in dict.fromkeys(m["source"] for m, _ in uncertainties):
        if (large, source) in by_key and (small, source) in by_key:
            key = f"teacher uncertainty on training tokens, {large} − {small}, source {source}"
            for teacher in (large, small):
                if not len(by_key[(teacher, source)]):
                    raise ValueError(
                        f"the uncertainty file of teacher {teacher!r}, source {source!r} has no tokens"
                    )
            unc[key] = uncertainty_difference(
                by_key[(large, source)], by_key[(small, source)], cfg.n_resamples, cfg.level, cfg.seed
            )
            rows.append(Evidence(key, key, unc[key], unit="uncertainty"))
    terms = []
    for source in cfg.sources:
        w = 1.0 / len(cfg.sources)
        terms.append((w, d.contrast(d.run(large, source, cfg.atkd), d.run(large, source, cfg.baseline))))
        terms.append((-w, d.contrast(d.run(small, source, cfg.atkd), d.run(small, source, cfg.baseline))))
    did = _boot(cfg, terms)
    rows.append(
        Evidence(
            "did",
            f"[{cfg.atkd} − {cfg.baseline}]({large}) − [{cfg.atkd} − {cfg.baseline}]({small}), "
            "mean over sources",
            did,
        )
    )
    how = (
        "Supported if the larger teacher's uncertainty is significantly lower (every source) and ATKD's "
        "gain is significantly larger with it (difference-in-differences > 0); contradicted if that "
        "difference-in-differences is significantly < 0."
    )
    statement = "The gap traces to easy vs hard tokens (the teacher's uncertainty 1 − p_teacher(target))."
    return Claim("C2", statement, rows, c2_verdict(unc, did, cfg.level), how)


def claim_c3(d: Design) -> Claim:
    cfg = d.cfg
    settings, rows = {}, []
    grids = []
    for teacher in (cfg.small_teacher, cfg.large_teacher):
        for source in cfg.sources:
            g = d.contrast(d.run(teacher, source, cfg.atkd), d.run(teacher, source, cfg.baseline))
            key = f"{cfg.atkd} − {cfg.baseline}, teacher {teacher}, source {source}"
            settings[key] = _boot(cfg, [(1.0, g)])
            rows.append(Evidence(key, key, settings[key]))
            grids.append(g)
    pooled = _boot(cfg, [(1.0 / len(grids), g) for g in grids])
    rows.append(Evidence("pooled", f"{cfg.atkd} − {cfg.baseline}, mean over teachers and sources", pooled))
    how = (
        "Supported if the pooled interval is above 0 and no setting's interval is below 0; contradicted "
        "if the pooled interval is below 0."
    )
    statement = "ATKD helps over forward KL across sources (paper: up to +3.04 points on average)."
    return Claim("C3", statement, rows, c3_verdict(pooled, settings, cfg.level), how)


def claim_c4(d: Design) -> Claim:
    cfg = d.cfg
    best = next(m for m, lam in cfg.lambdas.items() if math.isclose(lam, cfg.best_lambda))
    diffs, rows = {}, []
    settings = [(t, s) for t in (cfg.small_teacher, cfg.large_teacher) for s in cfg.sources]
    for method in cfg.lambda_methods():
        if method == best:
            continue
        terms = [
            (1.0 / len(settings), d.contrast(d.run(t, s, best), d.run(t, s, method))) for t, s in settings
        ]
        key = f"λ={cfg.best_lambda:g} − λ={cfg.lambdas[method]:g} ({best} − {method})"
        key += ", mean over teachers and sources"
        diffs[key] = _boot(cfg, terms)
        rows.append(Evidence(key, key, diffs[key]))
    how = "Supported if every difference is above 0; contradicted if any is below 0."
    return Claim(
        "C4", f"λ = {cfg.best_lambda:g} is the best weight.", rows, c4_verdict(diffs, cfg.level), how
    )


def compute_claims(design: Design, uncertainties: Sequence[tuple[dict, pd.DataFrame]] = ()) -> list[Claim]:
    """C1–C4 on a claims study; `uncertainties` are (metadata, table) pairs from :func:`read_uncertainty`
    (files of teachers other than the claims' two are shown in the table and plot, not compared)."""
    seen: dict[tuple[str, str], int] = {}
    for meta, _ in uncertainties:
        key = (meta["teacher"], meta["source"])
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            raise ValueError(f"two uncertainty files of teacher {key[0]!r}, source {key[1]!r}")
    return [claim_c1(design), claim_c2(design, uncertainties), claim_c3(design), claim_c4(design)]


# ------------------------------------------------------------------------------------------ markdown


def _estimate_cell(e: Evidence) -> str:
    iv = e.interval
    if e.unit == "uncertainty":
        return _frac(iv.estimate, signed=True)
    return f"{_frac(iv.estimate, signed=True)} ({100 * iv.estimate:+.2f} pts)"


def _interval_cell(e: Evidence) -> str:
    iv = e.interval
    if e.unit == "uncertainty":
        return f"[{_frac(iv.low, True)}, {_frac(iv.high, True)}]"
    return (
        f"[{_frac(iv.low, True)}, {_frac(iv.high, True)}] ([{100 * iv.low:+.2f}, {100 * iv.high:+.2f}] pts)"
    )


def _side(iv: Interval) -> str:
    return "above 0" if iv.above() else "below 0" if iv.below() else "contains 0"


def _score(arm: Arm, cfg: ClaimsConfig, tasks: list[str]) -> str:
    """Mean score with its interval (seeds × examples, tasks stratified)."""
    grids = []
    for task in tasks:
        seeds = arm.seeds(task)
        ids = sorted(arm.scores[(task, seeds[0])].index)
        grids.append(
            Grid(
                np.vstack([arm.scores[(task, s)].reindex(ids).to_numpy(float) for s in seeds]),
                seeds,
                tuple(ids),
                task,
            )
        )
    iv = contrast_bootstrap([(1.0, grids)], cfg.n_resamples, cfg.level, cfg.seed)
    return f"{_frac(iv.estimate)} [{_frac(iv.low)}, {_frac(iv.high)}]"


def render_claims(
    design: Design,
    claims: list[Claim],
    uncertainties: Sequence[tuple[dict, pd.DataFrame]] = (),
    plot_link: str | None = None,
) -> str:
    """The claims report as markdown: what was run, a summary table, then one section per claim."""
    cfg = design.cfg
    small, large = cfg.small_teacher, cfg.large_teacher
    seeds = design.run_seeds()
    methods = [cfg.baseline, *cfg.lambda_methods()]
    lines = [
        "# The paper's claims, tested in this study",
        "",
        f"Metric: `{cfg.metric}`, a fraction in [0, 1] (3 decimals); differences also in points (×100), "
        "as the paper reports them. Every difference pairs two arms by seed and test example; its "
        f"{cfg.level:.0%} interval is a percentile bootstrap ({cfg.n_resamples} resamples) that draws both "
        "seeds and examples with replacement, tasks stratified. Each interval is read on its own: a rule "
        "that looks at several rows has more than one chance to find one that excludes 0.",
        "",
        "## What was run",
        "",
        f"- student: `{cfg.student}`"
        + (f" (before distillation: {_score(design.base, cfg, design.base.tasks())})" if design.base else ""),
        f"- teachers (evaluated once, seed 0): small `{small}` "
        f"{_score(design.teacher(small), cfg, design.tasks)}; "
        f"large `{large}` {_score(design.teacher(large), cfg, design.tasks)}",
        f"- sources: {', '.join(f'`{s}`' for s in cfg.sources)}",
        f"- methods: `{cfg.baseline}` (forward KL), "
        + ", ".join(f"`{m}` (ATKD λ={cfg.lambdas[m]:g})" for m in cfg.lambda_methods()),
        f"- seeds per student run: {', '.join(map(str, seeds))} ({len(seeds)})",
        "- task(s): " + ", ".join(f"`{t}` ({design.n_examples(t)} examples)" for t in design.tasks),
    ]
    if design.ignored:
        lines.append(f"- {design.ignored} evaluation file(s) outside this design were not used")
    settings = [(t, s) for t in (small, large) for s in cfg.sources]
    lines += [
        "",
        f"Student scores (mean over seeds{' and tasks' if len(design.tasks) > 1 else ''}):",
        "",
        "| method | " + " | ".join(f"{t} / {s}" for t, s in settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_frac(design.run(t, s, m).mean()) for t, s in settings) + " |")
    lines += [
        "",
        "## Summary",
        "",
        f"| claim | evidence | estimate | {cfg.level:.0%} interval | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in claims:
        e = c.headline()
        lines.append(
            f"| {c.key}: {c.statement} | {e.label} | {_estimate_cell(e)} | {_interval_cell(e)} | "
            f"**{c.judgement.verdict}** |"
        )
    for c in claims:
        lines += [
            "",
            f"## {c.key}: {c.statement}",
            "",
            f"| evidence | estimate | {cfg.level:.0%} interval | interval vs 0 |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {e.label} | {_estimate_cell(e)} | {_interval_cell(e)} | {_side(e.interval)} |"
            for e in c.evidence
        ]
        if c.key == "C2":
            lines += _uncertainty_section(uncertainties, (small, large), plot_link)
        lines += ["", f"Rule: {c.how}", "", f"**Verdict: {c.judgement.verdict}.** {c.judgement.sentence}"]
    return "\n".join(lines) + "\n"


def _uncertainty_section(uncertainties, teachers, plot_link: str | None) -> list[str]:
    if not uncertainties:
        return [
            "",
            "No teacher uncertainty files were given: the uncertainty part of this claim is untested.",
        ]
    lines = [
        "",
        "Teacher uncertainty 1 − p_teacher(target) on the training tokens (ATKD splits each batch at "
        "its median: below is easy, above is hard):",
        "",
        f"| teacher | source | tokens | mean | median | < {EASY:g} | < 0.5 | ≥ {HARD:g} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {t: i for i, t in enumerate(teachers)}
    for meta, df in sorted(uncertainties, key=lambda x: (order.get(x[0]["teacher"], 9), x[0]["source"])):
        st = uncertainty_stats(df["uncertainty"])
        lines.append(
            f"| {meta['teacher']} | {meta['source']} | {st['tokens']:,} | {_frac(st['mean'])} | "
            f"{_frac(st['median'])} | {st['easy']:.1%} | {st['half']:.1%} | {st['hard']:.1%} |"
        )
    if plot_link:
        lines += ["", f"![teacher uncertainty on the training tokens]({plot_link})"]
    return lines


# -------------------------------------------------------------------------------------------- write


def write_claims(
    eval_paths: Sequence[str | Path],
    uncertainty_paths: Sequence[str | Path],
    cfg: ClaimsConfig,
    out_md: str | Path,
    plot_png: str | Path | None = None,
) -> Path:
    """Test the claims on a study's evaluation (and uncertainty) files; write claims.md (and the
    uncertainty plot, linked from it by relative path) atomically. Returns the markdown path."""
    out_md = Path(out_md)
    design = load_design(eval_paths, cfg)
    uncertainties = [read_uncertainty(p) for p in uncertainty_paths]
    claims = compute_claims(design, uncertainties)
    link = None
    if plot_png is not None:
        plot_uncertainty(uncertainty_paths, plot_png, teachers=(cfg.small_teacher, cfg.large_teacher))
        link = Path(os.path.relpath(Path(plot_png).resolve(), out_md.resolve().parent)).as_posix()
    with atomic_path(out_md) as tmp:
        tmp.write_text(render_claims(design, claims, uncertainties, link), encoding="utf-8")
    return out_md
