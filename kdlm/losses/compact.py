"""The compact teacher signal: per token the teacher's top-k log-probabilities, the target's, and the rest.

Every loss then runs on a (k+2)-way distribution: the k top ids, the target (a slot of probability 0 when it
is among the top k), and one bucket for every other token. The student's side is collapsed the same way
from its full logits (the bucket's logit is the log-sum-exp of the tokens in it), so its gradient reaches
every vocabulary entry through autograd. The target's log-probability is the teacher's exactly, so ATKD's
uncertainty 1 - p_teacher(target) is exact; the rest of each loss is an approximation whose error
`kdlm bench train` reports. Temperatures other than 1 scale the bucket like a logit (an approximation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor
_NEG_INF = float("-inf")


@dataclass(frozen=True)
class TopK:
    """Per counted token: ids (N, k), their log-probabilities (N, k), the target's (N,), the rest's (N,)."""

    ids: Tensor
    logprobs: Tensor
    target_logprob: Tensor
    rest_logprob: Tensor

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    @classmethod
    def from_logits(cls, logits: Tensor, targets: Tensor, k: int, chunk_size: int = 1024) -> TopK:
        """The top-k signal of (N, V) teacher logits for (N,) targets, a chunk of rows at a time."""
        k = max(1, min(k, logits.shape[1] - 2))  # leave the bucket at least one token
        parts = []
        for start in range(0, logits.shape[0], chunk_size):
            lp = torch.log_softmax(logits[start : start + chunk_size].float(), -1)  # (n, V)
            tgt = targets[start : start + chunk_size, None]  # (n, 1)
            values, ids = lp.topk(k, -1)  # (n, k)
            target_lp = lp.gather(1, tgt).squeeze(1)  # (n,)
            rest = lp.scatter(1, ids, _NEG_INF).scatter_(1, tgt, _NEG_INF).logsumexp(-1)  # (n,)
            parts.append((ids, values, target_lp, rest))
        if not parts:
            empty = logits.new_zeros((0, k), dtype=torch.float32)
            return cls(empty.long(), empty, empty[:, 0], empty[:, 0])
        return cls(*(torch.cat(p) for p in zip(*parts, strict=True)))

    def to(self, device: torch.device | str) -> TopK:
        return TopK(self.ids.to(device), self.logprobs.to(device), self.target_logprob.to(device),
                    self.rest_logprob.to(device))  # fmt: skip


def collapse(student_logits: Tensor, signal: TopK, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Student logits (N, V) and the top-k signal as (N, k+2) logits of both, with the (N,) collapsed targets.

    Columns: the k top ids, the target (minus infinity where it is among the top k), the rest.
    """
    zs = student_logits.float()  # (N, V)
    ids, k = signal.ids.long(), signal.k
    tgt = targets.long()[:, None]  # (N, 1)
    in_top = ids == tgt  # (N, k)
    listed = in_top.any(1)  # (N,)
    support = torch.cat([ids, tgt], 1)  # (N, k+1)
    cols = zs.gather(1, support)  # (N, k+1)
    duplicate = torch.zeros_like(cols, dtype=torch.bool)
    duplicate[:, k] = listed
    cols = cols.masked_fill(duplicate, _NEG_INF)  # (N, k+1)
    rest = zs.scatter(1, support, _NEG_INF).logsumexp(-1, keepdim=True)  # (N, 1)
    student = torch.cat([cols, rest], 1)  # (N, k+2)
    target_col = signal.target_logprob.float().masked_fill(listed, _NEG_INF)[:, None]  # (N, 1)
    teacher = torch.cat([signal.logprobs.float(), target_col, signal.rest_logprob.float()[:, None]], 1)  # (N, k+2)
    labels = torch.where(listed, in_top.float().argmax(1), torch.full_like(targets.long(), k))  # (N,)
    return student, teacher, labels


def compact_loss(loss_fn, student_logits: Tensor, signal: TopK, targets: Tensor, **kwargs) -> Tensor:
    """`loss_fn` (an entry of :data:`kdlm.losses.LOSSES`) on the collapsed distributions.

    Args:
        student_logits: (N, V) or (1, N, V) at the counted tokens; signal: their teacher top-k;
            targets: (N,) token ids. kwargs: the loss's hyperparameters and `stats`.
    """
    student, teacher, labels = collapse(student_logits.reshape(-1, student_logits.shape[-1]), signal, targets.reshape(-1))
    return loss_fn(student.unsqueeze(0), teacher.unsqueeze(0), labels.unsqueeze(0), **kwargs)
