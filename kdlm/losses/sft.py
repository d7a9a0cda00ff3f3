"""Supervised fine-tuning: the student's cross-entropy on the labels (SeqKD on teacher-generated data)."""

from __future__ import annotations

import torch

from kdlm.losses.engine import Tensor, check_inputs, col, finish, run, with_shapes_doc
from kdlm.methods import resolve_hparams

__all__ = ["sft", "sft_kernel"]


def sft_kernel(ls, lt, target, w, ws, out):
    """Cross-entropy -log p_s[g]; d/dz_s = p_s - onehot(g)."""
    tg = col(target)  # (n, 1)
    ce = -ls.gather(1, tg).squeeze(1)  # (n,)
    if w is not None:
        wc = col(w["ce"])  # (n, 1)
        torch.mul(ls.exp_(), wc, out=out).scatter_add_(1, tg, -wc)  # (n, V)
    return {"ce": ce}


@with_shapes_doc
def sft(student_logits, teacher_logits, labels, *, stats=None, **hparams) -> Tensor:
    """Cross-entropy of the student on ``labels``; ``teacher_logits`` may be None and is ignored.

    SeqKD is this loss on teacher-generated data.
    """
    hp = resolve_hparams("sft", hparams)
    check_inputs(student_logits, None, labels)
    loss, job = run(student_logits, None, labels, sft_kernel, {"ce": 1.0}, hp["temperature"], hp["chunk_size"])
    return finish(loss, job, stats, lambda t: {})

