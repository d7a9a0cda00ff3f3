"""A teacher's uncertainty on a training file: 1 − p_teacher(target) at every counted response token.

ATKD splits each batch's tokens at the median of this quantity (easy below, hard above), and the paper
traces "a larger teacher is not always better" to how it is distributed. The claims report plots it per
teacher and compares its means, so it is measured over the same sequences the trainer sees: the same
tokenizer, template and `max_length`, and only where a label counts.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kdlm.models import load_model, load_tokenizer
from kdlm.teacher_cache.build import effective_max_length
from kdlm.training.data import ExampleDataset, collate_indexed, load_rows
from kdlm.training.output_rows import CountedRows, counted_outputs


@torch.no_grad()
def teacher_uncertainty(teacher: str, data: Path, template: str, max_length: int,
                        batch_size: int = 32) -> tuple[list[int], list[float]]:  # fmt: skip
    """(training row, uncertainty) of every counted token of `data`'s offline rows, in row order.

    Raises:
        ValueError: for a file whose rows are generated during training (no fixed target to score).
    """
    rows = load_rows(Path(data), template)
    if rows.n_online:
        raise ValueError(f"{data}: {rows.n_online} rows are generated during training (source {rows.source!r}); "
                         "uncertainty is measured on offline rows only")  # fmt: skip
    tokenizer = load_tokenizer(teacher)
    model = load_model(teacher).eval()
    length = effective_max_length(max_length, model.config)
    dataset = ExampleDataset(rows.prompts, rows.responses, tokenizer, length)
    row_ids: list[int] = []
    values: list[float] = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="teacher uncertainty", unit="batch",
                      total=math.ceil(len(dataset) / batch_size)):  # fmt: skip
        batch = collate_indexed([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))],
                                tokenizer.pad_token_id)  # fmt: skip
        counted = CountedRows.of(batch["labels"])
        with counted_outputs(model, counted.positions):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        logp = torch.log_softmax(logits[0, :, : len(tokenizer)].float(), dim=-1)  # (N, V)
        p_target = logp.gather(1, counted.targets.unsqueeze(1)).squeeze(1).exp()  # (N,)
        values += (1.0 - p_target).tolist()
        row_ids += batch["index"].repeat_interleave(counted.per_row).tolist()
    return row_ids, values
