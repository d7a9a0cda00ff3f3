"""KL to a mixture (generalized JSD, skew KL, skew reverse KL) on CPU, fused row by row with numba.

With m a mixture of the two distributions, ``gjsd`` is beta KL(p_t||m) + (1-beta) KL(p_s||m) with
m = beta p_t + (1-beta) p_s (GKD), ``skl`` is KL(p_t||m) with m = alpha p_t + (1-alpha) p_s and ``srkl``
KL(p_s||m) with m = (1-alpha) p_t + alpha p_s (DistiLLM). torch takes log m (one lerp and one log, log
space where m underflows: :func:`kdlm.losses.skew.log_mix_p`); per row, one pass makes the sums and one
the gradient, the formulas of the tensor-op kernels in :mod:`kdlm.losses.skew`. The log-probabilities
are read off the chunk's scaled logits and one number per row (no pass of the engine stores them). The ratios p_t / m and
p_s / m that the skew gradients need are taken from the probabilities (m > 0 wherever p_s is not 0;
where m is 0, p_s is 0 and the entry's gradient is 0).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from kdlm.losses.threads import SUMS, LogProbs, as_weights, grad_rows, log_parts, run_rows

__all__ = ["GJSD", "SKL", "SRKL", "skew_rows"]

GJSD, SKL, SRKL = 0, 1, 2


# Each model's log-probabilities come as (z, off) per row: log p = z + off, taken in float64 (the scaled
# logits and minus the row's logsumexp, :meth:`kdlm.losses.engine.Workspace.log_parts`: no pass stores
# them); (ls, 0) when they are stored.


@njit(nogil=True, cache=True, fastmath=SUMS)
def _gjsd_row(zs, os, zt, ot, ps, pt, lm, beta, c, want_grad, out):  # pragma: no cover - compiled
    kt = 0.0
    ks = 0.0
    for v in range(zs.shape[0]):
        lmv = np.float64(lm[v])
        kt += pt[v] * ((np.float64(zt[v]) + ot) - lmv)
        ks += ps[v] * ((np.float64(zs[v]) + os) - lmv)
    if want_grad:  # (1-beta) w p_s (f - KL(p_s||m)), f = log p_s - log m
        k = os - ks
        for v in range(zs.shape[0]):
            out[v] = c * ps[v] * ((np.float64(zs[v]) + k) - lm[v])
    return beta * kt + (1.0 - beta) * ks


@njit(nogil=True, cache=True, fastmath=SUMS)
def _skl_row(zt, ot, ps, pt, lm, alpha, c, want_grad, out):  # pragma: no cover - compiled
    kl = 0.0
    dot = 0.0
    for v in range(zt.shape[0]):
        kl += pt[v] * ((np.float64(zt[v]) + ot) - np.float64(lm[v]))
        m = alpha * pt[v] + (1.0 - alpha) * ps[v]
        dot += ps[v] * (pt[v] / m if m > 0.0 else 0.0)
    if want_grad:  # -(1-alpha) w p_s (r - <p_s, r>), r = p_t / m
        for v in range(zt.shape[0]):
            m = alpha * pt[v] + (1.0 - alpha) * ps[v]
            out[v] = c * ps[v] * ((pt[v] / m if m > 0.0 else 0.0) - dot)
    return kl


@njit(nogil=True, cache=True, fastmath=SUMS)
def _srkl_row(zs, os, ps, pt, lm, alpha, c, want_grad, out):  # pragma: no cover - compiled
    kl = 0.0
    dot = 0.0
    for v in range(zs.shape[0]):
        f = (np.float64(zs[v]) + os) - np.float64(lm[v])
        kl += ps[v] * f
        m = (1.0 - alpha) * pt[v] + alpha * ps[v]
        dot += ps[v] * (f - alpha * (ps[v] / m if m > 0.0 else 0.0))
    if want_grad:  # w p_s (f - <p_s, f>), f = log(p_s / m) - alpha p_s / m
        k = os - dot
        for v in range(zs.shape[0]):
            m = (1.0 - alpha) * pt[v] + alpha * ps[v]
            out[v] = c * ps[v] * (((np.float64(zs[v]) + k) - lm[v]) - alpha * (ps[v] / m if m > 0.0 else 0.0))
    return kl


@njit(nogil=True, cache=True)
def _skew_range(kind, zs, os, zt, ot, ps, pt, lm, a, w, want_grad, out, terms, lo, hi):  # pragma: no cover - compiled
    """Rows lo..hi-1: terms[i] = the divergence; out[i] = gradient of w[i] times it."""
    for i in range(lo, hi):
        wi = w[i] if want_grad else 0.0
        row_out = out[i] if want_grad else out[0]
        if kind == GJSD:
            terms[i] = _gjsd_row(zs[i], os[i], zt[i], ot[i], ps[i], pt[i], lm[i], a, (1.0 - a) * wi, want_grad, row_out)
        elif kind == SKL:
            terms[i] = _skl_row(zt[i], ot[i], ps[i], pt[i], lm[i], a, -(1.0 - a) * wi, want_grad, row_out)
        else:
            terms[i] = _srkl_row(zs[i], os[i], ps[i], pt[i], lm[i], a, wi, want_grad, row_out)


@njit(nogil=True, cache=True, parallel=True)
def _skew_parts(kind, zs, os, zt, ot, ps, pt, lm, a, w, want_grad, out, terms, parts):  # pragma: no cover - compiled
    n = ps.shape[0]
    for k in prange(parts):
        _skew_range(kind, zs, os, zt, ot, ps, pt, lm, a, w, want_grad, out, terms, (n * k) // parts, (n * (k + 1)) // parts)


def skew_rows(kind: int, ls: LogProbs, lt: LogProbs, ps: torch.Tensor, pt: torch.Tensor, lm: torch.Tensor,
              a: float, w: torch.Tensor | None, out: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """The divergence per token and (if ``w`` is given) the gradient of its weighted sum.

    Args:
        kind: GJSD, SKL or SRKL. ls, lt: student / teacher log-probabilities, (n, V), or (z, off) with z
            (n, V) and off (n,): log p = z + off (:meth:`kdlm.losses.engine.Workspace.log_parts`; SKL reads
            only lt, SRKL only ls). ps, pt: (n, V) the probabilities; lm: (n, V) log of the mixture. CPU
            tensors of one float dtype.
        a: beta (GJSD) or alpha (SKL, SRKL). w: (n,) weight of each token in the loss, or None.
        out: (n, V), the dtype of ``ps``: receives the gradient with respect to the student's scaled logits.

    Returns:
        (n,) float64: the divergence per token.
    """
    n = ps.shape[0]
    terms = np.empty(n, dtype=np.float64)
    args = (int(kind), *log_parts(ls), *log_parts(lt), ps.numpy(), pt.numpy(), lm.numpy(), float(a), as_weights(w))
    run_rows(_skew_range, _skew_parts, n, *args, w is not None, grad_rows(out, ps), terms)
    return torch.from_numpy(terms)
