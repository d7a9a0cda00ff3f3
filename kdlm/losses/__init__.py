"""Token-level distillation losses for autoregressive LMs: exact, chunked, memory-bounded.

Every loss in :data:`LOSSES` has the signature::

    loss = LOSSES[name](student_logits, teacher_logits, labels, *, stats=None, **hparams)

with ``student_logits`` and ``teacher_logits`` of shape ``(B, T, V)`` aligned with ``labels`` of shape
``(B, T)`` (already shifted: position ``t`` predicts ``labels[:, t]``), ``-100`` (:data:`IGNORE_INDEX`)
marking positions that do not count. The result is a scalar: the mean over counted tokens of a per-token
divergence between the temperature-softened distributions (no ``T**2`` factor, as in the paper's code).
Gradient flows to ``student_logits`` only; the teacher is a constant. A batch with no counted token
gives ``0`` and a zero gradient. Working memory beyond inputs and gradient is O(chunk_size x V).

Logits of ``-inf`` (e.g. padded vocabulary entries) are allowed: they are treated as ``-1e30``
(probability exactly 0, ``0 * log 0 = 0``). A divergence that is mathematically infinite (e.g. reverse
KL where the teacher has ``-inf`` and the student does not) then comes out huge but finite.

``stats``: when a dict is given it is filled with plain Python floats (``n_tokens`` always, plus
per-loss entries, e.g. ``atkd_threshold``, ``atkd_n_easy``, ``atkd_n_hard``, ``atkd_loss_easy``,
``atkd_loss_hard`` for ATKD). :data:`HPARAMS` lists each loss's hyperparameters and
:func:`validate_hparams` checks a method's before training; both live in the torch-free
:mod:`kdlm.methods`.

Papers followed:

- ATKD, the paper this project reproduces: Zhong et al. 2024, "Revisiting Knowledge Distillation for
  Autoregressive Language Models", https://arxiv.org/abs/2402.11890 (code: https://github.com/WHU-ZQH/ATKD)
- DKD: Zhao et al. 2022, "Decoupled Knowledge Distillation", https://arxiv.org/abs/2203.08679
- GKD's generalized JSD: Agarwal et al. 2024, "On-Policy Distillation of Language Models",
  https://arxiv.org/abs/2306.13649
- DistiLLM's skew KL / skew reverse KL: Ko et al. 2024, https://arxiv.org/abs/2402.03898
- AKL: Wu et al. 2024, "Rethinking Kullback-Leibler Divergence in Knowledge Distillation for Large Language
  Models", https://arxiv.org/abs/2404.02657

The package, by family: :mod:`~kdlm.losses.engine` (chunks, the autograd Function, the generic
per-token path), :mod:`~kdlm.losses.kl` (forward, reverse, jsd, tvd), :mod:`~kdlm.losses.skew` (gjsd,
skl, srkl), :mod:`~kdlm.losses.decoupled` (dkd, atkd), :mod:`~kdlm.losses.akl`, :mod:`~kdlm.losses.sft`;
each family's numba CPU row kernels sit beside it (``*_rows``, threads in :mod:`~kdlm.losses.threads`),
and :mod:`~kdlm.losses.reference` holds the straightforward full-tensor versions the tests compare with
(docs/design.md, "Losses").
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from kdlm.losses import akl, decoupled, kl, sft, skew
from kdlm.losses.engine import IGNORE_INDEX, Tensor
from kdlm.methods import HPARAMS, LOSS_NAMES, validate_hparams

__all__ = ["IGNORE_INDEX", "LOSSES", "HPARAMS", "validate_hparams"]

LOSSES: dict[str, Callable[..., Tensor]] = {
    "forward": kl.forward_kl,
    "reverse": kl.reverse_kl,
    "jsd": kl.jsd,
    "gjsd": skew.gjsd,
    "tvd": kl.tvd,
    "skl": skew.skl,
    "srkl": skew.srkl,
    "dkd": decoupled.dkd,
    "atkd": decoupled.atkd,
    "akl": akl.akl,
    "sft": sft.sft,
}
# A loss written as one per-token function (engine.per_token_loss) in a module of its own is found here:
# adding one touches that module and its line in kdlm.methods.HPARAMS (docs/design.md, "Extending kdlm").
_INFRASTRUCTURE = {"engine", "signal", "compact", "threads", "reference", "akl", "decoupled", "kl", "sft", "skew"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name in _INFRASTRUCTURE or _module.name.endswith("_rows"):
        continue
    for _value in vars(importlib.import_module(f"{__name__}.{_module.name}")).values():
        if callable(_value) and getattr(_value, "loss_name", None) and _value.loss_name not in LOSSES:
            LOSSES[_value.loss_name] = _value
if set(LOSSES) != set(LOSS_NAMES):
    raise RuntimeError(f"LOSSES {sorted(LOSSES)} and kdlm.methods.LOSS_NAMES {sorted(LOSS_NAMES)} differ")
