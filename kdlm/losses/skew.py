"""KL to a mixture m of the two distributions: generalized JSD (GKD), skew KL and skew reverse KL (DistiLLM).

``gjsd`` is beta KL(p_t||m) + (1-beta) KL(p_s||m) with m = beta p_t + (1-beta) p_s; ``skl`` is
KL(p_t||m) with m = alpha p_t + (1-alpha) p_s; ``srkl`` is KL(p_s||m) with m = (1-alpha) p_t + alpha p_s.
torch takes log m (:func:`log_mix_p`); on CPU the sums and the gradient then run fused per row
(:mod:`kdlm.losses.skew_rows`), elsewhere the tensor-op kernels here (``kernel.on_device``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from kdlm.losses import skew_rows
from kdlm.losses.engine import (
    Kernel,
    Tensor,
    check_inputs,
    col,
    dot_,
    finish,
    run,
    uses,
    with_shapes_doc,
)
from kdlm.losses.kl import forward_kl, reverse_kl
from kdlm.methods import resolve_hparams

__all__ = ["gjsd", "log_mix_p", "make_gjsd", "make_skl", "make_srkl", "skl", "srkl"]


def log_mix_p(la: LazyLogProbs, lb: LazyLogProbs, pa: Tensor, pb: Tensor, a: float, out: Tensor) -> Tensor:
    """log(a * p_a + (1 - a) * p_b) into ``out`` from both probabilities (and log-probabilities where needed).

    One lerp and one log where the mixture is a normal float (cheaper than logaddexp's exp and log1p per
    entry); log space (logaddexp) on the entries where it underflows, e.g. far-out or -inf logits. ``la``
    and ``lb``, the log-probabilities, may be given as functions that make them: they are needed only
    there (and for ``a`` at 0 or 1).
    """
    if a <= 0.0:
        return out.copy_(_made(lb))
    if a >= 1.0:
        return out.copy_(_made(la))
    torch.lerp(pb, pa, a, out=out)  # (n, V) a p_a + (1 - a) p_b
    tiny = torch.finfo(out.dtype).tiny
    if not bool(out.amin() < tiny):
        return _log_(out)
    low = out < tiny  # (n, V) the few underflowing entries
    with np.errstate(divide="ignore"):  # log 0 = -inf there, replaced below
        _log_(out)
    out[low] = torch.logaddexp(_made(la)[low] + math.log(a), _made(lb)[low] + math.log1p(-a))
    return out


def _log_(x: Tensor) -> Tensor:
    """log of ``x`` in place: numpy's on CPU (its vectorized log takes about half the time of torch's
    on two threads, in one thread, at the same accuracy), torch's elsewhere."""
    if x.device.type != "cpu" or not x.is_contiguous():
        return x.log_()
    a = x.numpy()
    np.log(a, out=a)
    return x


LazyLogProbs = Tensor | Callable[[], Tensor]  # (n, V) log-probabilities, or a function that makes them


def _made(x: LazyLogProbs) -> Tensor:
    return x if isinstance(x, Tensor) else x()


ALL = ("ls", "lt", "ps", "pt")


def _with_cpu_rows(on_device: Kernel, kind: str, term: str, a: float, mix_first: bool) -> Kernel:
    """A mixture divergence: on CPU its sums and gradient fused per row (:mod:`kdlm.losses.skew_rows`),
    after torch's log m; elsewhere ``on_device``'s tensor ops. ``mix_first``: m weighs p_t by ``a``.

    On CPU the engine stores only the probabilities; the row functions read the log-probabilities off the
    scaled logits and one number per row (:meth:`kdlm.losses.engine.Workspace.log_parts`), and they are
    stored only if log m underflows somewhere (its log-space fallback reads them).
    """

    def kernel(ls, lt, target, w, ws, out):
        n = len(target)
        get_s = ls if ls is not None else lambda: ws.log_probs("ls", n)
        get_t = lt if lt is not None else lambda: ws.log_probs("lt", n)
        if ws.device.type != "cpu":
            return on_device(_made(get_s), _made(get_t), target, w, ws, out)
        ps, pt = ws("ps", n), ws("pt", n)  # (n, V) each, from the engine
        if mix_first:
            lm = log_mix_p(get_t, get_s, pt, ps, a, ws("c", n))  # (n, V)
        else:
            lm = log_mix_p(get_s, get_t, ps, pt, a, ws("c", n))  # (n, V)
        ls_, lt_ = ws.log_parts("ls", n), ws.log_parts("lt", n)
        wt = None if w is None else w[term]
        return {term: skew_rows.skew_rows(getattr(skew_rows, kind), ls_, lt_, ps, pt, lm, a, wt, out).to(ps.dtype)}

    kernel.on_device = uses(on_device, *ALL)
    return uses(kernel, "ps", "pt")


