"""Turn (prompt, response) pairs into model inputs whose labels count only the response and its EOS."""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100


def encode_example(tokenizer, prompt: str, response: str, max_length: int) -> dict[str, list[int]]:
    """Token ids of prompt + response + EOS, with labels = -100 over the prompt.

    Prompt and response are tokenized separately so the boundary is exact and generation (which
    starts from the prompt's tokens) sees the same token sequence as training. Overlong examples
    are cut from the left of the prompt, keeping the response whole where it fits.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    response_ids = response_ids[:max_length]
    keep = max_length - len(response_ids)
    prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep > 0 else []
    input_ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    return {"input_ids": input_ids, "labels": labels}


def collate(examples: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict:
    """Right-pad a batch; attention_mask marks real tokens, padded labels are -100."""

    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"])
        labels[row, :n] = torch.tensor(example["labels"])
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
