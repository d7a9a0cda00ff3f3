"""On-policy batches: the responses the student trains on are regenerated every step for online rows.

The paper (Zhong et al., 2024) compares where training responses come from. For the sources whose rows
are marked `online` in the mixed parquet (kdlm.data.mixing), each training step replaces those rows'
offline responses before the loss is computed:

- `student`, `mix_request_teacher`, `mix_request_gt`: the current student answers the online rows'
  prompts with `kdlm.generation.HFBackend` (greedy or sampled per `OnPolicyConfig`);
- `mix_token`: every new token comes from the student with probability `ratio`, otherwise from the
  teacher (`mix_token_generate`); both models decode the same sequence, each with its own KV cache,
  the whole batch at once.

The live student generates in eval mode under `no_grad` and goes back to train mode after, so no copy
of its weights is made (the paper's code copies the state dict every step). Seeds derive from the run's
seed, the optimizer step and the rows' indices, so a resumed run draws what an uninterrupted one does.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import torch

from kdlm.data.tokenize import encode_example
from kdlm.generation import GenerateConfig, HFBackend, prompt_limit, record_seed
from kdlm.study import ONLINE_TOKENS, SOURCES
from kdlm.training.config import OnPolicyConfig, onpolicy_room
from kdlm.training.data import ExampleDataset, TrainingRows, collate_indexed

SampleHook = Callable[[list[dict]], None]  # receives one dict per row of every trained-on batch


def pick_next(logits: torch.Tensor, cfg: OnPolicyConfig, generator: torch.Generator) -> torch.Tensor:
    """Next token per row from `logits` (B, V): argmax, or a top-p sample at `temperature` -> (B,)."""
    if not cfg.sample:
        return logits.argmax(dim=-1)  # (B, V) -> (B,)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)  # (B, V)
    if cfg.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # (B, V) each
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > cfg.top_p  # (B, V): mass before > top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)  # (B, V) back in vocabulary order
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B, 1) -> (B,)


@functools.cache
def _cache_keyword(model_class: type) -> str:
    """The KV-cache argument and output field: ``cache`` since transformers 5.2x, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _step(model, input_ids, attention_mask, position_ids, cache, vocab_size: int):
    key = _cache_keyword(type(getattr(model, "module", model)))
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                **{key: cache})  # fmt: skip
    return out.logits[:, -1, :vocab_size], getattr(out, key)  # (B, T, V') -> (B, V)


@torch.no_grad()
def mix_token_generate(
    student,
    teacher,
    prompt_ids: Sequence[list[int]],
    ratio: float,
    cfg: OnPolicyConfig,
    eos: int,
    pad: int,
    vocab_size: int,
    generator: torch.Generator,
) -> list[list[int]]:
    """New tokens per prompt, each drawn from the student with probability `ratio`, else the teacher.

    Prompts are left-padded into one batch; both models prefill once and then decode the shared
    sequence token by token with their own KV caches. A row stops after its EOS (kept in its
    tokens); the loop stops when every row has or after `cfg.max_new_tokens`.

    Returns:
        One list of new token ids per prompt (ending with `eos` if the row finished).
    """
    device = next(student.parameters()).device
    n, width = len(prompt_ids), max(len(p) for p in prompt_ids)
    input_ids = torch.full((n, width), pad, dtype=torch.long, device=device)  # (B, T) left-padded
    attention_mask = torch.zeros((n, width), dtype=torch.long, device=device)  # (B, T)
    for r, ids in enumerate(prompt_ids):
        input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, width - len(ids) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    s_logits, s_cache = _step(student, input_ids, attention_mask, position_ids, None, vocab_size)
    t_logits, t_cache = _step(teacher, input_ids, attention_mask, position_ids, None, vocab_size)
    done = torch.zeros(n, dtype=torch.bool, device=device)  # (B,)
    new: list[torch.Tensor] = []
    for _ in range(cfg.max_new_tokens):
        from_student = torch.rand(n, generator=generator).to(device) < ratio  # (B,)
        logits = torch.where(from_student[:, None], s_logits, t_logits)  # (B, V)
        token = pick_next(logits, cfg, generator).masked_fill(done, pad)  # (B,)
        new.append(token)
        done |= token == eos
        if bool(done.all()) or len(new) == cfg.max_new_tokens:
            break
        attention_mask = torch.cat([attention_mask, torch.ones((n, 1), dtype=torch.long, device=device)], dim=1)
        position_ids = attention_mask.sum(dim=1, keepdim=True) - 1  # (B, 1)
        step_ids = token[:, None]  # (B,) -> (B, 1)
        s_logits, s_cache = _step(student, step_ids, attention_mask, position_ids, s_cache, vocab_size)
        t_logits, t_cache = _step(teacher, step_ids, attention_mask, position_ids, t_cache, vocab_size)
    tokens = torch.stack(new, dim=1).tolist()  # (B, T_new)
    result = []
    for row in tokens:
        result.append(row[: row.index(eos) + 1] if eos in row else row)
    return result


