"""KL family: forward KL, reverse KL, the paper's "jsd" (their mixture) and the total variation distance.

Each kernel maps one chunk's log-probabilities to per-token terms and writes the gradient rows
(:mod:`kdlm.losses.engine`). On CPU all four hand their sums and gradient to per-row numba functions
(:mod:`kdlm.losses.kl_rows`; forward and reverse are "jsd" with one weight 0); their tensor-op versions,
``kernel.on_device``, run elsewhere.
"""

from __future__ import annotations

import torch

from kdlm.losses.engine import (
    Tensor,
    check_inputs,
    col,
    dot_,
    finish,
    mean_of,
    run,
    uses,
    with_shapes_doc,
)
from kdlm.losses.kl_rows import mix_rows, tvd_rows
from kdlm.methods import resolve_hparams

__all__ = [
    "forward_kernel", "forward_kl", "jsd", "jsd_kernel", "reverse_kernel", "reverse_kl", "tvd", "tvd_kernel",
]  # fmt: skip


def _one_kl(term: int):
    """KL(p_t || p_s) (term 0) or KL(p_s || p_t) (term 1) on CPU: the row functions of "jsd"
    (:func:`kdlm.losses.kl_rows.mix_rows`) with the other KL's weight 0, the log-probabilities read off the
    logits (no pass stores them)."""

    def kernel(ls, lt, target, w, ws, out):
        n = len(target)
        ps, pt = ws("ps", n), ws("pt", n)  # (n, V) each, from the engine
        if w is None:
            wfr = None
        else:
            zero = torch.zeros_like(w["kl"])  # (n,)
            wfr = (w["kl"], zero) if term == 0 else (zero, w["kl"])
        terms = mix_rows(ws.log_parts("ls", n), ws.log_parts("lt", n), ps, pt, wfr, out)  # (n, 2)
        return {"kl": terms[:, term].to(ps.dtype)}

    return kernel


def forward_kernel(ls, lt, target, w, ws, out):
    """KL(p_t || p_s) = sum p_t (log p_t - log p_s); d/dz_s = p_s - p_t.

    On CPU the sum and the gradient run fused per row (:func:`kdlm.losses.kl_rows.mix_rows`).
    """
    n = len(target)
    if ws.device.type == "cpu":
        return _forward_rows(ls, lt, target, w, ws, out)
    return _forward_tensor(ws.log_probs("ls", n), ws.log_probs("lt", n), target, w, ws, out)


def _forward_tensor(ls, lt, target, w, ws, out):
    """Forward KL from tensor ops (any device; what runs on a GPU)."""
    n = len(target)
    ps, pt = ws("ps", n), ws("pt", n)  # (n, V) each, from the engine
    kl = dot_(lt.sub_(ls), pt)  # (n,)
    if w is not None:
        torch.sub(ps, pt, out=out).mul_(col(w["kl"]))  # (n, V)
    return {"kl": kl}


_forward_rows = _one_kl(0)
forward_kernel.on_device = uses(_forward_tensor, "ls", "lt", "ps", "pt")
uses(forward_kernel, "ps", "pt")


def reverse_kernel(ls, lt, target, w, ws, out):
    """KL(p_s || p_t) = sum p_s (log p_s - log p_t); d/dz_s = p_s * (log p_s - log p_t - KL).

    On CPU the sum and the gradient run fused per row (:func:`kdlm.losses.kl_rows.mix_rows`).
    """
    n = len(target)
    if ws.device.type == "cpu":
        return _reverse_rows(ls, lt, target, w, ws, out)
    return _reverse_tensor(ws.log_probs("ls", n), ws.log_probs("lt", n), target, w, ws, out)


def _reverse_tensor(ls, lt, target, w, ws, out):
    """Reverse KL from tensor ops (any device; what runs on a GPU)."""
    ps = ws("ps", len(target))  # (n, V), from the engine
    d = ls.sub_(lt)  # (n, V) log p_s - log p_t
    kl = torch.mul(ps, d, out=lt).sum(-1)  # (n,)
    if w is not None:
        torch.mul(d.sub_(col(kl)), ps.mul_(col(w["kl"])), out=out)  # (n, V)
    return {"kl": kl}


_reverse_rows = _one_kl(1)
reverse_kernel.on_device = uses(_reverse_tensor, "ls", "lt", "ps")
uses(reverse_kernel, "ps", "pt")


def jsd_kernel(ls, lt, target, w, ws, out):
    """Both KLs from one pair of log-softmaxes: terms ``forward`` and ``reverse``.

    On CPU the sums and the gradient run fused per row (:func:`kdlm.losses.kl_rows.mix_rows`).
    """
    n = len(target)
    ps, pt = ws("ps", n), ws("pt", n)  # (n, V) each, from the engine
    if ps.device.type == "cpu":  # the log-probabilities are read off the logits (not stored)
        wfr = None if w is None else (w["forward"], w["reverse"])
        terms = mix_rows(ws.log_parts("ls", n), ws.log_parts("lt", n), ps, pt, wfr, out).to(ps.dtype)
        return {"forward": terms[:, 0], "reverse": terms[:, 1]}
    return _jsd_tensor(ws.log_probs("ls", n), ws.log_probs("lt", n), target, w, ws, out)


