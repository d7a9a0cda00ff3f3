"""The `claims` section of a study's config: which models and methods the claims compare, and how.

It lives apart from the analysis so that workflow planning (:mod:`kdlm.config_checks`) can check the
section when a study is planned, before any evaluation exists: it needs only the section's rules, not
the bootstrap, the evaluation files or the plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kdlm.sections import check_range
from kdlm.study import EVAL_METRICS

CLAIM_METRICS = {m.name: m.column for m in EVAL_METRICS if m.scored}  # scores in [0, 1]: points = ×100


@dataclass
class ClaimsConfig:
    """The `claims` section: which models and methods of the study the claims compare, and the bootstrap."""

    student: str
    small_teacher: str
    large_teacher: str
    lambdas: dict[str, float]  # ATKD method name -> its λ; must include `atkd` (the paper's λ = 0.2)
    sources: list[str] = field(default_factory=lambda: ["gt", "teacher"])
    baseline: str = "fkl"  # forward KL, the method ATKD is compared with
    atkd: str = "atkd"  # the ATKD method of C3 (λ = best_lambda)
    best_lambda: float = 0.2  # the weight C4 claims is best
    metric: str = "exact_match"
    n_resamples: int = 2000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("student", "small_teacher", "large_teacher", "baseline", "atkd"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.small_teacher == self.large_teacher:
            raise ValueError(f"small_teacher and large_teacher must differ, both are {self.small_teacher!r}")
        if not self.sources or len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources must be a non-empty list without repeats, got {self.sources}")
        if self.atkd not in self.lambdas:
            raise ValueError(
                f"lambdas must include the ATKD method {self.atkd!r}, got {sorted(self.lambdas)}"
            )
        if self.baseline in self.lambdas:
            raise ValueError(f"baseline {self.baseline!r} cannot also be an ATKD method of lambdas")
        if len(self.lambdas) < 2:
            raise ValueError(f"lambdas needs at least two ATKD methods to compare λ (C4), got {self.lambdas}")
        for method, lam in self.lambdas.items():
            if isinstance(lam, bool) or not isinstance(lam, int | float):
                raise ValueError(f"lambdas.{method} must be a number, got {lam!r}")
            check_range(f"lambdas.{method}", lam, minimum=0.0, maximum=1.0)
        if len(set(self.lambdas.values())) != len(self.lambdas):
            raise ValueError(f"lambdas must give each method a different λ, got {self.lambdas}")
        check_range("best_lambda", self.best_lambda, minimum=0.0, maximum=1.0)
        if not math.isclose(self.lambdas[self.atkd], self.best_lambda):
            raise ValueError(
                f"lambdas.{self.atkd} is {self.lambdas[self.atkd]}, but C3's ATKD method must run "
                f"at best_lambda = {self.best_lambda}"
            )
        if self.metric not in CLAIM_METRICS:
            raise ValueError(f"metric must be one of {sorted(CLAIM_METRICS)}, got {self.metric!r}")
        check_range("n_resamples", self.n_resamples, minimum=100)
        check_range("level", self.level, above=0.0, below=1.0)
        check_range("seed", self.seed, minimum=0)

    def lambda_methods(self) -> list[str]:
        """The ATKD methods by increasing λ."""
        return sorted(self.lambdas, key=self.lambdas.get)
