"""Adaptive KL (AKL, Wu et al. 2024): w_head KL(p_t||p_s) + w_tail KL(p_s||p_t) per token.

The weights come from how far the student is from the teacher on the teacher's head tokens (its top
tokens up to cumulative probability ``mu``) against the total gap sum |p_t - p_s|, and are constants
for the gradient. On CPU the sums, the head search (no sort) and the gradient run fused per row
(:mod:`kdlm.losses.akl_rows`); elsewhere the tensor-op kernel with one sort per chunk
(``kernel.on_device``).
"""

from __future__ import annotations

import torch

from kdlm.losses.akl_rows import akl_rows
from kdlm.losses.engine import (
    Kernel,
    Tensor,
    check_inputs,
    col,
    finish,
    mean_of,
    run,
    uses,
    with_shapes_doc,
)
from kdlm.methods import resolve_hparams

__all__ = ["akl", "head_gap_sorted", "make_kernel"]


def head_gap_sorted(pt: Tensor, ps: Tensor, mu: float) -> Tensor:
    """AKL's head gap per row: sum of |p_t - p_s| over the teacher's head tokens, from a full sort.

    The head is the prefix of the teacher's tokens sorted by descending probability (ties by column)
    whose cumulative probability is <= ``mu``, the top token always included, as in Wu et al.'s code.
    On a GPU one sort per chunk is cheap; on CPU :func:`kdlm.losses.akl_rows.head_gap` finds the same
    head without sorting the row.

    Args:
        pt, ps: (n, V) teacher / student probabilities. mu: head mass.

    Returns:
        (n,) head gap.
    """
    vals, order = pt.sort(dim=-1, descending=True, stable=True)  # (n, V) ties by column
    head = vals.cumsum(-1) <= mu  # (n, V)
    head[:, 0] = True
    return ((vals - ps.gather(1, order)).abs_() * head).sum(-1)  # (n,)


def _make_tensor_kernel(mu: float) -> Kernel:
    """AKL from tensor ops (any device; what runs on a GPU)."""

    def kernel(ls, lt, target, w, ws, out):
        n = len(target)
        ps, pt = ws("ps", n), ws("pt", n)  # (n, V) each, from the engine
        d = ls.sub_(lt)  # (n, V) log p_s - log p_t
        # sum |p_t - p_s| per row in one pass, without a difference tensor
        total = torch.cdist(pt.unsqueeze(1), ps.unsqueeze(1), p=1).view(n)  # (n,)
        head = head_gap_sorted(pt, ps, mu)  # (n,)
        tiny = torch.finfo(total.dtype).tiny
        wh = torch.where(total > 0, head / total.clamp(min=tiny), 0.5)  # (n,)
        wt = torch.where(total > 0, (total - head) / total.clamp(min=tiny), 0.5)  # (n,)
        fkl = -torch.linalg.vecdot(pt, d)  # (n,)
        pd = d.mul_(ps)  # (n, V) p_s (log p_s - log p_t)
        rkl = pd.sum(-1)  # (n,)
        if w is not None:
            cf, cr = w["akl"] * wh, w["akl"] * wt  # (n,)
            # cf (p_s - p_t) + cr p_s (d - rkl) = cr p_s d + (cf - cr rkl) p_s - cf p_t
            torch.mul(pd, col(cr), out=out).addcmul_(ps, col(cf - cr * rkl)).addcmul_(pt, col(cf), value=-1.0)
        return {"akl": wh * fkl + wt * rkl, "head_weight": wh}

    return uses(kernel, "ls", "lt", "ps", "pt")


def make_kernel(mu: float) -> Kernel:
    """w_head KL(p_t||p_s) + w_tail KL(p_s||p_t) per token, weights from head/tail gaps (constants).

    On CPU the sums, the head search and the gradient run fused per row (:mod:`kdlm.losses.akl_rows`);
    torch takes the log-softmaxes and exps. Elsewhere :func:`_make_tensor_kernel`'s tensor ops run.
    """
    on_device = _make_tensor_kernel(mu)

    def kernel(ls, lt, target, w, ws, out):
        n = len(target)
        if ws.device.type != "cpu":
            return on_device(ws.log_probs("ls", n), ws.log_probs("lt", n), target, w, ws, out)
        ps, pt = ws("ps", n), ws("pt", n)  # (n, V) each, from the engine; log-probabilities read off the logits
        terms = akl_rows(ws.log_parts("ls", n), ws.log_parts("lt", n), ps, pt, mu, None if w is None else w["akl"], out)
        return {"akl": terms[:, 0].to(ps.dtype), "head_weight": terms[:, 1].to(ps.dtype)}

    kernel.on_device = on_device
    return uses(kernel, "ps", "pt")


@with_shapes_doc
def akl(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Adaptive KL (Wu et al. 2024): w_head * KL(p_t||p_s) + w_tail * KL(p_s||p_t) per token.

    The teacher's head is its top tokens (by probability) whose cumulative probability is <= mu (the top
    token always included); w_head = g_head / (g_head + g_tail) with g = sum of |p_t - p_s| over head / tail,
    w_tail = 1 - w_head. The weights are constants for the gradient (the reference detaches the student
    there). A token with p_t == p_s everywhere gets w = 0.5 / 0.5.
    """
    hp = resolve_hparams("akl", hparams)
    check_inputs(student_logits, teacher_logits, labels)
    loss, job = run(student_logits, teacher_logits, labels, make_kernel(hp["mu"]), {"akl": 1.0}, hp["temperature"], hp["chunk_size"])
    return finish(loss, job, stats, lambda t: {"akl_head_weight": mean_of(t["head_weight"])})
