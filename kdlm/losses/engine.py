"""The chunk engine every loss runs on: counted rows, chunks, workspace, the autograd Function.

Only counted tokens are processed: their row numbers are gathered first and then visited in chunks of
``chunk_size`` tokens. For each chunk one softmax (or log-softmax) per model is taken (in float32, or
float64 for float64 inputs) and handed to the loss's *kernel*, which returns the per-token terms and writes the
gradient rows of the chunk into one preallocated buffer of the student's shape and dtype. A custom
:class:`torch.autograd.Function` hands that buffer to autograd, so no full-size intermediate is kept
for the backward pass: working memory beyond inputs and gradient is O(chunk_size x V) (docs/design.md,
"Losses").

A kernel says which buffers it reads (``kernel.uses``, :func:`uses`): log-probabilities and / or
probabilities of each model. Probabilities come from one ``softmax`` (whose vectorized exp is cheaper
than that of ``torch.exp``) and the log-softmax from them with a shift per row (:func:`softmax_and_log`):
one exp per entry instead of the two of a log-softmax followed by ``exp``; log-probabilities the kernel
does not read are not stored. When every position counts (the trainer hands the losses ``(1, N, V)``
logits of the counted positions only), the gradient buffer needs no zeroing; otherwise only the gaps
between counted rows are zeroed.

A kernel is either hand-derived (the loss and its analytic gradient from a few element-wise passes, as
every loss in :data:`kdlm.losses.LOSSES` is) or a plain per-token function wrapped by
:func:`per_token`, whose gradient autograd takes chunk by chunk; :func:`per_token_loss` makes a public
loss out of such a function.

Logits of ``-inf`` are first used as they are; when a chunk's terms come out non-finite (``0 * log 0``)
the chunk is redone with them replaced by ``NEG_LARGE`` (probability exactly 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from kdlm.losses.signal import HiddenStates, TeacherInput, flatten_teacher, teacher_rows
from kdlm.methods import COMMON, resolve_hparams

# Shapes used in comments throughout the package:
#   B = batch size, T = sequence length, V = vocabulary size,
#   N = number of counted tokens (labels != IGNORE_INDEX), n = tokens in one chunk (<= chunk_size).
IGNORE_INDEX = -100
NEG_LARGE = -1e30  # stands in for -inf logits: exp() is exactly 0, arithmetic stays finite

Tensor = torch.Tensor


class Workspace:
    """Named (chunk_size, V) buffers in the compute dtype, reused by the chunks of a loss call.

    Reusing them (instead of allocating fresh temporaries per chunk) keeps the allocator from mapping and
    faulting in new pages for every chunk, and bounds working memory to a few chunk-sized buffers. On
    CPU the last call's workspace is also kept for the next call (:func:`acquire_workspace`): a training
    step's loss then faults in no new pages for it.

    A log-probability buffer the kernel does not read ("ls" or "lt" outside ``kernel.uses``) is made only
    if asked for (:meth:`log_probs`), from the chunk's scaled logits and the per-row log-normalizer the
    engine keeps (:meth:`defer_log`).
    """

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device):
        self.rows, self.vocab, self.dtype, self.device = rows, vocab, dtype, device
        self._bufs: dict[str, Tensor] = {}
        self._deferred: dict[str, tuple[Tensor, Tensor, Tensor]] = {}  # name -> (z, ref, c)

    def __call__(self, name: str, n: int) -> Tensor:
        """The first ``n`` rows of buffer ``name``: (n, V)."""
        if name not in self._bufs:
            self._bufs[name] = torch.empty(self.rows, self.vocab, dtype=self.dtype, device=self.device)
        return self._bufs[name][:n]  # (chunk_size, V) -> (n, V)

    def defer_log(self, name: str, z: Tensor, ref: Tensor, c: Tensor) -> None:
        """Keep what :meth:`log_probs` needs to make ``name`` = (z - ref) + c later: z (n, V), ref, c (n, 1)."""
        self._deferred[name] = (z, ref, c)

    def log_probs(self, name: str, n: int) -> Tensor:
        """The chunk's log-probabilities ``name`` ("ls", "lt"): (n, V), made now if they were deferred."""
        if name in self._deferred:
            z, ref, c = self._deferred.pop(name)
            torch.sub(z, ref, out=self(name, n)).add_(c)  # (n, V)
        return self(name, n)

    def log_parts(self, name: str, n: int) -> tuple[Tensor, Tensor]:
        """The chunk's log-probabilities ``name`` without storing them: (z, off) with log p = z + off per row,
        z (n, V) the scaled logits, off (n,) float64 minus their logsumexp; to be added in float64.

        Stored log-probabilities come as (log p, 0), as do deferred ones whose reference logit is so large
        (e.g. a row of NEG_LARGE only) that z + off would lose them (then they are stored now).
        """
        if name in self._deferred:
            z, ref, c = self._deferred[name]
            if self.device.type == "cpu":  # numpy: cheaper than torch for (n,) vectors
                r, c_ = ref.numpy().astype(np.float64).reshape(n), c.numpy().astype(np.float64).reshape(n)
                if np.all(np.abs(r) <= _FOLD_MAX):
                    return z, torch.from_numpy(c_ - r)  # (n,)
            elif bool((ref.abs() <= _FOLD_MAX).all()):
                return z, (c.to(torch.float64) - ref.to(torch.float64)).reshape(n)  # (n,)
            self.log_probs(name, n)
        return self(name, n), torch.zeros(n, dtype=torch.float64, device=self.device)

    def next_chunk(self) -> None:
        """Forget the previous chunk's deferred log-probabilities."""
        self._deferred.clear()

    def nbytes(self) -> int:
        """The bytes its buffers hold."""
        return sum(b.numel() * b.element_size() for b in self._bufs.values())