def make_gjsd(beta: float) -> Kernel:
    def kernel(ls, lt, target, w, ws, out):
        """beta KL(p_t||m) + (1-beta) KL(p_s||m), m = beta p_t + (1-beta) p_s.

        d/dz_s = (1-beta) p_s (f - <p_s, f>), f = log p_s - log m.
        """
        n = len(target)
        ps, pt = ws("ps", n), ws("pt", n)  # (n, V) each, from the engine
        lm = log_mix_p(lt, ls, pt, ps, beta, ws("c", n))  # (n, V) log m
        kt = dot_(lt.sub_(lm), pt)  # (n,) KL(p_t || m)
        f = ls.sub_(lm)  # (n, V) log p_s - log m
        ks = torch.mul(ps, f, out=lt).sum(-1)  # (n,) KL(p_s || m)
        if w is not None:
            torch.mul(f.sub_(col(ks)), ps.mul_(col(w["gjsd"]) * (1.0 - beta)), out=out)  # (n, V)
        return {"gjsd": beta * kt + (1.0 - beta) * ks}

    return _with_cpu_rows(kernel, "GJSD", "gjsd", beta, mix_first=True)


def make_skl(alpha: float) -> Kernel:
    def kernel(ls, lt, target, w, ws, out):
        """KL(p_t || m), m = alpha p_t + (1-alpha) p_s; d/dz_s = -(1-alpha) p_s (r - <p_s, r>), r = p_t/m."""
        n = len(target)
        ps, pt = ws("ps", n), ws("pt", n)  # (n, V) each, from the engine
        lm = log_mix_p(lt, ls, pt, ps, alpha, ws("c", n))  # (n, V) log m
        r = lt.sub_(lm)  # (n, V) log p_t - log m
        kl = torch.mul(pt, r, out=lm).sum(-1)  # (n,)
        if w is not None:
            r.exp_()  # (n, V) p_t / m <= 1 / alpha
            dot = torch.mul(ps, r, out=lm).sum(-1)  # (n,)
            torch.mul(r.sub_(col(dot)), ps.mul_(col(w["skl"]) * -(1.0 - alpha)), out=out)  # (n, V)
        return {"skl": kl}

    return _with_cpu_rows(kernel, "SKL", "skl", alpha, mix_first=True)


def make_srkl(alpha: float) -> Kernel:
    def kernel(ls, lt, target, w, ws, out):
        """KL(p_s || m), m = (1-alpha) p_t + alpha p_s; d/dz_s = p_s (f - <p_s, f>), f = log(p_s/m) - alpha p_s/m."""
        n = len(target)
        ps, pt = ws("ps", n), ws("pt", n)  # (n, V) each, from the engine
        lm = log_mix_p(ls, lt, ps, pt, alpha, ws("c", n))  # (n, V) log m
        f = ls.sub_(lm)  # (n, V) log p_s - log m
        kl = torch.mul(ps, f, out=lm).sum(-1)  # (n,)
        if w is not None:
            f.sub_(torch.exp(f, out=lm).mul_(alpha))  # (n, V) log(p_s/m) - alpha p_s/m
            dot = torch.mul(ps, f, out=lm).sum(-1)  # (n,)
            torch.mul(f.sub_(col(dot)), ps.mul_(col(w["srkl"])), out=out)  # (n, V)
        return {"srkl": kl}

    return _with_cpu_rows(kernel, "SRKL", "srkl", alpha, mix_first=False)


@with_shapes_doc
def gjsd(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Generalized JSD of GKD: beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s.

    log m is computed in log space (logaddexp). The divergence vanishes at beta = 0 and 1; its normalized
    limits are forward KL (beta -> 0) and reverse KL (beta -> 1), which, as in TRL's GKD trainer, are
    what beta = 0 and beta = 1 compute. beta = 0.5 is the symmetric Jensen-Shannon divergence.
    """
    hp = resolve_hparams("gjsd", hparams)
    beta = hp["beta"]
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, labels, stats=stats, temperature=hp["temperature"], chunk_size=hp["chunk_size"])
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, labels, stats=stats, temperature=hp["temperature"], chunk_size=hp["chunk_size"])
    check_inputs(student_logits, teacher_logits, labels)
    loss, job = run(student_logits, teacher_logits, labels, make_gjsd(beta), {"gjsd": 1.0}, hp["temperature"], hp["chunk_size"])
    return finish(loss, job, stats, lambda t: {})


@with_shapes_doc
def skl(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """DistiLLM's alpha-skew KL: KL(p_t || alpha p_t + (1 - alpha) p_s), alpha = 0.1."""
    hp = resolve_hparams("skl", hparams)
    check_inputs(student_logits, teacher_logits, labels)
    loss, job = run(student_logits, teacher_logits, labels, make_skl(hp["alpha"]), {"skl": 1.0}, hp["temperature"], hp["chunk_size"])
    return finish(loss, job, stats, lambda t: {})


@with_shapes_doc
def srkl(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """DistiLLM's alpha-skew reverse KL: KL(p_s || (1 - alpha) p_t + alpha p_s), alpha = 0.1."""
    hp = resolve_hparams("srkl", hparams)
    check_inputs(student_logits, teacher_logits, labels)
    loss, job = run(student_logits, teacher_logits, labels, make_srkl(hp["alpha"]), {"srkl": 1.0}, hp["temperature"], hp["chunk_size"])
    return finish(loss, job, stats, lambda t: {})
