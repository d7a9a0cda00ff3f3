"""The paper's "jsd" and the total variation distance on CPU, fused row by row with numba.

"jsd" is per token w_f KL(p_t||p_s) + w_r KL(p_s||p_t) with fixed weights; element-wise tensor ops need
a dozen passes over the vocabulary for the two KLs and the gradient. Here one compiled function per row
makes two passes over the row's log-probability / probability vectors while they sit in the core's
cache: one for the sums, one for the gradient. torch still takes the log-softmaxes and exps (its
vectorized exp is much faster than numba's scalar one). :func:`row_sums` and :func:`row_grad` serve AKL
too (:mod:`kdlm.losses.akl_rows`), whose per-token loss has the same form with weights per token.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from kdlm.losses.threads import SUMS, LogProbs, as_weights, grad_rows, log_parts, run_rows

__all__ = ["log_diff", "mix_rows", "row_grad", "row_sums", "tvd_rows"]


@njit(nogil=True, cache=True, fastmath=SUMS)
def row_sums(zs, zt, k, ps, pt):  # pragma: no cover - compiled
    """-sum p_t d, sum p_s d, sum |p_t - p_s| with d = log p_s - log p_t = zs - zt + k, accumulated in float64.

    zs, zt: the rows' log-probabilities up to a constant each (the scaled logits, or the log-probabilities
    with k = 0); k: the difference of those constants, float64.
    """
    fkl = 0.0
    rkl = 0.0
    gap = 0.0
    for v in range(zs.shape[0]):
        d = (np.float64(zs[v]) - np.float64(zt[v])) + k
        fkl -= pt[v] * d
        rkl += ps[v] * d
        gap += abs(np.float64(pt[v]) - np.float64(ps[v]))
    return fkl, rkl, gap


@njit(nogil=True, cache=True, fastmath=SUMS)
def row_grad(zs, zt, ps, pt, cr, c1, cf, out):  # pragma: no cover - compiled
    """cf (p_s - p_t) + cr p_s (d - rkl) = p_s (cr (zs - zt) + c1) - cf p_t, c1 = cf - cr (rkl - k)."""
    for v in range(zs.shape[0]):
        out[v] = ps[v] * (cr * (zs[v] - zt[v]) + c1) - cf * pt[v]


@njit(nogil=True, cache=True)
def _mix_range(zs, zt, k, ps, pt, wf, wr, want_grad, out, terms, lo, hi):  # pragma: no cover - compiled
    """Rows lo..hi-1: terms[i] = (forward KL, reverse KL); out[i] = gradient of wf KL_f + wr KL_r."""
    one = ps.dtype.type(1.0)
    for i in range(lo, hi):
        fkl, rkl, _ = row_sums(zs[i], zt[i], k[i], ps[i], pt[i])
        terms[i, 0] = fkl
        terms[i, 1] = rkl
        if want_grad:
            cf, cr = wf[i], wr[i]
            row_grad(zs[i], zt[i], ps[i], pt[i], one * cr, one * (cf - cr * (rkl - k[i])), one * cf, out[i])


@njit(nogil=True, cache=True, fastmath=SUMS)
def _tvd_range(ps, pt, w, want_grad, out, terms, lo, hi):  # pragma: no cover - compiled
    """Rows lo..hi-1: terms[i] = 0.5 sum |p_t - p_s|; out[i] = -0.5 w p_s (sign(p_t - p_s) - <p_s, sign>)."""
    for i in range(lo, hi):
        gap = 0.0
        dot = 0.0
        for v in range(ps.shape[1]):
            e = np.float64(pt[i, v]) - np.float64(ps[i, v])
            gap += abs(e)
            dot += ps[i, v] * np.sign(e)
        terms[i] = 0.5 * gap
        if want_grad:
            c = -0.5 * w[i]
            for v in range(ps.shape[1]):
                out[i, v] = c * ps[i, v] * (np.sign(np.float64(pt[i, v]) - np.float64(ps[i, v])) - dot)


@njit(nogil=True, cache=True, parallel=True)
def _tvd_parts(ps, pt, w, want_grad, out, terms, parts):  # pragma: no cover - compiled
    n = ps.shape[0]
    for k in prange(parts):
        _tvd_range(ps, pt, w, want_grad, out, terms, (n * k) // parts, (n * (k + 1)) // parts)


@njit(nogil=True, cache=True, parallel=True)
def _mix_parts(zs, zt, k, ps, pt, wf, wr, want_grad, out, terms, parts):  # pragma: no cover - compiled
    n = ps.shape[0]
    for j in prange(parts):
        _mix_range(zs, zt, k, ps, pt, wf, wr, want_grad, out, terms, (n * j) // parts, (n * (j + 1)) // parts)


def log_diff(ls: LogProbs, lt: LogProbs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(zs, zt, k) as numpy with log p_s - log p_t = zs - zt + k per row (k (n,) float64)."""
    (zs, os), (zt, ot) = log_parts(ls), log_parts(lt)
    return zs, zt, os - ot


def mix_rows(ls: LogProbs, lt: LogProbs, ps: torch.Tensor, pt: torch.Tensor,
             w: tuple[torch.Tensor, torch.Tensor] | None, out: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """Forward and reverse KL per token and (if ``w`` is given) the gradient of their weighted sum.

    Args:
        ls, lt: student / teacher log-probabilities, (n, V), or (z, off) with log p = z + off per row
            (:func:`kdlm.losses.threads.log_parts`); ps, pt: (n, V) the probabilities. CPU tensors of one
            float dtype.
        w: ((n,), (n,)) weights of each token's forward and reverse KL in the loss, or None.
        out: (n, V), the dtype of ``ls``: receives the gradient with respect to the student's scaled logits.

    Returns:
        (n, 2) float64: per token forward KL, reverse KL.
    """
    terms = np.empty((ps.shape[0], 2), dtype=np.float64)
    wf, wr = (None, None) if w is None else w
    args = (*log_diff(ls, lt), ps.numpy(), pt.numpy(), as_weights(wf), as_weights(wr), w is not None)
    run_rows(_mix_range, _mix_parts, ps.shape[0], *args, grad_rows(out, ps), terms)
    return torch.from_numpy(terms)


def tvd_rows(ps: torch.Tensor, pt: torch.Tensor, w: torch.Tensor | None, out: torch.Tensor | None) -> torch.Tensor:
    """Total variation per token and (if ``w`` is given) the gradient of its weighted sum.

    Args:
        ps, pt: (n, V) student / teacher probabilities, CPU tensors of one float dtype.
        w: (n,) weight of each token in the loss, or None. out: (n, V), the dtype of ``ps``: the gradient
            with respect to the student's scaled logits.

    Returns:
        (n,) float64: 0.5 sum |p_t - p_s| per token.
    """
    terms = np.empty(ps.shape[0], dtype=np.float64)
    run_rows(_tvd_range, _tvd_parts, ps.shape[0], ps.numpy(), pt.numpy(), as_weights(w), w is not None,
             grad_rows(out, ps), terms)  # fmt: skip
    return torch.from_numpy(terms)