def _jsd_tensor(ls, lt, target, w, ws, out):
    """The paper's "jsd" from tensor ops (any device; what runs on a GPU)."""
    n = len(target)
    ps, pt = ws("ps", n), ws("pt", n)  # (n, V) each, from the engine
    d = ls.sub_(lt)  # (n, V) log p_s - log p_t
    fkl = -torch.mul(pt, d, out=lt).sum(-1)  # (n,)
    rkl = torch.mul(ps, d, out=lt).sum(-1)  # (n,)
    if w is not None:
        wf, wr = col(w["forward"]), col(w["reverse"])  # (n, 1)
        # wf * (p_s - p_t) + wr * p_s * (d - rkl)
        d.mul_(wr).add_(wf - wr * col(rkl))  # (n, V)
        torch.mul(d, ps, out=out).addcmul_(pt, wf, value=-1.0)  # (n, V)
    return {"forward": fkl, "reverse": rkl}


jsd_kernel.on_device = uses(_jsd_tensor, "ls", "lt", "ps", "pt")
uses(jsd_kernel, "ps", "pt")


def tvd_kernel(ls, lt, target, w, ws, out):
    """0.5 sum |p_s - p_t|; d/dz_s = 0.5 p_s (s - <p_s, s>), s = sign(p_s - p_t).

    On CPU the sums and the gradient run fused per row (:func:`kdlm.losses.kl_rows.tvd_rows`).
    """
    n = len(target)
    ps, pt = ws("ps", n), ws("pt", n)  # (n, V) each, from the engine; no log-probabilities needed
    if ps.device.type == "cpu":
        return {"tvd": tvd_rows(ps, pt, None if w is None else w["tvd"], out).to(ps.dtype)}
    return _tvd_tensor(ls, lt, target, w, ws, out)


def _tvd_tensor(ls, lt, target, w, ws, out):
    """Total variation from tensor ops (any device; what runs on a GPU)."""
    n = len(target)
    ps = ws("ps", n)  # (n, V), from the engine
    diff = ws("pt", n).sub_(ps)  # (n, V) p_t - p_s
    tv = 0.5 * torch.linalg.vector_norm(diff, ord=1, dim=-1)  # (n,)
    if w is not None:
        sgn = diff.sign_()  # (n, V) sign(p_t - p_s) = -s
        dot = torch.mul(ps, sgn, out=ws("a", n)).sum(-1)  # (n,)
        torch.mul(sgn.sub_(col(dot)), ps.mul_(col(w["tvd"]) * -0.5), out=out)  # (n, V)
    return {"tvd": tv}


tvd_kernel.on_device = uses(_tvd_tensor, "ps", "pt")
uses(tvd_kernel, "ps", "pt")


@with_shapes_doc
def forward_kl(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Forward KL(p_teacher || p_student) per token."""
    hp = resolve_hparams("forward", hparams)
    check_inputs(student_logits, teacher_logits, labels)
    loss, job = run(student_logits, teacher_logits, labels, forward_kernel, {"kl": 1.0}, hp["temperature"], hp["chunk_size"])
    return finish(loss, job, stats, lambda t: {})


@with_shapes_doc
def reverse_kl(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Reverse KL(p_student || p_teacher) per token."""
    hp = resolve_hparams("reverse", hparams)
    check_inputs(student_logits, teacher_logits, labels)
    loss, job = run(student_logits, teacher_logits, labels, reverse_kernel, {"kl": 1.0}, hp["temperature"], hp["chunk_size"])
    return finish(loss, job, stats, lambda t: {})


@with_shapes_doc
def jsd(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """The paper's "jsd": forward_ratio * KL(p_t||p_s) + (1 - forward_ratio) * KL(p_s||p_t).

    This is NOT a Jensen-Shannon divergence (that is :func:`kdlm.losses.skew.gjsd`); it is the mixture of
    forward and reverse KL that the reference code runs under the name ``jsd`` (forward_ratio = 0.9).
    """
    hp = resolve_hparams("jsd", hparams)
    check_inputs(student_logits, teacher_logits, labels)
    r = hp["forward_ratio"]
    loss, job = run(
        student_logits, teacher_logits, labels, jsd_kernel, {"forward": r, "reverse": 1.0 - r},
        hp["temperature"], hp["chunk_size"],
    )
    return finish(loss, job, stats, lambda t: {"jsd_forward": mean_of(t["forward"]), "jsd_reverse": mean_of(t["reverse"])})


@with_shapes_doc
def tvd(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Total variation distance 0.5 * sum_v |p_s - p_t| per token (in [0, 1]), over counted tokens."""
    hp = resolve_hparams("tvd", hparams)
    check_inputs(student_logits, teacher_logits, labels)
    loss, job = run(student_logits, teacher_logits, labels, tvd_kernel, {"tvd": 1.0}, hp["temperature"], hp["chunk_size"])
    return finish(loss, job, stats, lambda t: {})
