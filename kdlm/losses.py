"""Token-level distillation losses for autoregressive LMs: exact, chunked, memory-bounded.

Every loss in :data:`LOSSES` has the signature::

    loss = LOSSES[name](student_logits, teacher_logits, labels, **hparams)

with ``student_logits`` and ``teacher_logits`` of shape ``(B, T, V)`` aligned with ``labels`` of shape
``(B, T)`` (already shifted: position ``t`` predicts ``labels[:, t]``), ``-100`` marking positions that do
not count. The result is a scalar: the mean over counted tokens of a per-token divergence between the
temperature-softened distributions (no ``T**2`` factor, as in the paper's code). Gradient flows to
``student_logits`` only; the teacher is a constant. A batch with no counted token gives ``0`` and a zero
gradient.

Papers followed:

- ATKD, the paper this project reproduces: Zhong et al. 2024, "Revisiting Knowledge Distillation for
  Autoregressive Language Models", https://arxiv.org/abs/2402.11890 (code: https://github.com/WHU-ZQH/ATKD)
- DKD: Zhao et al. 2022, "Decoupled Knowledge Distillation", https://arxiv.org/abs/2203.08679
- GKD's generalized JSD: Agarwal et al. 2024, "On-Policy Distillation of Language Models",
  https://arxiv.org/abs/2306.13649
- DistiLLM's skew KL / skew reverse KL: Ko et al. 2024, https://arxiv.org/abs/2402.03898
- AKL: Wu et al. 2024, "Rethinking Kullback-Leibler Divergence in Knowledge Distillation for Large Language
  Models", https://arxiv.org/abs/2404.02657

How it is computed. Only counted tokens are processed: their row numbers are gathered first and then
visited in chunks of ``chunk_size`` tokens. For each chunk one log-softmax per model is taken (in float32,
or float64 for float64 inputs); the per-token loss *and its analytic gradient* are computed from those
with a handful of element-wise passes, and the gradient rows are written into one preallocated buffer of
the student's shape and dtype. A custom :class:`torch.autograd.Function` hands that buffer to autograd, so
no full-size intermediate is ever kept for the backward pass: working memory beyond inputs and gradient is
O(chunk_size x V). DKD and ATKD use the decoupling identity (DESIGN.md, "Losses: contract")

    KL(p_t || p_s) = KL(b_t || b_s) + (1 - p_t[g]) * KL(phat_t || phat_s),

where ``b = [p[g], 1 - p[g]]`` and ``phat`` renormalizes the non-target mass; ``1 - p[g]`` is taken as the
sum of the non-target probabilities (no cancellation when ``p[g] -> 1``), with an exact log-space fallback
for the rare rows where that sum underflows.

On CPU, jsd, gjsd, tvd, skl, srkl, dkd, atkd and akl hand each chunk, after torch's log-softmaxes and exps
(and the mixture's log), to per-row functions compiled with numba (:mod:`kdlm.cpu_rows`) that make the
sums and the gradient in two passes over cache-resident rows instead of a dozen tensor passes; AKL's
head (the teacher's top tokens up to mass ``mu``, a sort) is found there without sorting the row. On
other devices the same kernels run as tensor ops (``kernel.on_device``).

Logits of ``-inf`` (e.g. padded vocabulary entries) are allowed: they are treated as ``-1e30`` (probability
exactly 0, ``0 * log 0 = 0``). A divergence that is mathematically infinite (e.g. reverse KL where the
teacher has ``-inf`` and the student does not) then comes out huge but finite.

Per-batch statistics: every loss takes ``stats: dict | None``; when a dict is given it is filled with plain
Python floats (``n_tokens`` always, plus per-loss entries, e.g. ``atkd_threshold``, ``atkd_n_easy``,
``atkd_n_hard``, ``atkd_loss_easy``, ``atkd_loss_hard`` for ATKD). :func:`validate_hparams` checks a
method's hyperparameters before training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.autograd.function import once_differentiable

__all__ = ["IGNORE_INDEX", "LOSSES", "HPARAMS", "validate_hparams"]

# Shapes used in comments throughout:
#   B = batch size, T = sequence length, V = vocabulary size,
#   N = number of counted tokens (labels != IGNORE_INDEX), n = tokens in one chunk (<= chunk_size).
IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 32
NEG_LARGE = -1e30  # stands in for -inf logits: exp() is exactly 0, arithmetic stays finite

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------------
# Hyperparameters and their validation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    default: Any
    check: Callable[[Any], bool]
    allowed: str  # human-readable range or choices, used in error messages


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _in_unit(x: Any) -> bool:
    return _is_real(x) and 0.0 <= x <= 1.0


_COMMON = {
    "temperature": _Param(1.0, lambda x: _is_real(x) and x > 0, "a finite number > 0"),
    "chunk_size": _Param(
        DEFAULT_CHUNK_SIZE, lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 1, "an int >= 1"
    ),
}

HPARAMS: dict[str, dict[str, _Param]] = {
    "forward": {},
    "reverse": {},
    "jsd": {"forward_ratio": _Param(0.9, _in_unit, "a number in [0, 1]")},
    "gjsd": {"beta": _Param(0.5, _in_unit, "a number in [0, 1]")},
    "tvd": {},
    "skl": {"alpha": _Param(0.1, _in_unit, "a number in [0, 1]")},
    "srkl": {"alpha": _Param(0.1, _in_unit, "a number in [0, 1]")},
    "dkd": {
        "alpha": _Param(1.0, lambda x: _is_real(x) and x >= 0, "a finite number >= 0"),
        "beta": _Param(8.0, lambda x: _is_real(x) and x >= 0, "a finite number >= 0"),
    },
    "atkd": {
        "lam": _Param(0.2, _in_unit, "a number in [0, 1]"),
        "setting": _Param("vanilla", lambda x: x in ("vanilla", "reverse"), "one of vanilla|reverse"),
        "hard_fraction": _Param(0.5, lambda x: _is_real(x) and 0.0 < x <= 1.0, "a number in (0, 1]"),
    },
    "akl": {"mu": _Param(0.5, _in_unit, "a number in [0, 1]")},
    "sft": {},
}
for _spec in HPARAMS.values():
    _spec.update(_COMMON)


def validate_hparams(name: str, hparams: dict[str, Any]) -> None:
    """Check a loss name and its hyperparameters before training starts.

    Args:
        name: a key of :data:`LOSSES`.
        hparams: keyword arguments that will be passed to the loss (without ``stats``).

    Raises:
        ValueError: unknown loss name (the message lists the known ones), unknown key (the message lists
            the allowed keys), or a value outside its range/choices (the message says which).
    """
    if name not in HPARAMS:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(HPARAMS))}")
    spec = HPARAMS[name]
    for key, value in hparams.items():
        if key not in spec:
            raise ValueError(
                f"loss {name!r}: unknown hyperparameter {key!r}; allowed: {', '.join(sorted(spec))}"
            )
        if not spec[key].check(value):
            raise ValueError(f"loss {name!r}: {key}={value!r} is invalid; it must be {spec[key].allowed}")


def _resolve(name: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Validate ``hparams`` and fill in defaults."""
    validate_hparams(name, hparams)
    return {key: hparams.get(key, p.default) for key, p in HPARAMS[name].items()}


