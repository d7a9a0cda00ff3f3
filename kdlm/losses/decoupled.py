"""Decoupled KD (DKD) and adaptive teaching KD (ATKD, the paper's method): TCKD and NCKD per token.

With g the target, b = [p[g], 1 - p[g]] and phat the non-target distribution renormalized, both use
the decoupling identity (docs/design.md, "Losses")

    KL(p_t || p_s) = KL(b_t || b_s) + (1 - p_t[g]) * KL(phat_t || phat_s),

TCKD = KL(b_t || b_s), NCKD = KL(phat_t || phat_s). ``1 - p[g]`` is taken as the sum of the non-target
probabilities (no cancellation when ``p[g] -> 1``), with an exact log-space fallback for the rare rows
where that sum underflows. On CPU the sums and the gradient run fused per row
(:mod:`kdlm.losses.decoupled_rows`); the tensor-op kernel, ``kernel.on_device``, runs elsewhere.
"""

from __future__ import annotations

import math

import torch

from kdlm.losses.decoupled_rows import decoupled_rows
from kdlm.losses.engine import (
    Kernel,
    Tensor,
    acquire_workspace,
    check_inputs,
    chunks,
    col,
    compute_dtype,
    counted_rows,
    finish,
    mean_of,
    release_workspace,
    run,
    scaled,
    take_rows,
    uses,
    with_shapes_doc,
)
from kdlm.losses.signal import TeacherInput, flatten_teacher, teacher_rows
from kdlm.methods import resolve_hparams

__all__ = ["atkd", "dkd", "make_kernel"]

BOTH = ("ls", "lt", "ps", "pt")  # what the kernels read: both models' log-probabilities and probabilities


def _log1m_sum(logp: Tensor, p: Tensor, target: Tensor) -> Tensor:
    """Non-target mass of each row, exactly, and the renormalized non-target distribution.

    Args:
        logp: (n, V) log-probabilities. p: (n, V) their exp; overwritten with ``phat`` (target entry 0).
        target: (n,).

    Returns:
        log1m: (n,) log(1 - p[g]) = log sum_{j != g} p_j.
    """
    tg = col(target)  # (n, 1)
    p.scatter_(1, tg, 0.0)  # (n, V) non-target probabilities
    s = p.sum(-1)  # (n,) a sum of non-negative terms: no cancellation when p[g] -> 1
    tiny = torch.finfo(p.dtype).tiny ** 0.5
    p.mul_(col(1.0 / s.clamp(min=tiny)))  # (n, V) phat
    log1m = s.log()  # (n,)
    bad = (s < tiny).nonzero().squeeze(1)  # (m,) rows whose non-target mass underflows
    if bad.numel():
        lb = logp.index_select(0, bad).scatter_(1, tg[bad], -math.inf)  # (m, V) non-target log-probs
        lse = torch.logsumexp(lb, dim=-1)  # (m,)
        log1m[bad] = lse
        p.index_copy_(0, bad, lb.sub_(col(lse)).exp_())  # (m, V) phat rows, exact in log space
    return log1m


