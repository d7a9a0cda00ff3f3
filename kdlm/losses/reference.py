"""Straightforward full-tensor versions of every loss in :data:`kdlm.losses.LOSSES`, in :data:`REFERENCE`.

These are the baselines: written the way research code usually writes them (full softmax tensors over
``(B, T, V)``, boolean masks, masked copies of the vocabulary dimension, a full sort for AKL), with plain
autograd. The tests check :mod:`kdlm.losses` against them in float64, and ``kdlm bench losses`` times
both. They follow the same formulas and conventions (mean over counted tokens, temperature on both
models, an empty ATKD group contributes 0), not the reference code's bugs (docs/design.md, "Losses").
A new loss gets its reference here, under the same name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdlm.losses import LOSSES
from kdlm.losses.engine import IGNORE_INDEX
from kdlm.methods import LOSS_NAMES

Tensor = torch.Tensor


def _prep(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor, temperature: float):
    """Scaled logits (B, T, V) in float32 (float64 kept), the counted mask (B, T) and its count."""
    dt = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    s = student_logits.to(dt) / temperature  # (B, T, V)
    t = None if teacher_logits is None else teacher_logits.detach().to(dt) / temperature  # (B, T, V)
    mask = labels != IGNORE_INDEX  # (B, T)
    return s, t, mask, mask.sum().clamp(min=1)


def _masked_mean(per_token: Tensor, mask: Tensor, n: Tensor) -> Tensor:
    return (per_token * mask).sum() / n  # (B, T) -> ()


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per token from log-probabilities: (B, T, V) -> (B, T)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def ref_forward(student_logits, teacher_logits, labels, temperature=1.0, **_):
    s, t, mask, n = _prep(student_logits, teacher_logits, labels, temperature)
    return _masked_mean(_kl(F.log_softmax(t, -1), F.log_softmax(s, -1)), mask, n)


def ref_reverse(student_logits, teacher_logits, labels, temperature=1.0, **_):
    s, t, mask, n = _prep(student_logits, teacher_logits, labels, temperature)
    return _masked_mean(_kl(F.log_softmax(s, -1), F.log_softmax(t, -1)), mask, n)


def ref_jsd(student_logits, teacher_logits, labels, temperature=1.0, forward_ratio=0.9, **_):
    fwd = ref_forward(student_logits, teacher_logits, labels, temperature)
    rev = ref_reverse(student_logits, teacher_logits, labels, temperature)
    return forward_ratio * fwd + (1 - forward_ratio) * rev


def ref_gjsd(student_logits, teacher_logits, labels, temperature=1.0, beta=0.5, **_):
    if beta == 0:
        return ref_forward(student_logits, teacher_logits, labels, temperature)
    if beta == 1:
        return ref_reverse(student_logits, teacher_logits, labels, temperature)
    s, t, mask, n = _prep(student_logits, teacher_logits, labels, temperature)
    ps, pt = F.softmax(s, -1), F.softmax(t, -1)  # (B, T, V)
    log_m = torch.log(beta * pt + (1 - beta) * ps)  # (B, T, V)
    js = beta * _kl(pt.log(), log_m) + (1 - beta) * _kl(ps.log(), log_m)  # (B, T)
    return _masked_mean(js, mask, n)


def ref_tvd(student_logits, teacher_logits, labels, temperature=1.0, **_):
    s, t, mask, n = _prep(student_logits, teacher_logits, labels, temperature)
    tv = 0.5 * (F.softmax(s, -1) - F.softmax(t, -1)).abs().sum(-1)  # (B, T)
    return _masked_mean(tv, mask, n)


def ref_skl(student_logits, teacher_logits, labels, temperature=1.0, alpha=0.1, **_):
    s, t, mask, n = _prep(student_logits, teacher_logits, labels, temperature)
    ps, pt = F.softmax(s, -1), F.softmax(t, -1)  # (B, T, V)
    mixed = alpha * pt + (1 - alpha) * ps  # (B, T, V)
    return _masked_mean(_kl(pt.log(), mixed.log()), mask, n)


def ref_srkl(student_logits, teacher_logits, labels, temperature=1.0, alpha=0.1, **_):
    s, t, mask, n = _prep(student_logits, teacher_logits, labels, temperature)
    ps, pt = F.softmax(s, -1), F.softmax(t, -1)  # (B, T, V)
    mixed = (1 - alpha) * pt + alpha * ps  # (B, T, V)
    return _masked_mean(_kl(ps.log(), mixed.log()), mask, n)


def _tckd_nckd(s: Tensor, t: Tensor, labels: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
    """Per-token TCKD and NCKD the way DKD's code computes them: masks and masked copies.

    Args:
        s, t: (B, T, V) scaled logits. labels: (B, T). reverse: swap the arguments of both KLs.

    Returns:
        tckd, nckd: (B, T) each.
    """
    B, T, V = s.shape
    target = labels.clamp(min=0)  # (B, T) any valid id at ignored positions
    gt_mask = torch.zeros_like(s, dtype=torch.bool).scatter_(2, target.unsqueeze(2), True)  # (B, T, V)
    ps, pt = F.softmax(s, -1), F.softmax(t, -1)  # (B, T, V)
    bs = torch.stack([(ps * gt_mask).sum(-1), (ps * ~gt_mask).sum(-1)], -1)  # (B, T, 2)
    bt = torch.stack([(pt * gt_mask).sum(-1), (pt * ~gt_mask).sum(-1)], -1)  # (B, T, 2)
    s_nt = s.masked_select(~gt_mask).view(B, T, V - 1)  # (B, T, V-1) non-target logits
    t_nt = t.masked_select(~gt_mask).view(B, T, V - 1)  # (B, T, V-1)
    ls_nt, lt_nt = F.log_softmax(s_nt, -1), F.log_softmax(t_nt, -1)  # (B, T, V-1)
    if reverse:
        return _kl(bs.log(), bt.log()), _kl(ls_nt, lt_nt)
    return _kl(bt.log(), bs.log()), _kl(lt_nt, ls_nt)


def ref_dkd(student_logits, teacher_logits, labels, temperature=1.0, alpha=1.0, beta=8.0, **_):
    s, t, mask, n = _prep(student_logits, teacher_logits, labels, temperature)
    tckd, nckd = _tckd_nckd(s, t, labels, reverse=False)  # (B, T)
    return alpha * _masked_mean(tckd, mask, n) + beta * _masked_mean(nckd, mask, n)


def ref_atkd(
    student_logits, teacher_logits, labels, temperature=1.0, lam=0.2, setting="vanilla", hard_fraction=0.5, **_
):
    s, t, mask, n = _prep(student_logits, teacher_logits, labels, temperature)
    target = labels.clamp(min=0)  # (B, T)
    pt = F.softmax(t, -1)  # (B, T, V)
    gt_mask = torch.zeros_like(t, dtype=torch.bool).scatter_(2, target.unsqueeze(2), True)  # (B, T, V)
    u = (pt * ~gt_mask).sum(-1)  # (B, T) teacher's non-target mass
    counted = u.masked_select(mask)  # (N,)
    if counted.numel() == 0:
        return (s * 0).sum()
    if hard_fraction == 0.5:
        threshold = counted.median()
    else:
        k = int((counted.numel() - 1) * (1.0 - hard_fraction))
        threshold = counted.sort().values[k]
    easy = (u < threshold) & mask  # (B, T)
    hard = (u >= threshold) & mask  # (B, T)
    tckd, nckd = _tckd_nckd(s, t, labels, reverse=setting == "reverse")  # (B, T)
    easy_loss = (nckd * easy).sum() / easy.sum().clamp(min=1)
    hard_loss = ((tckd + nckd) * hard).sum() / hard.sum().clamp(min=1)
    return lam * easy_loss + (1 - lam) * hard_loss


def ref_akl(student_logits, teacher_logits, labels, temperature=1.0, mu=0.5, **_):
    s, t, mask, n = _prep(student_logits, teacher_logits, labels, temperature)
    ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)  # (B, T, V)
    ps, pt = ls.exp(), lt.exp()  # (B, T, V)
    sorted_t, order = pt.sort(-1, descending=True)  # (B, T, V)
    sorted_s = ps.detach().gather(-1, order)  # (B, T, V)
    err = (sorted_t - sorted_s).abs()  # (B, T, V)
    tail = sorted_t.cumsum(-1) > mu  # (B, T, V)
    tail[..., 0] = False
    g_head = err.masked_fill(tail, 0).sum(-1)  # (B, T)
    g_tail = err.masked_fill(~tail, 0).sum(-1)  # (B, T)
    total = g_head + g_tail
    w_head = torch.where(total > 0, g_head / total.clamp(min=1e-300), 0.5)  # (B, T)
    w_tail = torch.where(total > 0, g_tail / total.clamp(min=1e-300), 0.5)  # (B, T)
    per_token = w_head * _kl(lt, ls) + w_tail * _kl(ls, lt)  # (B, T)
    return _masked_mean(per_token, mask, n)


def ref_sft(student_logits, teacher_logits, labels, temperature=1.0, **_):
    s, _t, mask, n = _prep(student_logits, None, labels, temperature)
    return F.cross_entropy(s.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum") / n


def from_per_token(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The reference of a loss written as one per-token function: that function on the whole (B, T, V)
    log-probabilities at once, masked and averaged here, gradient by plain autograd. It checks what the
    engine adds (chunking, masking, temperature, dtypes, the gradient rows), not the formula itself."""

    def ref(student_logits, teacher_logits, labels, temperature=1.0, chunk_size=None, **hparams):
        s, t, mask, n = _prep(student_logits, teacher_logits, labels, temperature)
        rows = mask.flatten()  # (B*T,)
        ls = F.log_softmax(s.flatten(0, 1)[rows], -1)  # (N, V)
        lt = None if t is None else F.log_softmax(t.flatten(0, 1)[rows], -1)  # (N, V)
        return fn(ls, lt, labels.flatten()[rows], **hparams).sum() / n

    return ref


REFERENCE: dict[str, Callable[..., Tensor]] = {
    "forward": ref_forward,
    "reverse": ref_reverse,
    "jsd": ref_jsd,
    "gjsd": ref_gjsd,
    "tvd": ref_tvd,
    "skl": ref_skl,
    "srkl": ref_srkl,
    "dkd": ref_dkd,
    "atkd": ref_atkd,
    "akl": ref_akl,
    "sft": ref_sft,
}
REFERENCE.update({name: from_per_token(loss.per_token) for name, loss in LOSSES.items()
                  if name not in REFERENCE and hasattr(loss, "per_token")})  # fmt: skip
if set(REFERENCE) != set(LOSS_NAMES):
    raise RuntimeError(f"REFERENCE {sorted(REFERENCE)} and kdlm.methods.LOSS_NAMES {sorted(LOSS_NAMES)} differ")