# --------------------------------------------------------------------------------------------------
# Shared machinery: counted rows, chunks, workspace, the autograd Function
# --------------------------------------------------------------------------------------------------


class _Workspace:
    """Named (chunk_size, V) buffers in the compute dtype, allocated once per loss call, reused by chunks.

    Reusing them (instead of allocating fresh temporaries per chunk) keeps the allocator from mapping and
    faulting in new pages for every chunk, and bounds working memory to a few chunk-sized buffers.
    """

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device):
        self.rows, self.vocab, self.dtype, self.device = rows, vocab, dtype, device
        self._bufs: dict[str, Tensor] = {}

    def __call__(self, name: str, n: int) -> Tensor:
        """The first ``n`` rows of buffer ``name``: (n, V)."""
        if name not in self._bufs:
            self._bufs[name] = torch.empty(self.rows, self.vocab, dtype=self.dtype, device=self.device)
        return self._bufs[name][:n]  # (chunk_size, V) -> (n, V)


# A kernel maps one chunk's log-probabilities to per-token terms and writes the gradient of the chunk's
# loss.  Arguments:
#   ls, lt: (n, V) student / teacher log-softmax in the compute dtype (lt is None for sft); workspace
#           buffers that the kernel may overwrite.
#   target: (n,) int64 target token ids.
#   w: term -> (n,) weight of that term in the loss, already divided by the temperature, or None when no
#      gradient is wanted.
#   ws: the workspace, for temporaries (names other than "ls", "lt", "in", "out").
#   out: (n, V) where to write the gradient of sum_k sum_i w[k][i] * terms[k][i] with respect to the
#        student's *scaled* logits (None when w is None).
# It returns terms: a name -> (n,) per-token values.
# A kernel whose CPU path is fused per row (kdlm.cpu_rows) keeps its tensor-op version, the one that runs
# on other devices, as ``kernel.on_device``.
Kernel = Callable[
    [Tensor, Tensor | None, Tensor, dict[str, Tensor] | None, _Workspace, Tensor | None], dict[str, Tensor]
]


@dataclass
class _Job:
    """Everything the autograd Function needs besides the logits."""

    kernel: Kernel
    idx: Tensor  # (N,) flat positions in B*T of the counted tokens
    target: Tensor  # (N,) their target ids
    coef: dict[str, Tensor]  # term -> (N,) weight of that term in the loss
    temperature: float
    chunk_size: int
    teacher_lse: Tensor | None = None  # (N,) logsumexp of the scaled teacher logits, if precomputed
    terms: dict[str, Tensor] = field(default_factory=dict)  # filled: term -> (N,) per-token values


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_inputs(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor) -> None:
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be (B, T, V), got shape {tuple(student_logits.shape)}")
    if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} != student_logits shape "
            f"{tuple(student_logits.shape)}"
        )
    if labels.shape != student_logits.shape[:2]:
        raise ValueError(f"labels must be (B, T) = {tuple(student_logits.shape[:2])}, got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be int64, got {labels.dtype}")


def _counted(labels: Tensor, vocab: int) -> tuple[Tensor, Tensor]:
    """Flat positions and targets of the counted tokens.

    Args:
        labels: (B, T) int, IGNORE_INDEX where a position does not count.
        vocab: V.

    Returns:
        idx: (N,) int64 positions in the flattened (B*T) token axis; target: (N,) int64 token ids.

    Raises:
        ValueError: a label outside [0, V) that is not IGNORE_INDEX.
    """
    flat = labels.reshape(-1).long()  # (B, T) -> (B*T,)
    idx = (flat != IGNORE_INDEX).nonzero().squeeze(1)  # (N,)
    target = flat[idx]  # (N,)
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= vocab):
        raise ValueError(f"labels must be in [0, {vocab}) or {IGNORE_INDEX}")
    return idx, target


def _chunks(idx: Tensor, chunk_size: int) -> list[tuple[int, int, tuple[int, int] | None]]:
    """Split the counted rows into chunks.

    Returns:
        (start, stop, span) per chunk: rows ``idx[start:stop]``; span is ``(lo, hi)`` when those rows are
        the contiguous flat range ``lo:hi`` (then they are sliced, not copied), else None.
    """
    pos = idx.tolist()
    out = []
    for start in range(0, len(pos), chunk_size):
        stop = min(start + chunk_size, len(pos))
        lo, hi = pos[start], pos[stop - 1] + 1
        out.append((start, stop, (lo, hi) if hi - lo == stop - start else None))
    return out


def _rows(flat: Tensor, idx: Tensor, span: tuple[int, int] | None) -> Tensor:
    """Rows of ``flat`` (B*T, V) at ``idx`` (n,): a view when contiguous, else a gathered (n, V) copy."""
    return flat[span[0] : span[1]] if span is not None else flat.index_select(0, idx)  # (n, V)


