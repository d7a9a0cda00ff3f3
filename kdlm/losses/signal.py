"""The teacher's signal as the losses take it: logits, or the input of its output layer (docs/design.md,
"Teacher signal cache").

Every loss accepts, where it takes ``teacher_logits``, either a ``(B, T, V)`` logits tensor or a
:class:`HiddenStates`: the teacher's final hidden states with its output layer. The chunk engine asks
either for one chunk's rows at a time (:func:`teacher_rows`), so hidden states cost one ``(n, d) x (d, V)``
matmul per chunk and the teacher's ``(B, T, V)`` logits never exist. The cached teacher signal's exact
mode and the live teacher both arrive here as hidden states; a fused student output layer could take the
same seam later.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class HiddenStates:
    """Teacher logits as ``hidden @ weight[:vocab].T (+ bias)``, computed a chunk of rows at a time.

    Attributes:
        hidden: (..., d) the input of the teacher's output layer, one row per position of the logits.
        weight: (V_out, d) the output layer's weight (V_out >= vocab: padded vocabularies are cut).
        bias: (V_out,) or None.
        vocab: V, the logits' last dimension.
    """

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    vocab: int

    def __post_init__(self) -> None:
        if self.hidden.shape[-1] != self.weight.shape[1]:
            raise ValueError(
                f"teacher hidden size {self.hidden.shape[-1]} != output layer input size {self.weight.shape[1]}"
            )
        if self.weight.shape[0] < self.vocab:
            raise ValueError(f"teacher output layer has {self.weight.shape[0]} rows, fewer than the vocabulary {self.vocab}")

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.hidden.shape[:-1], self.vocab))  # (..., V) like the logits it stands for

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    def flat(self) -> HiddenStates:
        """The same signal with one row per position: (N, d)."""
        hidden = self.hidden.detach().reshape(-1, self.hidden.shape[-1])
        return HiddenStates(hidden, self.weight.detach(), None if self.bias is None else self.bias.detach(), self.vocab)

    def rows(self, idx: Tensor, span: tuple[int, int] | None, out: Tensor | None = None) -> Tensor:
        """Logits of the flat rows ``idx`` (n,) (``span`` = ``(lo, hi)`` when they are contiguous): (n, V)."""
        h = self.hidden[span[0] : span[1]] if span is not None else self.hidden.index_select(0, idx)  # (n, d)
        w = self.weight[: self.vocab]  # (V, d)
        if out is not None and out.dtype != h.dtype:
            out = None
        if self.bias is None:
            return torch.matmul(h, w.t(), out=out) if out is not None else h @ w.t()  # (n, V)
        return torch.addmm(self.bias[: self.vocab], h, w.t(), out=out) if out is not None else torch.addmm(
            self.bias[: self.vocab], h, w.t())  # fmt: skip


TeacherInput = Tensor | HiddenStates


def flatten_teacher(teacher: TeacherInput | None, vocab: int) -> TeacherInput | None:
    """(B, T, V) logits -> (B*T, V); hidden states -> (B*T, d) rows; None stays None."""
    if teacher is None:
        return None
    if isinstance(teacher, HiddenStates):
        return teacher.flat()
    return teacher.detach().reshape(-1, vocab)


def teacher_rows(flat: TeacherInput, idx: Tensor, span: tuple[int, int] | None, out: Tensor | None = None) -> Tensor:
    """Rows ``idx`` (n,) of flat teacher logits (B*T, V) or hidden states: (n, V); a view when contiguous logits.

    ``out`` (n, V), when given and of the right dtype, receives hidden-state logits (no fresh allocation).
    """
    if isinstance(flat, HiddenStates):
        return flat.rows(idx, span, out)
    return flat[span[0] : span[1]] if span is not None else flat.index_select(0, idx)  # (n, V)
