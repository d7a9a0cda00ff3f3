"""Logits only where they count: the output layer applied at the counted positions of a batch.

A training step needs each model's next-token distribution only where the label counts (not at prompt or
padding positions). A forward pre-hook on the output layer (`get_output_embeddings()`, whatever the
architecture calls it) hands it the counted rows of its input, so the model returns logits of shape
(1, N, V) instead of (B, T, V): the output layer's time and the logits' and their gradient's memory follow
the N counted tokens. The same hook can keep those rows (the teacher's final hidden states, the teacher
signal's input) and hand the layer no row at all, when the loss makes the logits itself from them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from kdlm.data.tokenize import IGNORE_INDEX

Tensor = torch.Tensor

# config attributes that put something between the output layer and the logits
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass(frozen=True)
class CountedRows:
    """Where a batch's labels count, for logits aligned with `labels[:, 1:]`.

    Attributes:
        positions: (N,) flat positions in the model's (B*T) output grid; position t predicts token t+1.
        targets: (N,) the token each predicts.
        per_row: (B,) how many of them each row holds (rows are row-major in `positions`).
    """

    positions: Tensor
    targets: Tensor
    per_row: Tensor

    @classmethod
    def of(cls, labels: Tensor) -> CountedRows:
        """From a batch's unshifted `labels` (B, T), IGNORE_INDEX where a token does not count."""
        counted = torch.zeros_like(labels, dtype=torch.bool)  # (B, T)
        counted[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        positions = counted.reshape(-1).nonzero().squeeze(1)  # (N,)
        return cls(positions, labels[:, 1:][counted[:, :-1]], counted.sum(1))

    @property
    def labels(self) -> Tensor:
        """(1, N) targets: the labels of (1, N, V) logits, every one counted."""
        return self.targets.view(1, -1)


def output_layer(model) -> torch.nn.Module:
    """The module that maps final hidden states to logits (unwrapping DDP's wrapper)."""
    return getattr(model, "module", model).get_output_embeddings()


def is_plain_linear_head(model) -> bool:
    """Whether the logits are exactly `hidden @ W.T (+ b)` of the output layer: nothing (soft-capping,
    scaling) is applied after it, so the logits can be recomputed from the hidden states alone."""
    inner = getattr(model, "module", model)
    layer = inner.get_output_embeddings()
    if type(layer) is not torch.nn.Linear:
        return False
    config = getattr(inner, "config", None)
    return not any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS)


@contextlib.contextmanager
def counted_outputs(model, positions: Tensor, keep: list | None = None, logits: bool = True) -> Iterator[None]:
    """While active, `model`'s forward returns logits only at `positions` (N,) of its (B*T) grid: (1, N, V).

    `keep`, if a list, receives the output layer's input rows (1, N, d); with `logits=False` the layer is
    handed none of them (the logits come out (1, 0, V)), for a caller that makes logits from `keep` itself.
    """

    def take_rows(module, args):
        hidden = args[0]  # (B, T, d)
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions).unsqueeze(0)  # (1, N, d)
        if keep is not None:
            keep.append(rows)
        return (rows if logits else rows[:, :0], *args[1:])

    handle = output_layer(model).register_forward_pre_hook(take_rows)
    try:
        yield
    finally:
        handle.remove()