def _decode(tokens: list[int], eos: int, tokenizer) -> tuple[str, str]:
    """(response text, finish reason) of new tokens; the EOS itself is not part of the text."""
    if eos in tokens:
        return tokenizer.decode(tokens[: tokens.index(eos)], skip_special_tokens=True), "eos"
    return tokenizer.decode(tokens, skip_special_tokens=True), "length"


class OnPolicyBatcher:
    """Replaces a batch's online rows with freshly generated responses (see the module docstring)."""

    def __init__(self, rows: TrainingRows, dataset: ExampleDataset, tokenizer, cfg: OnPolicyConfig,
                 max_length: int, seed: int, vocab_size: int, context_config=None) -> None:  # fmt: skip
        """Tokenize the prompts once, cut from the left to leave room for the response.

        Raises:
            ValueError: if `cfg.max_new_tokens` leaves no room for a prompt within `max_length`.
        """
        problem = onpolicy_room(cfg.max_new_tokens, max_length)
        if problem:
            raise ValueError(problem)
        budget = max_length - cfg.max_new_tokens - 1  # the response and its EOS must fit
        if context_config is not None:
            limit = prompt_limit(context_config, GenerateConfig(max_new_tokens=cfg.max_new_tokens))
            budget = min(budget, limit) if limit is not None else budget
        self.rows, self.dataset, self.tokenizer, self.cfg = rows, dataset, tokenizer, cfg
        self.max_length, self.seed, self.vocab_size = max_length, seed, vocab_size
        self.prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"][-budget:] for p in rows.prompts]

    @property
    def active(self) -> bool:
        return self.rows.n_online > 0

    def _generate(self, student, teacher, prompts: list[list[int]], seed: int) -> list[tuple[str, str]]:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        if SOURCES[self.rows.source].online == ONLINE_TOKENS:
            generator = torch.Generator().manual_seed(seed)
            tokens = mix_token_generate(student, teacher, prompts, self.rows.ratio, self.cfg, eos, pad,
                                        self.vocab_size, generator)  # fmt: skip
            return [_decode(t, eos, self.tokenizer) for t in tokens]
        gen = GenerateConfig(max_new_tokens=self.cfg.max_new_tokens, batch_size=len(prompts), sample=self.cfg.sample,
                             temperature=self.cfg.temperature, top_p=self.cfg.top_p)  # fmt: skip
        out = HFBackend(student, self.tokenizer, gen).generate(prompts, [seed], lambda done, tokens: None)
        return [(r["response"], r["finish_reason"]) for r in out]

    def _example(self, index: int, response: str, finish: str) -> dict:
        example = encode_example(self.tokenizer, self.rows.prompts[index], response, self.max_length)
        if finish == "length" and example["labels"][-1] == self.tokenizer.eos_token_id:
            # a response cut at max_new_tokens did not end: do not teach an EOS there
            example = {k: v[:-1] for k, v in example.items()}
        return {**example, "index": index}

    def __call__(self, student, teacher, index: torch.Tensor, step: int) -> tuple[dict | None, list[dict]]:
        """The batch rebuilt with on-policy rows (None when it has none) and one sample dict per row.

        `student` is the unwrapped live model; it is put in eval mode for generation and back after.
        """
        indices = index.tolist()  # (B,) -> list
        online = [i for i in indices if self.rows.online[i]]
        generated: dict[int, tuple[str, str]] = {}
        if online:
            seed = record_seed(self.seed, f"{step}:" + ",".join(map(str, indices)))
            was_training = student.training
            try:
                generated = dict(zip(online, self._generate(student, teacher, [self.prompt_ids[i] for i in online],
                                                            seed), strict=True))  # fmt: skip
            finally:
                student.train(was_training)
        samples, examples = [], []
        for i in indices:
            if i in generated:
                response, finish = generated[i]
                examples.append(self._example(i, response, finish))
                origin = "mix_token" if SOURCES[self.rows.source].online == ONLINE_TOKENS else "student"
            else:
                response, finish, origin = self.rows.responses[i], "offline", "offline"
                examples.append(self.dataset[i])
            samples.append({"step": step, "index": i, "online": i in generated, "origin": origin,
                            "prompt": self.rows.prompts[i], "response": response, "finish_reason": finish})  # fmt: skip
        if not generated:
            return None, samples
        return collate_indexed(examples, self.tokenizer.pad_token_id), samples
