"""TCKD and NCKD (DKD, ATKD) on CPU, fused row by row with numba.

With g the target, b = [p[g], 1 - p[g]] and phat the non-target distribution renormalized,
TCKD = KL(b_t || b_s) and NCKD = KL(phat_t || phat_s) (``reverse``: student and teacher swapped inside
both). Per row, one pass sums the non-target masses and the non-target cross terms, and one pass
writes the gradient of a * TCKD + b * NCKD; the formulas are those of the tensor-op kernel in
:func:`kdlm.losses.decoupled.make_kernel`. The non-target mass is the sum of the non-target
probabilities (no cancellation when p[g] -> 1); where that sum underflows, the row is done in log space
instead (a logsumexp over the non-target log-probabilities, scalar exps: slow, and only for such rows).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from kdlm.losses.threads import SUMS, LogProbs, as_weights, grad_rows, log_parts, run_rows

__all__ = ["decoupled_rows"]


# Each model's log-probabilities come as (z, off) per row: log p = z + off in float64
# (:func:`kdlm.losses.threads.log_parts`); k = off_t - off_s, so that log p_t - log p_s = zt - zs + k.


@njit(nogil=True, cache=True, fastmath=SUMS)
def _masses(zs, zt, k, ps, pt, g):  # pragma: no cover - compiled
    """Off the target: sum p_s, sum p_t, sum p_t (lt - ls), sum p_s (lt - ls), in float64.

    The target's probabilities are set to 0 first (ps and pt are scratch): a sum of the non-target
    entries has no cancellation when p[g] -> 1, where total minus target would.
    """
    ps[g] = 0.0
    pt[g] = 0.0
    ms = 0.0
    mt = 0.0
    xt = 0.0
    xs = 0.0
    for v in range(zs.shape[0]):
        d = (np.float64(zt[v]) - np.float64(zs[v])) + k
        ms += ps[v]
        mt += pt[v]
        xt += pt[v] * d
        xs += ps[v] * d
    return ms, mt, xt, xs


@njit(nogil=True, cache=True)
def _log_mass_off(z, off, g):  # pragma: no cover - compiled
    """log of sum_{v != g} exp(z[v] + off), in log space (for rows whose non-target mass underflows)."""
    top = -np.inf
    for v in range(z.shape[0]):
        if v != g and z[v] > top:
            top = z[v]
    if top == -np.inf:
        return -np.inf
    s = 0.0
    for v in range(z.shape[0]):
        if v != g:
            s += math.exp(np.float64(z[v]) - top)
    return (top + off) + math.log(s)


@njit(nogil=True, cache=True)
def _cross_log(zp, offp, l1p, zs, zt, k, g):  # pragma: no cover - compiled
    """sum_{v != g} phat[v] (lt - ls)[v] with phat = exp(zp + offp - l1p), in log space."""
    s = 0.0
    for v in range(zp.shape[0]):
        if v != g:
            s += math.exp((np.float64(zp[v]) + offp) - l1p) * ((np.float64(zt[v]) - np.float64(zs[v])) + k)
    return s


@njit(nogil=True, cache=True, fastmath=SUMS)
def _grad_vanilla(ps, pt, inv_s, inv_t, cs, ct, g, g_tgt, out):  # pragma: no cover - compiled
    """out = cs phat_s - ct phat_t off the target (phat = p / non-target mass), g_tgt at the target."""
    a = cs * inv_s
    b = ct * inv_t
    for v in range(ps.shape[0]):
        out[v] = a * ps[v] - b * pt[v]
    out[g] = g_tgt


@njit(nogil=True, cache=True, fastmath=SUMS)
def _grad_reverse(zs, zt, ps, inv_s, nb, c, g, g_tgt, out):  # pragma: no cover - compiled
    """out = phat_s (c - nb (zt - zs)) off the target, g_tgt at the target (c takes in nb k)."""
    for v in range(ps.shape[0]):
        out[v] = (ps[v] * inv_s) * (c - nb * (zt[v] - zs[v]))
    out[g] = g_tgt


@njit(nogil=True, cache=True)
def _grad_log(zs, os, zt, ot, l1s, l1t, cs, ct, nb, c, reverse, g, g_tgt, out):  # pragma: no cover - compiled
    """Both gradients with phat from log space (rows whose non-target mass underflows)."""
    for v in range(zs.shape[0]):
        ls = np.float64(zs[v]) + os
        lt = np.float64(zt[v]) + ot
        hs = math.exp(ls - l1s)
        if reverse:
            out[v] = hs * (c - nb * (lt - ls))
        else:
            out[v] = cs * hs - ct * math.exp(lt - l1t)
    out[g] = g_tgt


@njit(nogil=True, cache=True)
def _decoupled_range(zs, os, zt, ot, ps, pt, target, wa, wb, reverse, tiny, want_grad, out, terms, lo, hi):  # pragma: no cover
    """Rows lo..hi-1: terms[i] = (TCKD, NCKD); out[i] = gradient of wa TCKD + wb NCKD."""
    for i in range(lo, hi):
        g = target[i]
        k = ot[i] - os[i]
        lgs, lgt = np.float64(zs[i, g]) + os[i], np.float64(zt[i, g]) + ot[i]
        pgs, pgt = math.exp(lgs), math.exp(lgt)
        ms, mt, xt, xs = _masses(zs[i], zt[i], k, ps[i], pt[i], g)
        exact = ms >= tiny and mt >= tiny
        if exact:
            l1s, l1t = math.log(ms), math.log(mt)
            cross_t, cross_s = xt / mt, xs / ms  # sum phat_t (lt - ls), sum phat_s (lt - ls) off target
        else:
            l1s = math.log(ms) if ms >= tiny else _log_mass_off(zs[i], os[i], g)
            l1t = math.log(mt) if mt >= tiny else _log_mass_off(zt[i], ot[i], g)
            cross_t = _cross_log(zt[i], ot[i], l1t, zs[i], zt[i], k, g)
            cross_s = _cross_log(zs[i], os[i], l1s, zs[i], zt[i], k, g)
        if not reverse:
            tckd = pgt * (lgt - lgs) + math.exp(l1t) * (l1t - l1s)
            nckd = cross_t - l1t + l1s
        else:
            tckd = pgs * (lgs - lgt) + math.exp(l1s) * (l1s - l1t)
            nckd = -cross_s - l1s + l1t
        terms[i, 0] = tckd
        terms[i, 1] = nckd
        if not want_grad:
            continue
        a, b = wa[i], wb[i]
        if not reverse:
            # off target: b (phat_s - phat_t) + a phat_s (p_t[g] - p_s[g]); target: a (p_s[g] - p_t[g])
            cs, ct, nb_, c = b + a * (pgt - pgs), b, 0.0, 0.0
            g_tgt = a * (pgs - pgt)
        else:
            # off target: phat_s [b (f - NCKD) - a h q (1-q)], f = -(lt - ls) - l1s + l1t, q = p_s[g];
            # target: a h q (1-q), h = (log q - log p_t[g]) - (log(1-q) - log(1-p_t[g]))
            hq = ((lgs - lgt) - (l1s - l1t)) * pgs * math.exp(l1s)
            cs, ct, nb_, c = 0.0, 0.0, b, b * (l1t - l1s - nckd) - a * hq
            g_tgt = a * hq
        if exact and not reverse:
            _grad_vanilla(ps[i], pt[i], 1.0 / ms, 1.0 / mt, cs, ct, g, g_tgt, out[i])
        elif exact:
            _grad_reverse(zs[i], zt[i], ps[i], 1.0 / ms, nb_, c - nb_ * k, g, g_tgt, out[i])
        else:
            _grad_log(zs[i], os[i], zt[i], ot[i], l1s, l1t, cs, ct, nb_, c, reverse, g, g_tgt, out[i])


@njit(nogil=True, cache=True, parallel=True)
def _decoupled_parts(zs, os, zt, ot, ps, pt, target, wa, wb, reverse, tiny, want_grad, out, terms, parts):  # pragma: no cover
    n = ps.shape[0]
    for k in prange(parts):
        _decoupled_range(zs, os, zt, ot, ps, pt, target, wa, wb, reverse, tiny, want_grad, out, terms,
                         (n * k) // parts, (n * (k + 1)) // parts)  # fmt: skip


def decoupled_rows(ls: LogProbs, lt: LogProbs, ps: torch.Tensor, pt: torch.Tensor, target: torch.Tensor,
                   reverse: bool, w: tuple[torch.Tensor, torch.Tensor] | None,
                   out: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """TCKD and NCKD per token and (if ``w`` is given) the gradient of their weighted sum.

    Args:
        ls, lt: student / teacher log-probabilities, (n, V), or (z, off) with log p = z + off per row
            (:func:`kdlm.losses.threads.log_parts`); ps, pt: (n, V) the probabilities (overwritten: the
            target entries are set to 0). CPU tensors of one float dtype. target: (n,) int64 target ids.
        reverse: swap student and teacher inside both KL terms (ATKD's ``reverse`` setting).
        w: ((n,), (n,)) weights of each token's TCKD and NCKD in the loss, or None (no gradient).
        out: (n, V), the dtype of ``ps``: receives the gradient with respect to the student's scaled logits.

    Returns:
        (n, 2) float64: per token TCKD, NCKD.
    """
    terms = np.empty((ps.shape[0], 2), dtype=np.float64)
    wa, wb = (None, None) if w is None else w
    tiny = float(torch.finfo(ps.dtype).tiny) ** 0.5  # as the tensor-op kernel: below it, log space
    args = (*log_parts(ls), *log_parts(lt), ps.numpy(), pt.numpy(), target.contiguous().numpy(), as_weights(wa),
            as_weights(wb))  # fmt: skip
    run_rows(_decoupled_range, _decoupled_parts, ps.shape[0], *args, bool(reverse), tiny, w is not None,
             grad_rows(out, ps), terms)  # fmt: skip
    return torch.from_numpy(terms)
