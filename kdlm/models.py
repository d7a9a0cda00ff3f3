"""Load and save HF causal LMs and tokenizers; check that a teacher and a student can be distilled.

Models are loaded from local directories or hub ids through the same call, with safetensors only and
`trust_remote_code` off unless the caller turns it on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from kdlm.model_refs import check_model_ref

log = logging.getLogger(__name__)


def set_threads(threads: int | None) -> None:
    """Cap torch's CPU threads so parallel Snakemake jobs do not oversubscribe the cores."""

    if threads:
        torch.set_num_threads(threads)


def _from_hub_or_dir(loader, path: str | Path, what: str, **kwargs):
    """`loader.from_pretrained(path)` after :func:`check_model_ref`; a hub id that cannot be fetched
    (offline, private, misspelt) is one line naming it."""
    ref = check_model_ref(path)
    try:
        return loader.from_pretrained(ref, **kwargs)
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{ref}: cannot load its {what} ({reason})") from err


def load_config(path: str | Path, trust_remote_code: bool = False):
    """The model's config alone (no weights): enough to check lengths before anything heavy loads."""
    return _from_hub_or_dir(AutoConfig, path, "config", trust_remote_code=trust_remote_code)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    tokenizer = _from_hub_or_dir(AutoTokenizer, path, "tokenizer", trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"{path}: tokenizer has no pad token; add a dedicated one (padding with EOS would mask EOS "
            "out of the loss, the reference code's bug)"
        )
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        log.warning("%s: pad token equals EOS; EOS is still counted in the loss through the labels", path)
    return tokenizer


def load_model(path: str | Path, dtype: str = "float32", trust_remote_code: bool = False):
    """A causal LM from safetensors weights."""

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    return _from_hub_or_dir(AutoModelForCausalLM, path, "weights", dtype=torch_dtype, use_safetensors=True,
                            trust_remote_code=trust_remote_code)  # fmt: skip


def inference_placement(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """Where generation and evaluation run: "auto" means the first CUDA GPU in bf16 (float16 where bf16
    is missing) when there is one, else the CPU in float32; an explicit device or dtype is kept."""

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        if not device.startswith("cuda"):
            dtype = "float32"
        else:
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return device, dtype


def load_inference_model(path: str | Path, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    """A causal LM for generation, in eval mode, placed by :func:`inference_placement`.

    Training keeps :func:`load_model` (float32 weights; the HF Trainer places them and handles bf16).
    """
    device, dtype = inference_placement(device, dtype)
    model = load_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
    log.info("%s: generating on %s in %s", path, device, dtype)
    return model.to(device).eval()


def check_vocab_compatible(student, teacher, student_tokenizer, teacher_tokenizer) -> int:
    """Return the shared vocabulary size, or raise if the two models cannot be distilled token by token.

    Output layers may be padded beyond the tokenizer (e.g. OPT's 50,272 rows for 50,265 tokens);
    logits are then cropped to the shared tokenizer size.

    Raises:
        ValueError: if the tokenizers differ in size or in any token id.
    """
    n_student, n_teacher = len(student_tokenizer), len(teacher_tokenizer)
    if n_student != n_teacher or student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise ValueError(
            f"teacher and student vocabularies differ (student tokenizer {n_student} tokens, teacher "
            f"{n_teacher}); token-level distillation needs the same vocabulary"
        )
    rows_student = student.get_output_embeddings().weight.shape[0]
    rows_teacher = teacher.get_output_embeddings().weight.shape[0]
    if min(rows_student, rows_teacher) < n_student:
        raise ValueError(
            f"output layer smaller than the tokenizer: student {rows_student} rows, teacher {rows_teacher}, "
            f"tokenizer {n_student} tokens"
        )
    if rows_student != rows_teacher:
        log.info(
            "student has %d output rows, teacher %d: logits cropped to the %d tokenizer tokens",
            rows_student,
            rows_teacher,
            n_student,
        )
    return n_student


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