def make_kernel(setting: str) -> Kernel:
    """TCKD and NCKD per token (DKD / ATKD) from one log-softmax per model.

    ``vanilla``: TCKD = KL(b_t || b_s), NCKD = KL(phat_t || phat_s). ``reverse``: the same with student
    and teacher swapped inside each KL. Weights ``w["tckd"]`` (a) and ``w["nckd"]`` (b) per token. On
    CPU the sums and the gradient run fused per row (:mod:`kdlm.losses.decoupled_rows`); ``kernel.on_device``
    is the tensor-op version that runs elsewhere.
    """
    reverse = setting == "reverse"

    def kernel(ls, lt, target, w, ws, out):
        n = len(target)
        if ws.device.type == "cpu":  # sums and gradient fused per row, log-probabilities read off the logits
            ps, pt = ws("ps", n), ws("pt", n)  # (n, V) each, from the engine
            wab = None if w is None else (w["tckd"], w["nckd"])
            parts = ws.log_parts("ls", n), ws.log_parts("lt", n)
            terms = decoupled_rows(*parts, ps, pt, target, reverse, wab, out).to(ps.dtype)  # (n, 2)
            return {"tckd": terms[:, 0], "nckd": terms[:, 1]}
        return on_device(ws.log_probs("ls", n), ws.log_probs("lt", n), target, w, ws, out)

    def on_device(ls, lt, target, w, ws, out):
        n = len(target)
        tg = col(target)  # (n, 1)
        lgs, lgt = ls.gather(1, tg).squeeze(1), lt.gather(1, tg).squeeze(1)  # (n,) log p[g]
        pgs, pgt = lgs.exp(), lgt.exp()  # (n,)
        hs = ws("ps", n)  # (n, V) p_s, from the engine
        l1s = _log1m_sum(ls, hs, target)  # (n,); hs is now phat_s
        ht = ws("pt", n)  # (n, V) p_t, from the engine
        l1t = _log1m_sum(lt, ht, target)  # (n,); ht is now phat_t
        d = lt.sub_(ls).scatter_(1, tg, 0.0)  # (n, V) log p_t - log p_s off the target
        if not reverse:
            tckd = pgt * (lgt - lgs) + l1t.exp() * (l1t - l1s)  # (n,)
            nckd = torch.mul(ht, d, out=ls).sum(-1) - l1t + l1s  # (n,)
        else:
            tckd = pgs * (lgs - lgt) + l1s.exp() * (l1s - l1t)  # (n,)
            nckd = -torch.mul(hs, d, out=ls).sum(-1) - l1s + l1t  # (n,)
        if w is not None:
            a, b = w["tckd"], w["nckd"]  # (n,)
            if not reverse:
                # off target: b (phat_s - phat_t) + a phat_s (p_t[g] - p_s[g]); target: a (p_s[g] - p_t[g])
                torch.mul(hs, col(b + a * (pgt - pgs)), out=out).addcmul_(ht, col(b), value=-1.0)  # (n, V)
                g_tgt = a * (pgs - pgt)  # (n,)
            else:
                # off target: phat_s [b (f - NCKD) - a h q (1-q)], f = -d - l1s + l1t, q = p_s[g],
                # h = (log q - log p_t[g]) - (log(1-q) - log(1-p_t[g])); target: a h q (1-q)
                hq = ((lgs - lgt) - (l1s - l1t)) * pgs * l1s.exp()  # (n,)
                c = b * (l1t - l1s - nckd) - a * hq  # (n,)
                torch.mul(d.mul_(col(-b)).add_(col(c)), hs, out=out)  # (n, V)
                g_tgt = a * hq  # (n,)
            out.scatter_(1, tg, col(g_tgt))  # (n, V) target entries
        return {"tckd": tckd, "nckd": nckd}

    kernel.on_device = uses(on_device, *BOTH)
    return uses(kernel, "ps", "pt")


