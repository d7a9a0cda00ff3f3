"""The arms of a claims study: its evaluation files sorted into the model settings the claims compare.

Every claim is a difference between two arms that share seed and test example, so this module reads
the evaluation files once, keys their per-example scores by (task, seed), and turns any two arms into
the paired seeds × examples grid the bootstrap resamples, refusing (with the file named) when one arm
lacks a seed or an example the other has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kdlm.claims.config import CLAIM_METRICS, ClaimsConfig
from kdlm.evaluation.seed_bootstrap import Grid
from kdlm.report import Evaluation, load_evaluations


@dataclass
class Arm:
    """All evaluations of one model setting (a teacher, or a student run over its seeds) on every task."""

    name: str
    files: dict[tuple[str, int], Path] = field(default_factory=dict)  # (task, seed) -> evaluation file
    scores: dict[tuple[str, int], pd.Series] = field(default_factory=dict)  # (task, seed) -> score by id

    def add(self, task: str, seed: int, path: Path, scores: pd.Series) -> None:
        if (task, seed) in self.files:
            raise ValueError(
                f"{self.name}: two evaluations of task {task!r}, seed {seed}: "
                f"{self.files[(task, seed)]} and {path}"
            )
        if scores.index.has_duplicates:
            dup = scores.index[scores.index.duplicated()].unique()[:3].tolist()
            raise ValueError(f"{path}: repeated example id(s) {dup}")
        self.files[(task, seed)] = path
        self.scores[(task, seed)] = scores

    def tasks(self) -> list[str]:
        return sorted({task for task, _ in self.files})

    def seeds(self, task: str | None = None) -> tuple[int, ...]:
        return tuple(sorted({s for t, s in self.files if task is None or t == task}))

    def mean(self) -> float:
        """Mean score over tasks (each task: mean over seeds and examples)."""
        return float(
            np.mean([np.mean([self.scores[(t, s)].mean() for s in self.seeds(t)]) for t in self.tasks()])
        )


def paired_grid(a: Arm, b: Arm, task: str) -> Grid:
    """a − b on one task, paired by seed and example id.

    Raises:
        ValueError: naming the arm and its missing seeds, or the file and its missing example ids,
            when one arm lacks a seed or an example the other has.
    """
    seeds_a, seeds_b = set(a.seeds(task)), set(b.seeds(task))
    for mine, other, theirs in ((a, b, seeds_b - seeds_a), (b, a, seeds_a - seeds_b)):
        if theirs:
            files = ", ".join(str(other.files[(task, s)]) for s in sorted(theirs))
            raise ValueError(
                f"{mine.name}: no evaluation of seed(s) {sorted(theirs)} on task {task!r}, which "
                f"{other.name} has ({files}); the two are compared seed by seed"
            )
    seeds = sorted(seeds_a)
    if not seeds:
        raise ValueError(f"neither {a.name} nor {b.name} has an evaluation of task {task!r}")
    reference = (a, seeds[0])
    ids = sorted(a.scores[(task, seeds[0])].index)
    rows = []
    for seed in seeds:
        for arm in (a, b):
            _check_ids(arm, task, seed, ids, reference)
        rows.append(
            a.scores[(task, seed)].reindex(ids).to_numpy(float)
            - b.scores[(task, seed)].reindex(ids).to_numpy(float)
        )
    return Grid(np.vstack(rows), tuple(seeds), tuple(ids), task)


def _check_ids(arm: Arm, task: str, seed: int, ids: list[str], reference: tuple[Arm, int]) -> None:
    have = arm.scores[(task, seed)].index
    ref_file = reference[0].files[(task, reference[1])]
    lacking = pd.Index(ids).difference(have)
    extra = have.difference(pd.Index(ids))
    if len(lacking):
        raise ValueError(
            f"{arm.files[(task, seed)]}: lacks {len(lacking)} example id(s) of task {task!r} that "
            f"{ref_file} has, e.g. {lacking[:3].tolist()}; paired arms must answer the same examples"
        )
    if len(extra):
        raise ValueError(
            f"{ref_file}: lacks {len(extra)} example id(s) of task {task!r} that "
            f"{arm.files[(task, seed)]} has, e.g. {extra[:3].tolist()}; paired arms must answer the "
            "same examples"
        )


@dataclass
class Design:
    """The arms of a claims study, keyed ("teacher", name) or (teacher, source, method)."""

    cfg: ClaimsConfig
    arms: dict[tuple, Arm]
    tasks: list[str]
    base: Arm | None = None  # the student before distillation, when evaluated
    ignored: int = 0  # evaluation files outside the claims design

    def teacher(self, name: str) -> Arm:
        return self.arms[("teacher", name)]

    def run(self, teacher: str, source: str, method: str) -> Arm:
        return self.arms[(teacher, source, method)]

    def contrast(self, a: Arm, b: Arm) -> list[Grid]:
        """a − b per task (one setting, tasks stratified)."""
        return [paired_grid(a, b, task) for task in self.tasks]

    def run_seeds(self) -> tuple[int, ...]:
        return tuple(sorted({s for k, arm in self.arms.items() if len(k) == 3 for s in arm.seeds()}))

    def n_examples(self, task: str) -> int:
        arm = self.teacher(self.cfg.large_teacher)
        return len(arm.scores[(task, arm.seeds(task)[0])])


def load_design(eval_paths: Sequence[str | Path], cfg: ClaimsConfig) -> Design:
    """Sort evaluation files into the arms the claims compare.

    Raises:
        ValueError: for an arm without any evaluation (naming it), or a task some arm was not evaluated on.
    """
    column = CLAIM_METRICS[cfg.metric]
    teachers = (cfg.small_teacher, cfg.large_teacher)
    methods = (cfg.baseline, *cfg.lambda_methods())
    arms = {("teacher", t): Arm(f"teacher {t}") for t in teachers}
    for t in teachers:
        for source in cfg.sources:
            for method in methods:
                arms[(t, source, method)] = Arm(f"{cfg.student}__{t}/{source}/{method}")
    base, ignored = Arm(f"base {cfg.student}"), 0
    for path in eval_paths:
        ev: Evaluation = load_evaluations([Path(path)])[0]
        m = ev.meta
        if m["kind"] == "teacher" and m["teacher"] in teachers:
            arm = arms[("teacher", m["teacher"])]
        elif (
            m["kind"] == "run"
            and m["student"] == cfg.student
            and (m["teacher"], m["source"], m["method"]) in arms
        ):
            arm = arms[(m["teacher"], m["source"], m["method"])]
        elif m["kind"] == "base" and m["student"] == cfg.student:
            arm = base
        else:
            ignored += 1
            continue
        scores = pd.Series(ev.table[column].to_numpy(float), index=ev.table["id"].astype(str).to_numpy())
        arm.add(str(m["task"]), int(m["seed"]), Path(path), scores)
    empty = [arm.name for arm in arms.values() if not arm.files]
    if empty:
        raise ValueError(f"the claims need evaluations of {len(empty)} more model setting(s): {empty}")
    tasks = sorted({t for arm in arms.values() for t in arm.tasks()})
    for arm in arms.values():
        if arm.tasks() != tasks:
            raise ValueError(
                f"{arm.name}: no evaluation of task(s) {sorted(set(tasks) - set(arm.tasks()))}; "
                f"the claims average over the tasks {tasks}"
            )
    return Design(cfg, arms, tasks, base if base.files else None, ignored)
