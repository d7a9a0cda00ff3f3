"""The files of a cached teacher signal and how distillation reads them.

A cache is a directory::

    signal.json               what it was made with (fingerprint), its mode, sizes, parts, build time
    output_layer.safetensors  exact mode: the teacher output layer's weight (and bias)
    part-00000.safetensors    per part: `index` (n,) example rows of the training file, `count` (n,) their
                              counted tokens, then per token either `hidden` (M, d) (exact) or `ids` (M, k),
                              `logprobs` (M, k), `target_logprob` (M,), `rest_logprob` (M,) (compact)

Parts are read through safetensors' memory map, one example's rows at a time, so a cache larger than host
memory can be read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kdlm.losses.compact import TopK
from kdlm.teacher_cache.fingerprint import differences

SIGNAL_FILE = "signal.json"
OUTPUT_LAYER_FILE = "output_layer.safetensors"
EXACT_TENSORS = ("hidden",)
COMPACT_TENSORS = ("ids", "logprobs", "target_logprob", "rest_logprob")


def part_name(k: int) -> str:
    return f"part-{k:05d}.safetensors"


class TeacherSignalCache:
    """A finished cache, opened for reading.

    Raises (on open):
        FileNotFoundError: `path` holds no signal.json (not a cache, or one whose build did not finish).
        ValueError: a part that lists an example twice.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_file = self.path / SIGNAL_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path}: not a finished teacher signal cache (no {SIGNAL_FILE})")
        self.meta = json.loads(meta_file.read_text())
        self.mode: str = self.meta["mode"]
        self._files = []
        self._where: dict[int, tuple[int, int, int]] = {}  # example row -> (part, first token, tokens)
        for k, name in enumerate(self.meta["parts"]):
            handle = safe_open(str(self.path / name), framework="pt")
            index, count = handle.get_tensor("index").tolist(), handle.get_tensor("count").tolist()
            start = 0
            for row, n in zip(index, count, strict=True):
                if row in self._where:
                    raise ValueError(f"{self.path / name}: example {row} is listed twice")
                self._where[row] = (k, start, n)
                start += n
            self._files.append(handle)

    @property
    def fingerprint(self) -> dict:
        return self.meta["fingerprint"]

    def check(self, run_fingerprint: dict) -> None:
        """Raise ValueError naming every component in which this run differs from what the cache was made with."""
        diff = differences(self.fingerprint, run_fingerprint)
        if diff:
            raise ValueError(
                f"teacher signal cache {self.path} was made with " + "; ".join(diff)
                + f". Rebuild it (delete {self.path}) or distill with the live teacher (no --teacher-signal)"
            )

    def covers(self, row: int) -> bool:
        return row in self._where

    def _rows(self, name: str, rows: list[int], counts: list[int]) -> torch.Tensor:
        pieces = []
        for row, n in zip(rows, counts, strict=True):
            if row not in self._where:
                raise KeyError(f"teacher signal cache {self.path}: no example {row} (it holds the offline rows only)")
            part, start, cached = self._where[row]
            if cached != n:
                raise ValueError(
                    f"teacher signal cache {self.path}: example {row} has {cached} counted tokens in the cache "
                    f"and {n} in this batch; it was made from other data or tokenization"
                )
            pieces.append(self._files[part].get_slice(name)[start : start + n])
        return torch.cat(pieces)

    def hidden(self, rows: list[int], counts: list[int]) -> torch.Tensor:
        """Exact mode: (sum(counts), d) final hidden states of the rows' counted tokens, in row order."""
        return self._rows("hidden", rows, counts)

    def topk(self, rows: list[int], counts: list[int]) -> TopK:
        """Compact mode: the rows' counted tokens' top-k signal, in row order."""
        return TopK(*(self._rows(name, rows, counts) for name in COMPACT_TENSORS))

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Exact mode: the teacher output layer's (V_out, d) weight and (V_out,) bias or None."""
        tensors = load_file(str(self.path / OUTPUT_LAYER_FILE))
        return tensors["weight"], tensors.get("bias")