@with_shapes_doc
def dkd(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Decoupled KD: alpha * TCKD + beta * NCKD, each averaged over counted tokens (alpha=1, beta=8).

    TCKD = KL(b_t || b_s) with b = [p[g], 1 - p[g]]; NCKD = KL(phat_t || phat_s) over the non-target
    tokens renormalized. NCKD is not weighted by 1 - p_t[g].
    """
    hp = resolve_hparams("dkd", hparams)
    check_inputs(student_logits, teacher_logits, labels)
    loss, job = run(
        student_logits, teacher_logits, labels, make_kernel("vanilla"),
        {"tckd": hp["alpha"], "nckd": hp["beta"]}, hp["temperature"], hp["chunk_size"],
    )
    return finish(loss, job, stats, lambda t: {"dkd_tckd": mean_of(t["tckd"]), "dkd_nckd": mean_of(t["nckd"])})


def _teacher_uncertainty(
    flat_t: TeacherInput, idx: Tensor, target: Tensor, temperature: float, chunk_size: int, dtype: torch.dtype, vocab: int
) -> Tensor:
    """ATKD's first pass: the teacher's uncertainty u = 1 - p_t[g] per counted token.

    u is the sum of the teacher's non-target probabilities (what the reference code sums; no cancellation
    when p_t[g] -> 1, so that the median split orders confident tokens correctly), from one softmax per
    chunk into a reused buffer.

    Args:
        flat_t: (B*T, V) teacher logits or (B*T, d) hidden states. idx, target: (N,) counted positions and their targets.

    Returns:
        u: (N,) in [0, 1].
    """
    u = torch.empty(idx.numel(), dtype=dtype, device=idx.device)  # (N,)
    ws = acquire_workspace(min(chunk_size, max(idx.numel(), 1)), vocab, dtype, idx.device)
    for start, stop, span in chunks(idx, chunk_size):
        n = stop - start
        rows = idx[start:stop]  # (n,)
        if isinstance(flat_t, Tensor):
            z_raw = take_rows(flat_t, rows, span, ws("tz", n))  # (n, V)
        else:
            z_raw = teacher_rows(flat_t, rows, span, ws("tz", n))  # (n, V) hidden states x output layer
        p = torch.softmax(scaled(z_raw, temperature, dtype, False, ws("in_t", n)), -1, out=ws("pt", n))  # (n, V)
        u[start:stop] = p.scatter_(1, col(target[start:stop]), 0.0).sum(-1)  # (n,) non-target mass
    release_workspace(ws)  # the loss's pass takes it over
    return u


@with_shapes_doc
def atkd(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Adaptive teaching KD (the paper's method), with the reference code's semantics.

    u = 1 - p_teacher[g] per counted token (the teacher's uncertainty, always the teacher's). The
    threshold is the ``k``-th smallest u with ``k = floor((N - 1) * (1 - hard_fraction))`` (0-based); for
    the default hard_fraction = 0.5 that is ``torch.median`` (the lower middle value). easy = u <
    threshold, hard = u >= threshold. easy loss = mean NCKD over easy tokens; hard loss = mean (TCKD + NCKD)
    over hard tokens; loss = lam * easy + (1 - lam) * hard (an empty group contributes 0). ``setting``
    ``reverse`` swaps student and teacher inside both KL terms.

    Stats: atkd_threshold, atkd_n_easy, atkd_n_hard, atkd_loss_easy, atkd_loss_hard.
    """
    hp = resolve_hparams("atkd", hparams)
    check_inputs(student_logits, teacher_logits, labels)
    V = student_logits.shape[-1]
    idx, target = counted_rows(labels, V)
    cdt = compute_dtype(student_logits)
    temp = hp["temperature"]
    flat_t = flatten_teacher(teacher_logits, V)  # (B, T, V) -> (B*T, V) logits, or (B*T, d) hidden states
    u = _teacher_uncertainty(flat_t, idx, target, temp, hp["chunk_size"], cdt, V)  # (N,)
    n = idx.numel()
    if n:
        k = int(math.floor((n - 1) * (1.0 - hp["hard_fraction"])))
        threshold = torch.kthvalue(u, k + 1).values  # () the lower median for hard_fraction = 0.5
        easy = u < threshold  # (N,)
    else:
        threshold = torch.zeros((), dtype=cdt)
        easy = torch.zeros(0, dtype=torch.bool, device=idx.device)
    hard = ~easy
    n_easy, n_hard = int(easy.sum()), int(hard.sum())
    lam = hp["lam"]
    w_easy = easy.to(cdt) * (lam / max(n_easy, 1))  # (N,)
    w_hard = hard.to(cdt) * ((1.0 - lam) / max(n_hard, 1))  # (N,)
    coef = {"tckd": w_hard, "nckd": w_easy + w_hard}
    loss, job = run(
        student_logits, teacher_logits, labels, make_kernel(hp["setting"]), coef, temp, hp["chunk_size"],
        idx_target=(idx, target),
    )

    def extra(t: dict[str, Tensor]) -> dict:
        return {
            "atkd_threshold": float(threshold),
            "atkd_n_easy": float(n_easy),
            "atkd_n_hard": float(n_hard),
            "atkd_loss_easy": mean_of(t["nckd"][easy]),
            "atkd_loss_hard": mean_of((t["tckd"] + t["nckd"])[hard]),
        }

    return finish(loss, job, stats, extra)