_FOLD_MAX = 2.0**20  # |z[j]| up to which z + (log p[j] - z[j]) in float64 is off by at most 2**-32
_KEPT: list[Workspace] = []  # the last CPU workspace, kept for the next loss call
_KEEP_MAX_BYTES = 2**28  # a larger workspace (e.g. chunk_size 256 at a 128k vocabulary) is not kept


def acquire_workspace(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> Workspace:
    """A workspace of at least ``rows`` rows: on CPU the kept one when it fits, else a new one.

    Taken out of the keep while in use, so that two calls at once never share one.
    """
    if device.type == "cpu":
        try:
            ws = _KEPT.pop()
        except IndexError:  # none kept (or another thread took it)
            ws = None
        if ws is not None and ws.rows >= rows and (ws.vocab, ws.dtype, ws.device) == (vocab, dtype, device):
            return ws
    return Workspace(rows, vocab, dtype, device)


def release_workspace(ws: Workspace) -> None:
    """Keep ``ws`` (CPU, up to ``_KEEP_MAX_BYTES``) for the next loss call, in place of any kept before."""
    if ws.device.type == "cpu" and ws.nbytes() <= _KEEP_MAX_BYTES:
        ws.next_chunk()  # no reference to the call's tensors stays behind
        _KEPT[:] = [ws]


# A kernel maps one chunk's log-probabilities to per-token terms and writes the gradient of the chunk's
# loss.  Arguments:
#   ls, lt: (n, V) student / teacher log-softmax in the compute dtype (lt is None for sft); workspace
#           buffers that the kernel may overwrite.
#   target: (n,) int64 target token ids.
#   w: term -> (n,) weight of that term in the loss, already divided by the temperature, or None when no
#      gradient is wanted.
#   ws: the workspace, for temporaries (names other than "ls", "lt", "ps", "pt", "in", "in_t", "zs", "tz",
#       "out").
#   out: (n, V) where to write the gradient of sum_k sum_i w[k][i] * terms[k][i] with respect to the
#        student's *scaled* logits (None when w is None).
# It returns terms: a name -> (n,) per-token values.
# ``kernel.uses`` (optional, see :func:`uses`): the buffers the kernel reads, among "ls", "lt" (the
# log-probabilities, passed as ``ls`` / ``lt``) and "ps", "pt" (the probabilities, which the engine fills
# into ws("ps", n) = exp(ls), ws("pt", n) = exp(lt) before the call); the kernel may overwrite them.
# Without it: ("ls", "lt"). Log-probabilities not in it come as None; ws.log_probs("ls", n) makes them
# when needed after all (e.g. for the rare entries where a mixture underflows).
# A kernel whose CPU path is fused per row (numba, the family's ``*_rows`` module) keeps its tensor-op
# version, the one that runs on other devices, as ``kernel.on_device``.
Kernel = Callable[
    [Tensor, Tensor | None, Tensor, dict[str, Tensor] | None, Workspace, Tensor | None], dict[str, Tensor]
]
BUFFERS = ("ls", "lt", "ps", "pt")  # what a kernel may ask the engine for
DEFAULT_USES = ("ls", "lt")


def uses(kernel: Kernel, *names: str) -> Kernel:
    """Mark ``kernel`` as reading the buffers ``names`` (of :data:`BUFFERS`); returns it.

    The engine makes only those: probabilities and log-probabilities together from one softmax per
    model (:func:`softmax_and_log`), where a kernel taking ``exp`` of the log-softmax would pay a second
    exp per entry (and torch's ``exp`` is slower than the one inside ``softmax``); a log-probability
    the kernel does not read costs two light passes less.
    """
    if not set(names) <= set(BUFFERS):
        raise ValueError(f"kernel buffers are {BUFFERS}, got {names}")
    kernel.uses = tuple(names)
    return kernel


def softmax_and_log(z: Tensor, log_p: Tensor | None, p: Tensor, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Probabilities of the rows of ``z`` (n, V) into ``p`` and their log-probabilities into ``log_p``, one softmax.

    ``p`` = softmax(z); ``log_p`` = (z - z[j]) + log p[j], the log-normalizer read off one entry j per
    row: the target's (``target`` (n,)) where its probability is a normal float well above underflow (one
    gather), else the largest (two maxima; max p >= 1/V). So one exp per entry (the softmax's), where
    log_softmax followed by exp takes two; the arithmetic of ``log_p`` is log_softmax's (a difference of
    logits, then the log-normalizer). With ``log_p`` None only ``p`` is written.

    Returns:
        (z[j], log p[j]), each (n, 1): ``log_p`` = (z - z[j]) + log p[j].
    """
    torch.softmax(z, -1, out=p)  # (n, V)
    ref = c = None
    if target is not None:
        tg = col(target)  # (n, 1)
        pg = p.gather(1, tg)  # (n, 1)
        if bool((pg >= torch.finfo(p.dtype).tiny * 2.0**10).all()):
            ref, c = z.gather(1, tg), pg.log_()  # (n, 1) each
    if ref is None:
        ref = z.amax(-1, keepdim=True)  # (n, 1)
        c = p.amax(-1, keepdim=True).log_()  # (n, 1) log max p = max z - logsumexp(z)
    if log_p is not None:
        torch.sub(z, ref, out=log_p).add_(c)  # (n, V)
    return ref, c


@dataclass
class _Job:
    """Everything the autograd Function needs besides the logits."""

    kernel: Kernel
    idx: Tensor  # (N,) flat positions in B*T of the counted tokens
    target: Tensor  # (N,) their target ids
    coef: dict[str, Tensor]  # term -> (N,) weight of that term in the loss
    temperature: float
    chunk_size: int
    teacher: HiddenStates | None = None  # the teacher as hidden states (not a tensor autograd could save)
    terms: dict[str, Tensor] = field(default_factory=dict)  # filled: term -> (N,) per-token values


def compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_inputs(student_logits: Tensor, teacher_logits: TeacherInput | None, labels: Tensor) -> None:
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


def counted_rows(labels: Tensor, vocab: int) -> tuple[Tensor, Tensor]:
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


def chunks(idx: Tensor, chunk_size: int) -> list[tuple[int, int, tuple[int, int] | None]]:
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


def take_rows(flat: Tensor, idx: Tensor, span: tuple[int, int] | None, out: Tensor | None = None) -> Tensor:
    """Rows of ``flat`` (B*T, V) at ``idx`` (n,): a view when contiguous, else a gathered (n, V) copy.

    The copy goes into ``out`` (n, V) when it is given and of ``flat``'s dtype (no fresh allocation per chunk).
    """
    if span is not None:
        return flat[span[0] : span[1]]  # (n, V)
    if out is not None and out.dtype == flat.dtype:
        return torch.index_select(flat, 0, idx, out=out)  # (n, V)
    return flat.index_select(0, idx)  # (n, V)


def scaled(z: Tensor, temperature: float, dtype: torch.dtype, clamp: bool, buf: Tensor | None = None) -> Tensor:
    """(n, V) logits -> (n, V) logits / temperature in ``dtype``; -inf -> NEG_LARGE when ``clamp``.

    Returns ``z`` itself when nothing is to be done; otherwise writes into ``buf`` (n, V) if given.
    """
    if z.dtype == dtype and temperature == 1.0 and not clamp:
        return z
    out = buf.copy_(z) if buf is not None else z.to(dtype, copy=True)  # (n, V)
    if clamp:
        out.clamp_(min=NEG_LARGE)
    return out if temperature == 1.0 else out.div_(temperature)


def _model(z: Tensor, ws: Workspace, n: int, log_name: str, prob_name: str, used: tuple[str, ...],
           target: Tensor) -> Tensor | None:  # fmt: skip
    """One model's buffers for the kernel from its scaled logits ``z`` (n, V); returns its log-probabilities.

    Probabilities (ws(prob_name)) only when used; log-probabilities (ws(log_name)) made when used, else
    deferred (None is returned).
    """
    if prob_name in used:
        log_p = ws(log_name, n) if log_name in used else None
        ref, c = softmax_and_log(z, log_p, ws(prob_name, n), target)
        if log_p is None:
            ws.defer_log(log_name, z, ref, c)
        return log_p
    return torch.log_softmax(z, -1, out=ws(log_name, n))  # (n, V)


def zero_uncounted(grad: Tensor, idx: Tensor) -> None:
    """Zero the rows of ``grad`` (B*T, V) that are not in ``idx`` (N,) ascending: the gaps between counted rows.

    Nothing to do when every row counts (the trainer's (1, N, V) logits); prompt and padding are runs of
    rows, each zeroed with one fill.
    """
    rows = grad.shape[0]
    if idx.numel() == rows:
        return
    prev = 0
    for pos in idx.tolist() + [rows]:
        if pos > prev:
            grad[prev:pos].zero_()  # (gap, V)
        prev = pos + 1


def _compute(student_logits: Tensor, teacher_logits: TeacherInput | None, job: _Job, want_grad: bool):
    """Run ``job.kernel`` over the chunks of counted rows.

    Args:
        student_logits, teacher_logits: (B, T, V); teacher may be None (sft) or hidden states
            (:class:`kdlm.losses.signal.HiddenStates`), whose logits are made a chunk at a time.
        job: the rows, term weights and kernel; its ``terms`` are filled with (N,) per-token values.
        want_grad: also build the gradient.

    Returns:
        (scalar loss in the compute dtype, (B*T, V) gradient w.r.t. the student logits or None).
    """
    V = student_logits.shape[-1]
    cdt = compute_dtype(student_logits)
    flat_s = student_logits.detach().reshape(-1, V)  # (B, T, V) -> (B*T, V)
    flat_t = flatten_teacher(teacher_logits, V)  # (B*T, V) logits or (B*T, d) hidden states
    grad = None
    if want_grad:
        grad = torch.empty_like(flat_s)  # (B*T, V)
        zero_uncounted(grad, job.idx)
    total = torch.zeros((), dtype=cdt, device=student_logits.device)
    pieces: dict[str, list[Tensor]] = {}
    temp = job.temperature
    used = getattr(job.kernel, "uses", DEFAULT_USES)
    ws = acquire_workspace(min(job.chunk_size, max(job.idx.numel(), 1)), V, cdt, student_logits.device)
    for start, stop, span in chunks(job.idx, job.chunk_size):
        n = stop - start
        idx_c = job.idx[start:stop]  # (n,)
        tgt = job.target[start:stop]  # (n,)
        w = {k: v[start:stop] / temp for k, v in job.coef.items()} if want_grad else None  # (n,) each
        direct = grad is not None and span is not None and grad.dtype == cdt
        out = None if w is None else grad[span[0] : span[1]] if direct else ws("out", n)  # (n, V)
        zs_raw = take_rows(flat_s, idx_c, span, ws("zs", n))  # (n, V)
        zt_raw = None
        if isinstance(flat_t, Tensor):
            zt_raw = take_rows(flat_t, idx_c, span, ws("tz", n))  # (n, V)
        elif flat_t is not None:
            zt_raw = teacher_rows(flat_t, idx_c, span, ws("tz", n))  # (n, V) hidden states x output layer
        for clamp in (False, True):
            ws.next_chunk()
            zs = scaled(zs_raw, temp, cdt, clamp, ws("in", n))  # (n, V)
            ls = _model(zs, ws, n, "ls", "ps", used, tgt)
            lt = None
            if zt_raw is not None:
                # the student's scaled logits stay in "in" while its log-probabilities are deferred
                zt = scaled(zt_raw, temp, cdt, clamp, ws("in" if ls is not None else "in_t", n))  # (n, V)
                lt = _model(zt, ws, n, "lt", "pt", used, tgt)
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
    release_workspace(ws)
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
        total, grad = _compute(student_logits, job.teacher if teacher_logits is None else teacher_logits, job, want_grad)
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
            teacher = ctx.job.teacher if teacher_logits is None else teacher_logits
            _, grad = _compute(student_logits, teacher, ctx.job, True)
            shape = student_logits.shape
        else:
            shape = ctx.saved_tensors[0].shape
        if bool(grad_loss != 1):
            grad.mul_(grad_loss.to(grad.dtype))  # we own the buffer: no second full-size tensor
        return grad.view(shape), None, None  # (B*T, V) -> (B, T, V)


def run(
    student_logits: Tensor,
    teacher_logits: TeacherInput | None,
    labels: Tensor,
    kernel: Kernel,
    coef: dict[str, float] | dict[str, Tensor],
    temperature: float,
    chunk_size: int,
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
    idx, target = idx_target if idx_target is not None else counted_rows(labels, V)
    cdt = compute_dtype(student_logits)
    if all(isinstance(v, (int, float)) for v in coef.values()):
        n = max(idx.numel(), 1)
        coef = {k: torch.full((idx.numel(),), v / n, dtype=cdt, device=idx.device) for k, v in coef.items()}
    hidden = teacher_logits if isinstance(teacher_logits, HiddenStates) else None
    job = _Job(kernel, idx, target, coef, float(temperature), int(chunk_size), hidden)
    loss = _ChunkedLoss.apply(student_logits, None if hidden is not None else teacher_logits, job)
    return loss, job


def dot_(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product that overwrites ``a`` (no temporary): (n, V), (n, V) -> (n,)."""
    return a.mul_(b).sum(-1)


def col(x: Tensor) -> Tensor:
    return x.unsqueeze(1)  # (n,) -> (n, 1)


def mean_of(t: Tensor) -> float:
    return float(t.mean()) if t.numel() else 0.0


SHAPES_DOC = """
    Args:
        student_logits: (B, T, V) student logits (any float dtype; computed in float32, or float64).
        teacher_logits: (B, T, V) teacher logits, or its hidden states and output layer
            (:class:`kdlm.losses.signal.HiddenStates`); treated as constants.
        labels: (B, T) int64 targets, already shifted; IGNORE_INDEX (-100) where a token does not count.
        temperature: both models' logits are divided by it.
        chunk_size: tokens processed at once; working memory is O(chunk_size * V).
        stats: if a dict, filled with plain floats worth logging.

    Returns:
        Scalar tensor (float32, or float64 for float64 inputs): mean over counted tokens.

    Raises:
        ValueError: bad shapes, labels out of range, or a hyperparameter out of range.
"""


def with_shapes_doc(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Append the arguments, result and errors every public loss shares to ``fn``'s docstring."""
    fn.__doc__ = (fn.__doc__ or "") + SHAPES_DOC
    return fn


class _Terms(dict):
    """term -> (N,) per-token values; a term never computed (no counted token) reads as empty."""

    def __missing__(self, key: str) -> Tensor:
        return torch.zeros(0)


def finish(loss: Tensor, job: _Job, stats: dict | None, extra: Callable[[dict[str, Tensor]], dict]) -> Tensor:
    """Fill ``stats`` (if given) with ``n_tokens`` and the loss-specific floats; return ``loss``."""
    if stats is not None:
        stats["n_tokens"] = float(job.idx.numel())
        stats.update({k: float(v) for k, v in extra(_Terms(job.terms)).items()})
    return loss


# --------------------------------------------------------------------------------------------------
# The generic path: a per-token function, its gradient from autograd chunk by chunk
# --------------------------------------------------------------------------------------------------

PerToken = Callable[..., Tensor]  # (log_p_student, log_p_teacher, target, **hparams) -> (n,) per-token loss


def per_token(fn: PerToken, term: str = "loss", **hparams) -> Kernel:
    """A kernel from a per-token loss function; its gradient is autograd's, taken one chunk at a time.

    ``fn(log_p_student, log_p_teacher, target, **hparams)`` gets one chunk's (n, V) log-probabilities
    (``log_p_teacher`` is None for a loss without teacher) and (n,) targets and returns the (n,) loss of
    each token, built from differentiable torch ops; it must not modify its inputs. The student's rows
    enter as a chunk-local leaf copy under :func:`torch.enable_grad`; ``fn`` sees its log-softmax, which
    equals the rows (they are log-probabilities already) and has the Jacobian of the log-softmax of the
    scaled logits, so the leaf's gradient is the gradient with respect to the student's scaled logits.
    It is written into the same gradient rows the hand-derived kernels write. Autograd's graph covers
    one chunk, so memory stays O(chunk_size x V); it is freed before the next chunk.
    """

    def kernel(ls, lt, target, w, ws, out):
        if w is None:
            with torch.no_grad():
                return {term: fn(torch.log_softmax(ls, -1), lt, target, **hparams)}
        leaf = ls.detach().clone().requires_grad_()  # (n, V)
        with torch.enable_grad():
            loss = fn(torch.log_softmax(leaf, -1), lt, target, **hparams)  # (n,)
            (g,) = torch.autograd.grad(loss, leaf, grad_outputs=w[term].to(loss.dtype))  # (n, V)
        out.copy_(g)
        return {term: loss.detach()}

    return kernel


def per_token_loss(name: str, fn: PerToken) -> Callable[..., Tensor]:
    """The public loss ``name`` (a key of :data:`kdlm.methods.HPARAMS`) from a per-token function.

    The mean of ``fn`` over counted tokens, with the signature and the hyperparameter checks of every
    loss in :data:`kdlm.losses.LOSSES`; ``fn`` gets the loss's own hyperparameters (not temperature and
    chunk_size) as keyword arguments. ``stats`` gets ``n_tokens``.
    """

    def loss(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
        hp = resolve_hparams(name, hparams)
        check_inputs(student_logits, teacher_logits, labels)
        own = {k: v for k, v in hp.items() if k not in COMMON}
        value, job = run(
            student_logits, teacher_logits, labels, per_token(fn, **own), {"loss": 1.0},
            hp["temperature"], hp["chunk_size"],
        )  # fmt: skip
        return finish(value, job, stats, lambda t: {})

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = fn.__doc__ or f"The per-token loss {name}."
    loss.per_token = fn  # kdlm.losses registers it as `name`; kdlm.losses.reference derives its reference
    loss.loss_name = name
    return with_shapes_doc(loss)
