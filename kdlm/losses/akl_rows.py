"""AKL on CPU, fused row by row with numba, with an exact head search that does not sort the row.

AKL (Wu et al. 2024, https://arxiv.org/abs/2404.02657) is per token w_head KL(p_t||p_s) + w_tail
KL(p_s||p_t), the weights from how far the student is from the teacher on the teacher's head tokens,
its top tokens up to cumulative probability mu, against the total gap sum |p_t - p_s|. The head is a
sort, which tensor ops do badly on CPU (a full sort of a 50k-token row costs milliseconds). Here one
compiled function per row makes two passes over the row's four log-probability / probability vectors
while they sit in the core's cache: one for the sums (and the head's candidates), one for the gradient;
the sums and the gradient are those of "jsd" (:mod:`kdlm.losses.kl_rows`).

The head search is exact. Columns are grouped into ``BLOCK`` strided blocks (block b holds columns b,
b + nb, b + 2 nb, ... with nb = V // BLOCK) and each block's maximum taken. The j-th largest probability
is >= the j-th largest block maximum m_j (j distinct blocks each hold an entry >= m_j), so once
m_1 + ... + m_j > mu the head has fewer than j tokens, all >= m_j: only the blocks whose maximum is
>= m_j are scanned, and the entries >= m_j sorted. A row too flat for that bound (the block maxima sum
to <= mu) gets its floor by bisection on the mass above a threshold instead (one pass per step).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from kdlm.losses.kl_rows import log_diff, row_grad, row_sums
from kdlm.losses.threads import SUMS, LogProbs, as_weights, grad_rows, run_rows

__all__ = ["BLOCK", "akl_rows", "head_gap"]

BLOCK = 64  # columns per block of the head search's bound
_BISECT_STEPS = 200  # a bound only: the relative width below stops bisection far earlier
_BISECT_WIDTH = 1e-3
_MARGIN = 1e-9  # a floor needs the mass above it to exceed mu by more than any rounding of the sums


@njit(nogil=True, cache=True, fastmath=True)
def _block_maxima(pt, maxima):  # pragma: no cover - compiled
    """maxima[b] = max over the strided block b, b + nb, ..., b + (BLOCK - 1) nb (nb = V // BLOCK).

    Strided blocks make this one vectorized pass (an element-wise max of BLOCK slices of the row).
    """
    nb = pt.shape[0] // BLOCK
    maxima[:nb] = pt[:nb]
    for r in range(1, BLOCK):
        stripe = pt[r * nb : (r + 1) * nb]
        for b in range(nb):
            x = stripe[b]
            if x > maxima[b]:
                maxima[b] = x
    return nb


@njit(nogil=True, cache=True, fastmath=SUMS)
def _mass_at_least(x, floor):  # pragma: no cover - compiled
    """sum of the entries of x that are >= floor (a select, so that the loop vectorizes)."""
    s = 0.0
    for v in range(x.shape[0]):
        s += np.float64(x[v]) if x[v] >= floor else 0.0
    return s


@njit(nogil=True, cache=True)
def _bisect_floor(x, mu, top):  # pragma: no cover - compiled
    """A floor f within 0.1% below the largest one whose entries of x >= f sum to more than mu.

    x's entries are in [0, top]; the caller has checked that all of x sums to more than mu. The mass
    at lo always exceeds mu, the mass at hi never does; stopping at a relative width keeps the steps
    few (about 10 plus log2(top / f)) while only entries within 0.1% of the threshold are added.
    """
    lo, hi = 0.0, 2.0 * top
    for _ in range(_BISECT_STEPS):
        if hi - lo <= _BISECT_WIDTH * hi:
            break
        mid = 0.5 * (lo + hi)
        if _mass_at_least(x, mid) > mu + _MARGIN:
            lo = mid
        else:
            hi = mid
    return lo


@njit(nogil=True, cache=True)
def _row_head_gap(pt, ps, mu, maxima, cand_val, cand_col):  # pragma: no cover - compiled
    """sum of |p_t - p_s| over the teacher's head (sorted prefix with cumulative mass <= mu, top token always)."""
    V = pt.shape[0]
    nb = _block_maxima(pt, maxima) if V >= 2 * BLOCK else 0
    c = 0
    if nb and _mass_at_least(maxima[:nb], 0.0) > mu + _MARGIN:
        top = 0.0
        for b in range(nb):
            top = max(top, np.float64(maxima[b]))
        floor = _bisect_floor(maxima[:nb], mu, top)  # the head lies within the entries >= floor ...
        picked = np.flatnonzero(maxima[:nb] >= floor)  # ... which lie in these blocks (ascending)
        for r in range(BLOCK):  # stripe by stripe, each stripe's picked columns ascending: column order
            base = r * nb
            for b in picked:
                if pt[base + b] >= floor:
                    cand_val[c] = pt[base + b]
                    cand_col[c] = base + b
                    c += 1
        first = BLOCK * nb  # the columns after the last whole stripe are always looked at
    else:
        first = 0
        if _mass_at_least(pt, 0.0) > mu + _MARGIN:
            top = 0.0
            for v in range(V):
                top = max(top, np.float64(pt[v]))
            floor = _bisect_floor(pt, mu, top)  # too flat (or too short) for the block bound
        else:
            floor = 0.0  # mu covers (almost) all the mass: every entry is a candidate
    for v in range(first, V):
        if pt[v] >= floor:
            cand_val[c] = pt[v]
            cand_col[c] = v
            c += 1
    order = np.argsort(-cand_val[:c], kind="mergesort")  # descending probability; stable: ties by column
    mass = 0.0
    gap = 0.0
    for k in range(c):
        j = order[k]
        mass += np.float64(cand_val[j])
        if mass > mu and k > 0:
            break
        gap += abs(np.float64(cand_val[j]) - np.float64(ps[cand_col[j]]))
    return gap


@njit(nogil=True, cache=True)
def _akl_range(zs, zt, k, ps, pt, w, mu, want_grad, out, terms, lo, hi):  # pragma: no cover - compiled
    """Rows lo..hi-1: terms[i] = (akl, head weight, forward KL, reverse KL, gap, head gap); out[i] = gradient.

    log p_s - log p_t = zs - zt + k per row (:func:`kdlm.losses.kl_rows.row_sums`).
    """
    V = ps.shape[1]
    maxima = np.empty(V // BLOCK + 1, dtype=pt.dtype)
    cand_val = np.empty(V, dtype=pt.dtype)
    cand_col = np.empty(V, dtype=np.int64)
    one = ps.dtype.type(1.0)
    for i in range(lo, hi):
        fkl, rkl, total = row_sums(zs[i], zt[i], k[i], ps[i], pt[i])
        head = _row_head_gap(pt[i], ps[i], mu, maxima, cand_val, cand_col)
        wh, wt = 0.5, 0.5
        if total > 0:
            wh, wt = head / total, (total - head) / total
        terms[i, 0] = wh * fkl + wt * rkl
        terms[i, 1] = wh
        terms[i, 2] = fkl
        terms[i, 3] = rkl
        terms[i, 4] = total
        terms[i, 5] = head
        if want_grad:
            cf, cr = w[i] * wh, w[i] * wt
            row_grad(zs[i], zt[i], ps[i], pt[i], one * cr, one * (cf - cr * (rkl - k[i])), one * cf, out[i])


@njit(nogil=True, cache=True)
def _head_gap_range(pt, ps, mu, gap, lo, hi):  # pragma: no cover - compiled
    V = pt.shape[1]
    maxima = np.empty(V // BLOCK + 1, dtype=pt.dtype)
    cand_val = np.empty(V, dtype=pt.dtype)
    cand_col = np.empty(V, dtype=np.int64)
    for i in range(lo, hi):
        gap[i] = _row_head_gap(pt[i], ps[i], mu, maxima, cand_val, cand_col)


@njit(nogil=True, cache=True, parallel=True)
def _akl_parts(zs, zt, k, ps, pt, w, mu, want_grad, out, terms, parts):  # pragma: no cover - compiled
    n = ps.shape[0]
    for j in prange(parts):
        _akl_range(zs, zt, k, ps, pt, w, mu, want_grad, out, terms, (n * j) // parts, (n * (j + 1)) // parts)


@njit(nogil=True, cache=True, parallel=True)
def _head_gap_parts(pt, ps, mu, gap, parts):  # pragma: no cover - compiled
    n = pt.shape[0]
    for k in prange(parts):
        _head_gap_range(pt, ps, mu, gap, (n * k) // parts, (n * (k + 1)) // parts)


def akl_rows(ls: LogProbs, lt: LogProbs, ps: torch.Tensor, pt: torch.Tensor, mu: float,
             w: torch.Tensor | None, out: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """AKL's per-token terms and (if ``w`` is given) its gradient, for one chunk of rows.

    Args:
        ls, lt: student / teacher log-probabilities, (n, V), or (z, off) with log p = z + off per row
            (:func:`kdlm.losses.threads.log_parts`); ps, pt: (n, V) the probabilities. CPU tensors of one
            float dtype.
        mu: head mass. w: (n,) weight of each token's AKL in the loss, or None (no gradient).
        out: (n, V), the dtype of ``ls``: receives the gradient of sum_i w_i AKL_i with respect to the
            student's scaled logits (the weights are constants, as in Wu et al.'s code).

    Returns:
        (n, 6) float64: per token AKL, head weight, forward KL, reverse KL, total gap, head gap.
    """
    terms = np.empty((ps.shape[0], 6), dtype=np.float64)
    args = (*log_diff(ls, lt), ps.numpy(), pt.numpy(), as_weights(w), float(mu), w is not None, grad_rows(out, ps))
    run_rows(_akl_range, _akl_parts, ps.shape[0], *args, terms)
    return torch.from_numpy(terms)


def head_gap(pt: torch.Tensor, ps: torch.Tensor, mu: float) -> torch.Tensor:
    """(n,) sum of |p_t - p_s| over each row's teacher head; pt, ps: (n, V) CPU tensors."""
    gap = np.empty(pt.shape[0], dtype=np.float64)
    run_rows(_head_gap_range, _head_gap_parts, pt.shape[0], pt.numpy(), ps.numpy(), float(mu), gap)
    return torch.from_numpy(gap).to(pt.dtype)