def _scaled(z: Tensor, temperature: float, dtype: torch.dtype, clamp: bool, buf: Tensor | None = None) -> Tensor:
    """(n, V) logits -> (n, V) logits / temperature in ``dtype``; -inf -> NEG_LARGE when ``clamp``.

    Returns ``z`` itself when nothing is to be done; otherwise writes into ``buf`` (n, V) if given.
    """
    if z.dtype == dtype and temperature == 1.0 and not clamp:
        return z
    out = buf.copy_(z) if buf is not None else z.to(dtype, copy=True)  # (n, V)
    if clamp:
        out.clamp_(min=NEG_LARGE)
    return out if temperature == 1.0 else out.div_(temperature)


def _compute(student_logits: Tensor, teacher_logits: Tensor | None, job: _Job, want_grad: bool):
    """Run ``job.kernel`` over the chunks of counted rows.

    Args:
        student_logits, teacher_logits: (B, T, V); teacher may be None (sft).
        job: the rows, term weights and kernel; its ``terms`` are filled with (N,) per-token values.
        want_grad: also build the gradient.

    Returns:
        (scalar loss in the compute dtype, (B*T, V) gradient w.r.t. the student logits or None).
    """
    V = student_logits.shape[-1]
    cdt = _compute_dtype(student_logits)
    flat_s = student_logits.detach().reshape(-1, V)  # (B, T, V) -> (B*T, V)
    flat_t = None if teacher_logits is None else teacher_logits.detach().reshape(-1, V)  # (B*T, V)
    grad = None
    if want_grad:
        grad = torch.empty_like(flat_s)  # (B*T, V)
        if job.idx.numel() < flat_s.shape[0]:
            skipped = torch.ones(flat_s.shape[0], dtype=torch.bool, device=flat_s.device)  # (B*T,)
            skipped[job.idx] = False
            grad[skipped] = 0  # (B*T - N, V) rows of uncounted tokens
    total = torch.zeros((), dtype=cdt, device=student_logits.device)
    pieces: dict[str, list[Tensor]] = {}
    temp = job.temperature
    ws = _Workspace(min(job.chunk_size, max(job.idx.numel(), 1)), V, cdt, student_logits.device)
    for start, stop, span in _chunks(job.idx, job.chunk_size):
        n = stop - start
        idx_c = job.idx[start:stop]  # (n,)
        tgt = job.target[start:stop]  # (n,)
        w = {k: v[start:stop] / temp for k, v in job.coef.items()} if want_grad else None  # (n,) each
        direct = grad is not None and span is not None and grad.dtype == cdt
        out = None if w is None else grad[span[0] : span[1]] if direct else ws("out", n)  # (n, V)
        zs_raw = _rows(flat_s, idx_c, span)  # (n, V)
        zt_raw = None if flat_t is None else _rows(flat_t, idx_c, span)  # (n, V)
        lse = None if job.teacher_lse is None else job.teacher_lse[start:stop, None]  # (n, 1)
        for clamp in (False, True):
            ls = torch.log_softmax(_scaled(zs_raw, temp, cdt, clamp, ws("in", n)), -1, out=ws("ls", n))  # (n, V)
            lt = None
            if zt_raw is not None:
                zt = _scaled(zt_raw, temp, cdt, clamp, ws("in", n))  # (n, V)
                lt = ws("lt", n)  # (n, V)
                torch.log_softmax(zt, -1, out=lt) if lse is None else torch.sub(zt, lse, out=lt)
            terms = job.kernel(ls, lt, tgt, w, ws, out)
            if all(bool(torch.isfinite(t).all()) for t in terms.values()):
                break  # -inf logits make 0 * log 0 = nan; retry with them clamped
        for k, t in terms.items():
            pieces.setdefault(k, []).append(t)
            if k in job.coef:
                total = total + torch.dot(job.coef[k][start:stop].to(cdt), t)
        if out is not None and not direct:
            if span is not None:
                grad[span[0] : span[1]].copy_(out)  # (n, V) rows, cast to the input dtype
            else:
                grad.index_copy_(0, idx_c, out.to(grad.dtype))  # (n, V) rows
    job.terms = {k: torch.cat(v) for k, v in pieces.items()}  # term -> (N,)
    return total, grad


class _ChunkedLoss(torch.autograd.Function):
    """The loss and its gradient are computed together in forward; the gradient waits in one buffer.

    backward hands that buffer to autograd and drops its own reference, so that autograd can take it as
    ``.grad`` without a copy. A second backward through the same graph (``retain_graph=True``,
    ``gradcheck``) recomputes the gradient from the saved inputs.
    """

    @staticmethod
    def forward(ctx, student_logits: Tensor, teacher_logits: Tensor | None, job: _Job) -> Tensor:  # type: ignore[override]
        want_grad = ctx.needs_input_grad[0]
        total, grad = _compute(student_logits, teacher_logits, job, want_grad)
        ctx.grad = grad
        ctx.job = job
        if want_grad:
            ctx.save_for_backward(student_logits, teacher_logits)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            student_logits, teacher_logits = ctx.saved_tensors
            _, grad = _compute(student_logits, teacher_logits, ctx.job, True)
            shape = student_logits.shape
        else:
            shape = ctx.saved_tensors[0].shape
        if bool(grad_loss != 1):
            grad.mul_(grad_loss.to(grad.dtype))  # we own the buffer: no second full-size tensor
        return grad.view(shape), None, None  # (B*T, V) -> (B, T, V)


def _run(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    kernel: Kernel,
    coef: dict[str, float] | dict[str, Tensor],
    temperature: float,
    chunk_size: int,
    teacher_lse: Tensor | None = None,
    idx_target: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, _Job]:
    """Gather counted rows, build per-row term weights and run the chunked Function.

    Args:
        coef: term -> weight per counted token: either constants (divided by N here, i.e. a mean) or
            (N,) tensors.

    Returns:
        (scalar loss, the job with its per-token ``terms`` filled).
    """
    V = student_logits.shape[-1]
    idx, target = idx_target if idx_target is not None else _counted(labels, V)
    cdt = _compute_dtype(student_logits)
    if all(isinstance(v, (int, float)) for v in coef.values()):
        n = max(idx.numel(), 1)
        coef = {k: torch.full((idx.numel(),), v / n, dtype=cdt, device=idx.device) for k, v in coef.items()}
    job = _Job(kernel, idx, target, coef, float(temperature), int(chunk_size), teacher_lse)
    loss = _ChunkedLoss.apply(student_logits, teacher_logits, job)
    return loss, job


