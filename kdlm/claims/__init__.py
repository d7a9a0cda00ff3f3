"""The ATKD paper's claims, each tested on a claims study with 95% intervals and a plain verdict.

"Revisiting Knowledge Distillation for Autoregressive Language Models" (ACL 2024) makes four claims a
lab study can test: a larger teacher does not always give a better student (C1); the gap traces to
easy vs hard tokens, i.e. to the teacher's uncertainty (C2); ATKD beats forward KL (C3); λ = 0.2 is the
best weight (C4). Every piece of evidence is a difference between two arms that share seed and test
example, with a percentile bootstrap interval that resamples both sources of noise of a KD study: the
test examples (which questions were drawn) and the seeds (which training run was drawn). A fixed rule
per claim then turns the intervals into "supported", "contradicted" or "inconclusive", so a reader does
not have to judge overlapping error bars, and one plain sentence says what that means.

Teacher uncertainty (C2) comes from parquet files of 1 − p_teacher(target) at every counted response
token of a training file (:func:`write_uncertainty`), written by `kdlm uncertainty`.

Modules: :mod:`~kdlm.claims.config` (the `claims` section), :mod:`~kdlm.claims.bootstrap` (seeds ×
examples intervals), :mod:`~kdlm.claims.design` (evaluation files sorted into arms),
:mod:`~kdlm.claims.uncertainty` (teacher uncertainty files and plot), :mod:`~kdlm.claims.verdicts`
(the rules) and :mod:`~kdlm.claims.report` (claims.md).
"""

from kdlm.claims.config import ClaimsConfig
from kdlm.claims.design import load_design
from kdlm.claims.report import compute_claims, write_claims
from kdlm.claims.uncertainty import (
    plot_uncertainty,
    read_uncertainty,
    uncertainty_difference,
    write_uncertainty,
)
from kdlm.claims.verdicts import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    c1_verdict,
    c2_verdict,
    c3_verdict,
    c4_verdict,
    verdict,
)
from kdlm.evaluation.seed_bootstrap import (
    Grid,
    Interval,
    contrast_bootstrap,
    pooled_bootstrap,
    seed_example_bootstrap,
)

__all__ = [
    "CONTRADICTED",
    "INCONCLUSIVE",
    "SUPPORTED",
    "ClaimsConfig",
    "Grid",
    "Interval",
    "c1_verdict",
    "c2_verdict",
    "c3_verdict",
    "c4_verdict",
    "compute_claims",
    "contrast_bootstrap",
    "load_design",
    "plot_uncertainty",
    "pooled_bootstrap",
    "read_uncertainty",
    "seed_example_bootstrap",
    "uncertainty_difference",
    "verdict",
    "write_claims",
    "write_uncertainty",
]