def _dot_(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product that overwrites ``a`` (no temporary): (n, V), (n, V) -> (n,)."""
    return a.mul_(b).sum(-1)


def _col(x: Tensor) -> Tensor:
    return x.unsqueeze(1)  # (n,) -> (n, 1)


def _mean(t: Tensor) -> float:
    return float(t.mean()) if t.numel() else 0.0


# --------------------------------------------------------------------------------------------------
# Kernels: one chunk of log-probabilities -> per-token terms, gradient written into `out`
# --------------------------------------------------------------------------------------------------


def _k_forward(ls, lt, target, w, ws, out):
    """KL(p_t || p_s) = sum p_t (log p_t - log p_s); d/dz_s = p_s - p_t."""
    pt = torch.exp(lt, out=ws("a", len(target)))  # (n, V)
    kl = _dot_(lt.sub_(ls), pt)  # (n,)
    if w is not None:
        torch.sub(ls.exp_(), pt, out=out).mul_(_col(w["kl"]))  # (n, V)
    return {"kl": kl}


def _k_reverse(ls, lt, target, w, ws, out):
    """KL(p_s || p_t) = sum p_s (log p_s - log p_t); d/dz_s = p_s * (log p_s - log p_t - KL)."""
    ps = torch.exp(ls, out=ws("a", len(target)))  # (n, V)
    d = ls.sub_(lt)  # (n, V) log p_s - log p_t
    kl = torch.mul(ps, d, out=lt).sum(-1)  # (n,)
    if w is not None:
        torch.mul(d.sub_(_col(kl)), ps.mul_(_col(w["kl"])), out=out)  # (n, V)
    return {"kl": kl}


def _k_jsd(ls, lt, target, w, ws, out):
    """Both KLs from one pair of log-softmaxes: terms ``forward`` and ``reverse``.

    On CPU the sums and the gradient run fused per row (:func:`kdlm.cpu_rows.kl.mix_rows`).
    """
    n = len(target)
    if ls.device.type == "cpu":
        from kdlm.cpu_rows.kl import mix_rows

        ps = torch.exp(ls, out=ws("b", n))  # (n, V)
        pt = torch.exp(lt, out=ws("a", n))  # (n, V)
        terms = mix_rows(ls, lt, ps, pt, None if w is None else (w["forward"], w["reverse"]), out).to(ls.dtype)
        return {"forward": terms[:, 0], "reverse": terms[:, 1]}
    return _k_jsd_tensor(ls, lt, target, w, ws, out)


def _k_jsd_tensor(ls, lt, target, w, ws, out):
    """The paper's "jsd" from tensor ops (any device; what runs on a GPU)."""
    n = len(target)
    pt = torch.exp(lt, out=ws("a", n))  # (n, V)
    ps = torch.exp(ls, out=ws("b", n))  # (n, V)
    d = ls.sub_(lt)  # (n, V) log p_s - log p_t
    fkl = -torch.mul(pt, d, out=lt).sum(-1)  # (n,)
    rkl = torch.mul(ps, d, out=lt).sum(-1)  # (n,)
    if w is not None:
        wf, wr = _col(w["forward"]), _col(w["reverse"])  # (n, 1)
        # wf * (p_s - p_t) + wr * p_s * (d - rkl)
        d.mul_(wr).add_(wf - wr * _col(rkl))  # (n, V)
        torch.mul(d, ps, out=out).addcmul_(pt, wf, value=-1.0)  # (n, V)
    return {"forward": fkl, "reverse": rkl}


_k_jsd.on_device = _k_jsd_tensor


def _log_mix_p(la: Tensor, lb: Tensor, pa: Tensor, pb: Tensor, a: float, out: Tensor) -> Tensor:
    """log(a * p_a + (1 - a) * p_b) into ``out`` from both log-probabilities and probabilities.

    One lerp and one log where the mixture is a normal float (cheaper than logaddexp's exp and log1p per
    entry); log space (logaddexp) on the entries where it underflows, e.g. far-out or -inf logits.
    """
    if a <= 0.0:
        return out.copy_(lb)
    if a >= 1.0:
        return out.copy_(la)
    torch.lerp(pb, pa, a, out=out)  # (n, V) a p_a + (1 - a) p_b
    tiny = torch.finfo(out.dtype).tiny
    if not bool(out.amin() < tiny):
        return out.log_()
    low = out < tiny  # (n, V) the few underflowing entries
    out.log_()
    out[low] = torch.logaddexp(la[low] + math.log(a), lb[low] + math.log1p(-a))
    return out


def _with_cpu_rows(on_device: Kernel, kind: str, term: str, a: float, mix_first: bool) -> Kernel:
    """A mixture divergence: on CPU its sums and gradient fused per row (:mod:`kdlm.cpu_rows.skew`), after
    torch's exps and log m; elsewhere ``on_device``'s tensor ops. ``mix_first``: m weighs p_t by ``a``."""

    def kernel(ls, lt, target, w, ws, out):
        if ls.device.type != "cpu":
            return on_device(ls, lt, target, w, ws, out)
        from kdlm.cpu_rows import skew

        n = len(target)
        pt = torch.exp(lt, out=ws("a", n))  # (n, V)
        ps = torch.exp(ls, out=ws("b", n))  # (n, V)
        lm = _log_mix_p(lt, ls, pt, ps, a, ws("c", n)) if mix_first else _log_mix_p(ls, lt, ps, pt, a, ws("c", n))  # (n, V)
        wt = None if w is None else w[term]
        return {term: skew.skew_rows(getattr(skew, kind), ls, lt, ps, pt, lm, a, wt, out).to(ls.dtype)}

    kernel.on_device = on_device
    return kernel


def _make_gjsd(beta: float) -> Kernel:
    def kernel(ls, lt, target, w, ws, out):
        """beta KL(p_t||m) + (1-beta) KL(p_s||m), m = beta p_t + (1-beta) p_s.

        d/dz_s = (1-beta) p_s (f - <p_s, f>), f = log p_s - log m.
        """
        n = len(target)
        pt = torch.exp(lt, out=ws("a", n))  # (n, V)
        ps = torch.exp(ls, out=ws("b", n))  # (n, V)
        lm = _log_mix_p(lt, ls, pt, ps, beta, ws("c", n))  # (n, V) log m
        kt = _dot_(lt.sub_(lm), pt)  # (n,) KL(p_t || m)
        f = ls.sub_(lm)  # (n, V) log p_s - log m
        ks = torch.mul(ps, f, out=lt).sum(-1)  # (n,) KL(p_s || m)
        if w is not None:
            torch.mul(f.sub_(_col(ks)), ps.mul_(_col(w["gjsd"]) * (1.0 - beta)), out=out)  # (n, V)
        return {"gjsd": beta * kt + (1.0 - beta) * ks}

    return _with_cpu_rows(kernel, "GJSD", "gjsd", beta, mix_first=True)


def _k_tvd(ls, lt, target, w, ws, out):
    """0.5 sum |p_s - p_t|; d/dz_s = 0.5 p_s (s - <p_s, s>), s = sign(p_s - p_t).

    On CPU the sums and the gradient run fused per row (:func:`kdlm.cpu_rows.kl.tvd_rows`).
    """
    if ls.device.type == "cpu":
        from kdlm.cpu_rows.kl import tvd_rows

        return {"tvd": tvd_rows(ls.exp_(), lt.exp_(), None if w is None else w["tvd"], out).to(ls.dtype)}
    return _k_tvd_tensor(ls, lt, target, w, ws, out)


def _k_tvd_tensor(ls, lt, target, w, ws, out):
    """Total variation from tensor ops (any device; what runs on a GPU)."""
    ps = ls.exp_()  # (n, V)
    diff = lt.exp_().sub_(ps)  # (n, V) p_t - p_s
    tv = 0.5 * torch.linalg.vector_norm(diff, ord=1, dim=-1)  # (n,)
    if w is not None:
        sgn = diff.sign_()  # (n, V) sign(p_t - p_s) = -s
        dot = torch.mul(ps, sgn, out=ws("a", len(target))).sum(-1)  # (n,)
        torch.mul(sgn.sub_(_col(dot)), ps.mul_(_col(w["tvd"]) * -0.5), out=out)  # (n, V)
    return {"tvd": tv}


_k_tvd.on_device = _k_tvd_tensor


def _make_skl(alpha: float) -> Kernel:
    def kernel(ls, lt, target, w, ws, out):
        """KL(p_t || m), m = alpha p_t + (1-alpha) p_s; d/dz_s = -(1-alpha) p_s (r - <p_s, r>), r = p_t/m."""
        n = len(target)
        pt = torch.exp(lt, out=ws("a", n))  # (n, V)
        ps = torch.exp(ls, out=ws("b", n))  # (n, V)
        lm = _log_mix_p(lt, ls, pt, ps, alpha, ws("c", n))  # (n, V) log m
        r = lt.sub_(lm)  # (n, V) log p_t - log m
        kl = torch.mul(pt, r, out=lm).sum(-1)  # (n,)
        if w is not None:
            r.exp_()  # (n, V) p_t / m <= 1 / alpha
            dot = torch.mul(ps, r, out=lm).sum(-1)  # (n,)
            torch.mul(r.sub_(_col(dot)), ps.mul_(_col(w["skl"]) * -(1.0 - alpha)), out=out)  # (n, V)
        return {"skl": kl}

    return _with_cpu_rows(kernel, "SKL", "skl", alpha, mix_first=True)


def _make_srkl(alpha: float) -> Kernel:
    def kernel(ls, lt, target, w, ws, out):
        """KL(p_s || m), m = (1-alpha) p_t + alpha p_s; d/dz_s = p_s (f - <p_s, f>), f = log(p_s/m) - alpha p_s/m."""
        n = len(target)
        pt = torch.exp(lt, out=ws("a", n))  # (n, V)
        ps = torch.exp(ls, out=ws("b", n))  # (n, V)
        lm = _log_mix_p(ls, lt, ps, pt, alpha, ws("c", n))  # (n, V) log m
        f = ls.sub_(lm)  # (n, V) log p_s - log m
        kl = torch.mul(ps, f, out=lm).sum(-1)  # (n,)
        if w is not None:
            f.sub_(torch.exp(f, out=lm).mul_(alpha))  # (n, V) log(p_s/m) - alpha p_s/m
            dot = torch.mul(ps, f, out=lm).sum(-1)  # (n,)
            torch.mul(f.sub_(_col(dot)), ps.mul_(_col(w["srkl"])), out=out)  # (n, V)
        return {"srkl": kl}

    return _with_cpu_rows(kernel, "SRKL", "srkl", alpha, mix_first=False)


def _log1m_sum(logp: Tensor, p: Tensor, target: Tensor) -> Tensor:
    """Non-target mass of each row, exactly, and the renormalized non-target distribution.

    Args:
        logp: (n, V) log-probabilities. p: (n, V) their exp; overwritten with ``phat`` (target entry 0).
        target: (n,).

    Returns:
        log1m: (n,) log(1 - p[g]) = log sum_{j != g} p_j.
    """
    tg = _col(target)  # (n, 1)
    p.scatter_(1, tg, 0.0)  # (n, V) non-target probabilities
    s = p.sum(-1)  # (n,) a sum of non-negative terms: no cancellation when p[g] -> 1
    tiny = torch.finfo(p.dtype).tiny ** 0.5
    p.mul_(_col(1.0 / s.clamp(min=tiny)))  # (n, V) phat
    log1m = s.log()  # (n,)
    bad = (s < tiny).nonzero().squeeze(1)  # (m,) rows whose non-target mass underflows
    if bad.numel():
        lb = logp.index_select(0, bad).scatter_(1, tg[bad], -math.inf)  # (m, V) non-target log-probs
        lse = torch.logsumexp(lb, dim=-1)  # (m,)
        log1m[bad] = lse
        p.index_copy_(0, bad, lb.sub_(_col(lse)).exp_())  # (m, V) phat rows, exact in log space
    return log1m


def _make_decoupled(setting: str) -> Kernel:
    """TCKD and NCKD per token (DKD / ATKD) from one log-softmax per model.

    ``vanilla``: TCKD = KL(b_t || b_s), NCKD = KL(phat_t || phat_s). ``reverse``: the same with student
    and teacher swapped inside each KL. Weights ``w["tckd"]`` (a) and ``w["nckd"]`` (b) per token. On
    CPU the sums and the gradient run fused per row (:mod:`kdlm.cpu_rows.decoupled`); ``kernel.on_device``
    is the tensor-op version that runs elsewhere.
    """
    reverse = setting == "reverse"

    def kernel(ls, lt, target, w, ws, out):
        n = len(target)
        if ls.device.type == "cpu":  # sums and gradient fused per row
            from kdlm.cpu_rows.decoupled import decoupled_rows

            ps = torch.exp(ls, out=ws("a", n))  # (n, V)
            pt = torch.exp(lt, out=ws("b", n))  # (n, V)
            wab = None if w is None else (w["tckd"], w["nckd"])
            terms = decoupled_rows(ls, lt, ps, pt, target, reverse, wab, out).to(ls.dtype)  # (n, 2)
            return {"tckd": terms[:, 0], "nckd": terms[:, 1]}
        return on_device(ls, lt, target, w, ws, out)

    def on_device(ls, lt, target, w, ws, out):
        n = len(target)
        tg = _col(target)  # (n, 1)
        lgs, lgt = ls.gather(1, tg).squeeze(1), lt.gather(1, tg).squeeze(1)  # (n,) log p[g]
        pgs, pgt = lgs.exp(), lgt.exp()  # (n,)
        hs = torch.exp(ls, out=ws("a", n))  # (n, V)
        l1s = _log1m_sum(ls, hs, target)  # (n,); hs is now phat_s
        ht = torch.exp(lt, out=ws("b", n))  # (n, V)
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
                torch.mul(hs, _col(b + a * (pgt - pgs)), out=out).addcmul_(ht, _col(b), value=-1.0)  # (n, V)
                g_tgt = a * (pgs - pgt)  # (n,)
            else:
                # off target: phat_s [b (f - NCKD) - a h q (1-q)], f = -d - l1s + l1t, q = p_s[g],
                # h = (log q - log p_t[g]) - (log(1-q) - log(1-p_t[g])); target: a h q (1-q)
                hq = ((lgs - lgt) - (l1s - l1t)) * pgs * l1s.exp()  # (n,)
                c = b * (l1t - l1s - nckd) - a * hq  # (n,)
                torch.mul(d.mul_(_col(-b)).add_(_col(c)), hs, out=out)  # (n, V)
                g_tgt = a * hq  # (n,)
            out.scatter_(1, tg, _col(g_tgt))  # (n, V) target entries
        return {"tckd": tckd, "nckd": nckd}

    kernel.on_device = on_device
    return kernel


def _head_gap_sorted(pt: Tensor, ps: Tensor, mu: float) -> Tensor:
    """AKL's head gap per row: sum of |p_t - p_s| over the teacher's head tokens, from a full sort.

    The head is the prefix of the teacher's tokens sorted by descending probability (ties by column)
    whose cumulative probability is <= ``mu``, the top token always included, as in Wu et al.'s code.
    On a GPU one sort per chunk is cheap; on CPU :func:`kdlm.cpu_rows.kl.head_gap` finds the same head
    without sorting the row.

    Args:
        pt, ps: (n, V) teacher / student probabilities. mu: head mass.

    Returns:
        (n,) head gap.
    """
    vals, order = pt.sort(dim=-1, descending=True, stable=True)  # (n, V) ties by column
    head = vals.cumsum(-1) <= mu  # (n, V)
    head[:, 0] = True
    return ((vals - ps.gather(1, order)).abs_() * head).sum(-1)  # (n,)


def _make_akl_tensor(mu: float) -> Kernel:
    """AKL from tensor ops (any device; what runs on a GPU)."""

    def kernel(ls, lt, target, w, ws, out):
        n = len(target)
        ps = torch.exp(ls, out=ws("b", n))  # (n, V)
        d = ls.sub_(lt)  # (n, V) log p_s - log p_t
        pt = lt.exp_()  # (n, V)
        # sum |p_t - p_s| per row in one pass, without a difference tensor
        total = torch.cdist(pt.unsqueeze(1), ps.unsqueeze(1), p=1).view(n)  # (n,)
        head = _head_gap_sorted(pt, ps, mu)  # (n,)
        tiny = torch.finfo(total.dtype).tiny
        wh = torch.where(total > 0, head / total.clamp(min=tiny), 0.5)  # (n,)
        wt = torch.where(total > 0, (total - head) / total.clamp(min=tiny), 0.5)  # (n,)
        fkl = -torch.linalg.vecdot(pt, d)  # (n,)
        pd = d.mul_(ps)  # (n, V) p_s (log p_s - log p_t)
        rkl = pd.sum(-1)  # (n,)
        if w is not None:
            cf, cr = w["akl"] * wh, w["akl"] * wt  # (n,)
            # cf (p_s - p_t) + cr p_s (d - rkl) = cr p_s d + (cf - cr rkl) p_s - cf p_t
            torch.mul(pd, _col(cr), out=out).addcmul_(ps, _col(cf - cr * rkl)).addcmul_(pt, _col(cf), value=-1.0)
        return {"akl": wh * fkl + wt * rkl, "head_weight": wh}

    return kernel


def _make_akl(mu: float) -> Kernel:
    """w_head KL(p_t||p_s) + w_tail KL(p_s||p_t) per token, weights from head/tail gaps (constants).

    On CPU the sums, the head search and the gradient run fused per row (:mod:`kdlm.cpu_rows.kl`); torch
    takes the log-softmaxes and exps. Elsewhere :func:`_make_akl_tensor`'s tensor ops run.
    """
    on_device = _make_akl_tensor(mu)

    def kernel(ls, lt, target, w, ws, out):
        if ls.device.type != "cpu":
            return on_device(ls, lt, target, w, ws, out)
        from kdlm.cpu_rows.kl import akl_rows

        n = len(target)
        ps = torch.exp(ls, out=ws("b", n))  # (n, V)
        pt = torch.exp(lt, out=ws("a", n))  # (n, V)
        terms = akl_rows(ls, lt, ps, pt, mu, None if w is None else w["akl"], out).to(ls.dtype)  # (n, 6)
        return {"akl": terms[:, 0], "head_weight": terms[:, 1]}

    kernel.on_device = on_device
    return kernel


def _k_sft(ls, lt, target, w, ws, out):
    """Cross-entropy -log p_s[g]; d/dz_s = p_s - onehot(g)."""
    tg = _col(target)  # (n, 1)
    ce = -ls.gather(1, tg).squeeze(1)  # (n,)
    if w is not None:
        wc = _col(w["ce"])  # (n, 1)
        torch.mul(ls.exp_(), wc, out=out).scatter_add_(1, tg, -wc)  # (n, V)
    return {"ce": ce}


# --------------------------------------------------------------------------------------------------
# Public losses
# --------------------------------------------------------------------------------------------------

_SHAPES_DOC = """
    Args:
        student_logits: (B, T, V) student logits (any float dtype; computed in float32, or float64).
        teacher_logits: (B, T, V) teacher logits; treated as constants.
        labels: (B, T) int64 targets, already shifted; IGNORE_INDEX (-100) where a token does not count.
        temperature: both models' logits are divided by it.
        chunk_size: tokens processed at once; working memory is O(chunk_size * V).
        stats: if a dict, filled with plain floats worth logging.

    Returns:
        Scalar tensor (float32, or float64 for float64 inputs): mean over counted tokens.

    Raises:
        ValueError: bad shapes, labels out of range, or a hyperparameter out of range.
"""


class _Terms(dict):
    """term -> (N,) per-token values; a term never computed (no counted token) reads as empty."""

    def __missing__(self, key: str) -> Tensor:
        return torch.zeros(0)


def _finish(loss: Tensor, job: _Job, stats: dict | None, extra: Callable[[dict[str, Tensor]], dict]) -> Tensor:
    """Fill ``stats`` (if given) with ``n_tokens`` and the loss-specific floats; return ``loss``."""
    if stats is not None:
        stats["n_tokens"] = float(job.idx.numel())
        stats.update({k: float(v) for k, v in extra(_Terms(job.terms)).items()})
    return loss


def forward_kl(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Forward KL(p_teacher || p_student) per token."""
    hp = _resolve("forward", hparams)
    _check_inputs(student_logits, teacher_logits, labels)
    loss, job = _run(student_logits, teacher_logits, labels, _k_forward, {"kl": 1.0}, hp["temperature"], hp["chunk_size"])
    return _finish(loss, job, stats, lambda t: {})


def reverse_kl(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Reverse KL(p_student || p_teacher) per token."""
    hp = _resolve("reverse", hparams)
    _check_inputs(student_logits, teacher_logits, labels)
    loss, job = _run(student_logits, teacher_logits, labels, _k_reverse, {"kl": 1.0}, hp["temperature"], hp["chunk_size"])
    return _finish(loss, job, stats, lambda t: {})


def jsd(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """The paper's "jsd": forward_ratio * KL(p_t||p_s) + (1 - forward_ratio) * KL(p_s||p_t).

    This is NOT a Jensen-Shannon divergence (that is :func:`gjsd`); it is the mixture of forward and reverse
    KL that the reference code runs under the name ``jsd`` (forward_ratio = 0.9).
    """
    hp = _resolve("jsd", hparams)
    _check_inputs(student_logits, teacher_logits, labels)
    r = hp["forward_ratio"]
    loss, job = _run(
        student_logits, teacher_logits, labels, _k_jsd, {"forward": r, "reverse": 1.0 - r},
        hp["temperature"], hp["chunk_size"],
    )
    return _finish(loss, job, stats, lambda t: {"jsd_forward": _mean(t["forward"]), "jsd_reverse": _mean(t["reverse"])})


def gjsd(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Generalized JSD of GKD: beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s.

    log m is computed in log space (logaddexp). The divergence vanishes at beta = 0 and 1; its normalized
    limits are forward KL (beta -> 0) and reverse KL (beta -> 1), which, as in TRL's GKD trainer, are
    what beta = 0 and beta = 1 compute. beta = 0.5 is the symmetric Jensen-Shannon divergence.
    """
    hp = _resolve("gjsd", hparams)
    beta = hp["beta"]
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, labels, stats=stats, temperature=hp["temperature"], chunk_size=hp["chunk_size"])
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, labels, stats=stats, temperature=hp["temperature"], chunk_size=hp["chunk_size"])
    _check_inputs(student_logits, teacher_logits, labels)
    loss, job = _run(student_logits, teacher_logits, labels, _make_gjsd(beta), {"gjsd": 1.0}, hp["temperature"], hp["chunk_size"])
    return _finish(loss, job, stats, lambda t: {})


def tvd(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Total variation distance 0.5 * sum_v |p_s - p_t| per token (in [0, 1]), over counted tokens."""
    hp = _resolve("tvd", hparams)
    _check_inputs(student_logits, teacher_logits, labels)
    loss, job = _run(student_logits, teacher_logits, labels, _k_tvd, {"tvd": 1.0}, hp["temperature"], hp["chunk_size"])
    return _finish(loss, job, stats, lambda t: {})


def skl(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """DistiLLM's alpha-skew KL: KL(p_t || alpha p_t + (1 - alpha) p_s), alpha = 0.1."""
    hp = _resolve("skl", hparams)
    _check_inputs(student_logits, teacher_logits, labels)
    loss, job = _run(student_logits, teacher_logits, labels, _make_skl(hp["alpha"]), {"skl": 1.0}, hp["temperature"], hp["chunk_size"])
    return _finish(loss, job, stats, lambda t: {})


def srkl(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """DistiLLM's alpha-skew reverse KL: KL(p_s || (1 - alpha) p_t + alpha p_s), alpha = 0.1."""
    hp = _resolve("srkl", hparams)
    _check_inputs(student_logits, teacher_logits, labels)
    loss, job = _run(student_logits, teacher_logits, labels, _make_srkl(hp["alpha"]), {"srkl": 1.0}, hp["temperature"], hp["chunk_size"])
    return _finish(loss, job, stats, lambda t: {})


def dkd(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Decoupled KD: alpha * TCKD + beta * NCKD, each averaged over counted tokens (alpha=1, beta=8).

    TCKD = KL(b_t || b_s) with b = [p[g], 1 - p[g]]; NCKD = KL(phat_t || phat_s) over the non-target
    tokens renormalized. NCKD is not weighted by 1 - p_t[g].
    """
    hp = _resolve("dkd", hparams)
    _check_inputs(student_logits, teacher_logits, labels)
    loss, job = _run(
        student_logits, teacher_logits, labels, _make_decoupled("vanilla"),
        {"tckd": hp["alpha"], "nckd": hp["beta"]}, hp["temperature"], hp["chunk_size"],
    )
    return _finish(loss, job, stats, lambda t: {"dkd_tckd": _mean(t["tckd"]), "dkd_nckd": _mean(t["nckd"])})


def _teacher_uncertainty(
    flat_t: Tensor, idx: Tensor, target: Tensor, temperature: float, chunk_size: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """ATKD's first pass: the teacher's log-normalizer and uncertainty u = 1 - p_t[g] per counted token.

    u is taken as -expm1(log p_t[g]) from one logsumexp per chunk. Where that loses relative precision
    (u < 1e-2, a confident teacher), u is recomputed as the sum of the non-target probabilities (what the
    reference code sums; no cancellation), so that the median split orders confident tokens correctly.

    Args:
        flat_t: (B*T, V) teacher logits. idx, target: (N,) counted positions and their targets.

    Returns:
        lse: (N,) logsumexp of the scaled teacher logits; u: (N,) in [0, 1].
    """
    lse = torch.empty(idx.numel(), dtype=dtype, device=idx.device)  # (N,)
    for start, stop, span in _chunks(idx, chunk_size):
        lse[start:stop] = torch.logsumexp(_scaled(_rows(flat_t, idx[start:stop], span), temperature, dtype, False), -1)
    zg = _scaled(flat_t[idx, target], temperature, dtype, True)  # (N,) scaled target logits
    u = -torch.expm1(zg - lse)  # (N,)
    sharp = (u < 1e-2).nonzero().squeeze(1)  # (M,) positions within idx
    for start in range(0, sharp.numel(), chunk_size):
        rows = sharp[start : start + chunk_size]  # (m,)
        z = _scaled(flat_t.index_select(0, idx[rows]), temperature, dtype, False)  # (m, V)
        p = z.sub_(_col(lse[rows])).exp_().scatter_(1, _col(target[rows]), 0.0)  # (m, V) non-target probs
        u[rows] = p.sum(-1)  # (m,)
    return lse, u


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
    hp = _resolve("atkd", hparams)
    _check_inputs(student_logits, teacher_logits, labels)
    V = student_logits.shape[-1]
    idx, target = _counted(labels, V)
    cdt = _compute_dtype(student_logits)
    temp = hp["temperature"]
    flat_t = teacher_logits.detach().reshape(-1, V)  # (B, T, V) -> (B*T, V)
    lse, u = _teacher_uncertainty(flat_t, idx, target, temp, hp["chunk_size"], cdt)  # (N,), (N,)
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
    loss, job = _run(
        student_logits, teacher_logits, labels, _make_decoupled(hp["setting"]), coef, temp, hp["chunk_size"],
        teacher_lse=lse, idx_target=(idx, target),
    )

    def extra(t: dict[str, Tensor]) -> dict:
        return {
            "atkd_threshold": float(threshold),
            "atkd_n_easy": float(n_easy),
            "atkd_n_hard": float(n_hard),
            "atkd_loss_easy": _mean(t["nckd"][easy]),
            "atkd_loss_hard": _mean((t["tckd"] + t["nckd"])[hard]),
        }

    return _finish(loss, job, stats, extra)


def akl(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Adaptive KL (Wu et al. 2024): w_head * KL(p_t||p_s) + w_tail * KL(p_s||p_t) per token.

    The teacher's head is its top tokens (by probability) whose cumulative probability is <= mu (the top
    token always included); w_head = g_head / (g_head + g_tail) with g = sum of |p_t - p_s| over head / tail,
    w_tail = 1 - w_head. The weights are constants for the gradient (the reference detaches the student
    there). A token with p_t == p_s everywhere gets w = 0.5 / 0.5.
    """
    hp = _resolve("akl", hparams)
    _check_inputs(student_logits, teacher_logits, labels)
    loss, job = _run(student_logits, teacher_logits, labels, _make_akl(hp["mu"]), {"akl": 1.0}, hp["temperature"], hp["chunk_size"])
    return _finish(loss, job, stats, lambda t: {"akl_head_weight": _mean(t["head_weight"])})


def sft(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Cross-entropy of the student on ``labels``; ``teacher_logits`` may be None and is ignored.

    SeqKD is this loss on teacher-generated data.
    """
    hp = _resolve("sft", hparams)
    _check_inputs(student_logits, None, labels)
    loss, job = _run(student_logits, None, labels, _k_sft, {"ce": 1.0}, hp["temperature"], hp["chunk_size"])
    return _finish(loss, job, stats, lambda t: {})


for _fn in (forward_kl, reverse_kl, jsd, gjsd, tvd, skl, srkl, dkd, atkd, akl, sft):
    _fn.__doc__ = (_fn.__doc__ or "") + _SHAPES_DOC

LOSSES: dict[str, Callable[..., Tensor]] = {
    "forward": forward_kl,
    "reverse": reverse_kl,
    "jsd": jsd,
    "gjsd": gjsd,
    "tvd": tvd,
    "skl": skl,
    "srkl": srkl,
    "dkd": dkd,
    "atkd": atkd,
    "akl": akl,
    "sft": sft,
}
