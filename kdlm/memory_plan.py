"""GPU memory per training job, from model configs alone: which strategy and how many GPUs it needs.

Planning runs before any weight exists locally (and offline: the paper's configs ship in
``kdlm/model_configs``), so the numbers come from each model's shape, counted on the ``meta`` device,
and the formulas below. Bytes are per GPU; P is the student's parameter count, L one decoder layer's
parameters, R the parameters outside the decoder layers (embeddings, output layer, final norm), g the
number of GPUs, N = batch_size x max_length the tokens of one micro-batch, h the hidden size, V the
vocabulary, c the compute dtype's bytes (2 under bf16, 4 in float32).

* Student states (ZeRO, Rajbhandari et al. 2020, "16 bytes per parameter" for mixed-precision Adam):
  the HF Trainer's bf16 is autocast over float32 master weights, so parameters 4P, gradients 4P, AdamW
  m and v 8P; under autocast, DDP also holds the bf16 copies of the weights autocast caches during a
  step, 2P. Float32 training: the same 16 bytes, no cache.
* DDP replicates all of it. FSDP (FSDP2, ``kdlm/training/sharding.py``: one unit per decoder layer plus
  the root) divides the 16P by g and adds the unsharded units in the compute dtype: two decoder layers
  (the current one and the prefetched next) plus the root, c(2L + R); and one layer's unsharded float32
  gradient before its reduce-scatter, 4L.
* Teacher: frozen, no gradients or optimizer state; its weights in the training precision (2 bytes
  under bf16) or 4 bytes (``teacher_float32`` or float32 training). Replicated, or when sharded divided
  by g plus its own gather buffer, t(2L_t + R_t).
* Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", eq. 2 without the attention-score term, since SDPA/flash attention keeps no N^2 tensor):
  34 N h bytes per layer in 16-bit, so layers x 34 N h x c/2. With gradient checkpointing each layer
  keeps its input, layers x N h c, and one layer is recomputed at a time, + 34 N h x c/2. The teacher's
  forward under ``no_grad`` holds about one layer's worth at a time, 34 N h_t x t/2.
* Logits: student logits, teacher logits and the loss's gradient buffer (the student's shape and dtype:
  ``kdlm/losses/engine.py`` computes the gradient in the forward pass and keeps it), N V bytes each
  (c for the student and the gradient, t for the teacher), plus the engine's float32 workspace:
  :data:`WORKSPACE_BUFFERS` buffers of chunk_size x V.
* Overhead: 1.5 GB (CUDA context, allocator fragmentation) plus 5% of everything else.

These are estimates to pick a launch shape, not guarantees: they leave out the data loader, NCCL
buffers beyond the ones named and allocator peaks between phases, which the 5% is meant to absorb.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from kdlm.methods import DEFAULT_CHUNK_SIZE
from kdlm.model_refs import context_from_config

STRATEGIES = ("ddp", "fsdp")
GPU_COUNTS = (1, 2, 4, 8)

CONFIG_DIR = Path(__file__).with_name("model_configs")  # <namespace>/<name>/config.json per hub id

BYTES_MASTER = 4  # float32 weights the optimizer updates
BYTES_GRAD = 4  # float32 gradients (the HF Trainer's autocast keeps .grad in the parameters' dtype)
BYTES_ADAM = 8  # AdamW's exp_avg and exp_avg_sq, float32 each
BYTES_AUTOCAST_CACHE = 2  # bf16 weight copies autocast caches for the step (DDP: every weight)
KORTHIKANTI = 34  # activation bytes per token per hidden unit per layer, 16-bit, no attention scores
GATHERED_LAYERS = 2  # FSDP: the layer in use and the one prefetched
# engine.py's Workspace: "in", "ls", "lt", "out" (engine) and up to three kernel temporaries ("a", "b",
# "c" in kdlm/losses/skew.py), each (chunk_size, V) in float32
WORKSPACE_BUFFERS = 7
WORKSPACE_BYTES = 4
CONTEXT_BYTES = 1.5e9  # CUDA context and allocator reserve per process
OVERHEAD_FRACTION = 0.05
USABLE_FRACTION = 0.9  # a job is planned into 90% of a GPU: the estimate is a model, peaks and fragmentation vary


def shipped_config_dir(ref: str) -> Path | None:
    """The directory of the config.json shipped for hub id `ref`, so planning needs no network."""
    parts = ref.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        return None
    path = CONFIG_DIR / parts[0] / parts[1]
    return path if (path / "config.json").is_file() else None


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs of a model, read from its config."""

    ref: str
    model_type: str
    parameters: int  # unique parameters (tied weights counted once)
    layers: int
    hidden: int
    intermediate: int
    vocab: int  # embedding rows as instantiated
    context: int | None
    largest_layer_parameters: int  # the largest decoder layer (all are equal in these families)
    root_parameters: int  # outside the decoder layers: embeddings, output layer, final norm (FSDP's root unit)


def _load_config(ref: str):
    """A transformers config: a local directory, the shipped copy, else the hub (or its cache)."""
    from transformers import AutoConfig

    if Path(ref).is_dir():
        source = ref
    else:
        shipped = shipped_config_dir(ref)
        source = str(shipped) if shipped is not None else ref
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{ref}: no config is shipped for it (kdlm/model_configs) and none could be loaded: {first}"
        ) from None


def _decoder_layers(model) -> list:
    """The repeated blocks: the classes the model declares unsplittable (as FSDP units are chosen), else
    the elements of its largest ModuleList."""
    from torch import nn

    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if layers:
        return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        return []
    return list(max(lists, key=lambda ml: sum(p.numel() for p in ml.parameters())))


@functools.lru_cache(maxsize=256)
def model_shape(ref: str) -> ModelShape:
    """The shape of model `ref` (a directory, a shipped hub id, or a hub id in the cache).

    The model is built on the meta device, so counting costs no memory and no download.

    Raises:
        ValueError: no config for `ref` (one line, naming it).
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = _load_config(ref)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    layers = _decoder_layers(model)
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_layers)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    intermediate = next(
        (int(v) for k in ("intermediate_size", "ffn_dim", "n_inner") if (v := getattr(text, k, None))),
        4 * hidden,
    )
    return ModelShape(
        ref=ref,
        model_type=str(config.model_type),
        parameters=int(total),
        layers=int(getattr(text, "num_hidden_layers", len(layers))),
        hidden=hidden,
        intermediate=intermediate,
        vocab=int(model.get_input_embeddings().weight.shape[0]),
        context=context_from_config(text),
        largest_layer_parameters=int(max(per_layer, default=0)),
        root_parameters=int(root),
    )


@dataclass(frozen=True)
class TrainingJob:
    """One training run as the memory model sees it (teacher None: fine-tuning or SFT alone)."""

    name: str
    student: str
    teacher: str | None
    batch_size: int  # micro-batch per GPU
    max_length: int
    bf16: bool
    teacher_float32: bool = False  # the teacher in float32 instead of the training precision
    gradient_checkpointing: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE  # the loss engine's chunk (kdlm.methods)


@dataclass(frozen=True)
class Estimate:
    """Bytes per GPU of one job under one strategy, GPU count and choice of sharding."""

    job: str
    strategy: str
    gpus: int
    checkpointing: bool
    teacher_sharded: bool
    parameters: float
    gradients: float
    optimizer: float
    teacher: float
    activations: float
    logits: float
    overhead: float

    @property
    def total(self) -> float:
        return (
            self.parameters + self.gradients + self.optimizer + self.teacher + self.activations + self.logits
            + self.overhead
        )  # fmt: skip

    @property
    def gb(self) -> float:
        return self.total / 1e9


def _gather_buffer(shape: ModelShape, nbytes: int) -> float:
    """FSDP2's unsharded units at a time: two decoder layers and the root, in `nbytes` per parameter."""
    return nbytes * (GATHERED_LAYERS * shape.largest_layer_parameters + shape.root_parameters)


def estimate(job: TrainingJob, strategy: str, gpus: int, *, checkpointing: bool, teacher_sharded: bool) -> Estimate:
    """Bytes per GPU of `job` (formulas in the module docstring).

    Raises:
        ValueError: an unknown strategy, gpus < 1, or a sharded teacher outside fsdp (or without one).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {list(STRATEGIES)}")
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    if teacher_sharded and (strategy != "fsdp" or job.teacher is None):
        raise ValueError(f"{job.name}: a sharded teacher needs strategy fsdp and a teacher")
    s = model_shape(job.student)
    c = 2 if job.bf16 else 4
    tokens = job.batch_size * job.max_length

    if strategy == "ddp":
        parameters = (BYTES_MASTER + (BYTES_AUTOCAST_CACHE if job.bf16 else 0)) * s.parameters
        gradients = BYTES_GRAD * s.parameters
        optimizer = BYTES_ADAM * s.parameters
    else:
        parameters = BYTES_MASTER * s.parameters / gpus + _gather_buffer(s, c)
        gradients = BYTES_GRAD * s.parameters / gpus + BYTES_GRAD * s.largest_layer_parameters
        optimizer = BYTES_ADAM * s.parameters / gpus

    if checkpointing:
        activations = s.layers * tokens * s.hidden * c + KORTHIKANTI * tokens * s.hidden * c / 2
    else:
        activations = s.layers * KORTHIKANTI * tokens * s.hidden * c / 2
    logits = 2 * tokens * s.vocab * c  # the student's logits and the loss's gradient buffer
    logits += WORKSPACE_BUFFERS * min(job.chunk_size, tokens) * s.vocab * WORKSPACE_BYTES

    teacher = 0.0
    if job.teacher is not None:
        t = model_shape(job.teacher)
        tb = 4 if job.teacher_float32 or not job.bf16 else 2
        teacher = tb * t.parameters / gpus + _gather_buffer(t, tb) if teacher_sharded else tb * t.parameters
        activations += KORTHIKANTI * tokens * t.hidden * tb / 2
        logits += tokens * t.vocab * tb

    rest = parameters + gradients + optimizer + teacher + activations + logits
    return Estimate(
        job=job.name,
        strategy=strategy,
        gpus=gpus,
        checkpointing=checkpointing,
        teacher_sharded=teacher_sharded,
        parameters=parameters,
        gradients=gradients,
        optimizer=optimizer,
        teacher=teacher,
        activations=activations,
        logits=logits,
        overhead=CONTEXT_BYTES + OVERHEAD_FRACTION * rest,
    )


# the Estimate fields that hold bytes, in breakdown order (for callers that print one)
BYTE_FIELDS = tuple(f.name for f in fields(Estimate) if f.type in ("float", float))


@dataclass(frozen=True)
class Choice:
    """The launch shape for a job, or (estimate None) why none fits and what would."""

    job: TrainingJob
    estimate: Estimate | None
    reason: str


def _candidates(
    job: TrainingJob, gpu_counts: Iterable[int], strategies: Sequence[str], checkpointing: bool,
    teacher: str = "auto",
) -> list[Estimate]:
    """Every shape in preference order: fewest GPUs, ddp before fsdp, teacher replicated before sharded
    (`teacher` "replicate" or "shard" keeps only that placement under fsdp)."""
    order = sorted(strategies, key=lambda name: STRATEGIES.index(name) if name in STRATEGIES else len(STRATEGIES))
    allowed = {"auto": (False, True), "replicate": (False,), "shard": (True,)}[teacher]
    out = []
    for gpus in sorted(set(gpu_counts)):
        for strategy in order:
            if strategy == "fsdp" and gpus < 2:  # one process has nothing to shard over: it trains unsharded
                continue
            placements = allowed if strategy == "fsdp" and job.teacher is not None else (False,)
            for sharded in placements:
                out.append(estimate(job, strategy, gpus, checkpointing=checkpointing, teacher_sharded=sharded))
    return out


def _describe(e: Estimate) -> str:
    parts = [f"{e.strategy} on {e.gpus} GPU{'s' if e.gpus > 1 else ''}"]
    if e.teacher_sharded:
        parts.append("teacher sharded")
    if e.checkpointing:
        parts.append("gradient checkpointing")
    return ", ".join(parts)


def choose(
    job: TrainingJob,
    gpu_memory_gb: float,
    *,
    gpu_counts: Sequence[int] = GPU_COUNTS,
    strategies: Sequence[str] = STRATEGIES,
    teacher: str = "auto",
) -> Choice:
    """The first shape that fits in `gpu_memory_gb` per GPU (fewest GPUs, then ddp, then the teacher
    replicated), with checkpointing as the job asks; else None and a reason naming the job."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"unknown strategies {unknown}; allowed: {list(STRATEGIES)}")
    if not gpu_counts or min(gpu_counts) < 1:
        raise ValueError(f"gpu_counts must be >= 1, got {list(gpu_counts)}")
    limit = gpu_memory_gb * 1e9 * USABLE_FRACTION
    candidates = _candidates(job, gpu_counts, strategies, job.gradient_checkpointing, teacher)
    if not candidates:
        return Choice(job, None, f"{job.name}: fsdp needs at least 2 GPUs per job, and at most {max(gpu_counts)} are allowed")
    for e in candidates:
        if e.total <= limit:
            return Choice(job, e, f"{_describe(e)}: {e.gb:.1f} GB per GPU of {gpu_memory_gb:g}")
    best = min(candidates, key=lambda e: e.total)
    reason = f"{job.name}: needs {best.gb:.1f} GB per GPU at best ({_describe(best)}); it would fit with "
    if not job.gradient_checkpointing:
        fits = [e for e in _candidates(job, gpu_counts, strategies, True, teacher) if e.total <= limit]
        if fits:
            return Choice(job, None, f"{reason}gradient checkpointing ({_describe(fits[0])}: {fits[0].gb:.1f} GB)")
    ways = []
    if "fsdp" in strategies:  # more GPUs than allowed per job
        more = [g for g in (2, 4, 8, 16, 32, 64) if g > max(gpu_counts)]
        wider = [e for e in _candidates(job, more, ("fsdp",), job.gradient_checkpointing, teacher) if e.total <= limit]
        if wider:
            ways.append(f"max_gpus >= {wider[0].gpus} ({_describe(wider[0])}: {wider[0].gb:.1f} GB)")
    ways.append(f"GPUs of >= {math.ceil(best.gb / USABLE_FRACTION)} GB")
    return Choice(job, None, f"{reason}{', or '.join(ways)}, or a smaller batch_size/max_length")


def plan_rows(jobs: Iterable[TrainingJob], gpu_memory_gb: float, **options) -> list[dict]:
    """One row per job: sizes, GB per GPU under ddp on 1 GPU and under fsdp at the chosen GPU count (8 when
    nothing fits), each with and without checkpointing, and the choice.

    The fsdp columns shard the teacher unless the choice replicates it (ddp, or fsdp with it replicated).
    """
    rows = []
    for job in jobs:
        choice = choose(job, gpu_memory_gb, **options)
        e = choice.estimate
        fsdp_gpus = e.gpus if e is not None and e.strategy == "fsdp" else max(options.get("gpu_counts", GPU_COUNTS))
        sharded = job.teacher is not None and (e is None or e.teacher_sharded)

        def gb(strategy: str, gpus: int, ckpt: bool, ts: bool, job: TrainingJob = job) -> float:
            return estimate(job, strategy, gpus, checkpointing=ckpt, teacher_sharded=ts).gb

        rows.append(
            {
                "job": job.name,
                "student_b": model_shape(job.student).parameters / 1e9,
                "teacher_b": model_shape(job.teacher).parameters / 1e9 if job.teacher else None,
                "ddp1": gb("ddp", 1, False, False),
                "ddp1_ckpt": gb("ddp", 1, True, False),
                "fsdp_gpus": fsdp_gpus,
                "fsdp_teacher_sharded": sharded,
                "fsdp": gb("fsdp", fsdp_gpus, False, sharded),
                "fsdp_ckpt": gb("fsdp", fsdp_gpus, True, sharded),
                "choice": _short(e) if e is not None else "fits nowhere",
                "reason": choice.reason,
                "gpu_memory_gb": gpu_memory_gb,
            }
        )
    return rows


def _short(e: Estimate) -> str:
    text = f"{e.strategy}×{e.gpus}"
    if e.teacher_sharded:
        text += " T"
    if e.checkpointing:
        text += " ckpt"
    return text


def format_plan(rows: Sequence[dict]) -> str:
    """A markdown table of `plan_rows` (GB per GPU, one decimal), with a legend line."""
    head = ["job", "student", "teacher", "ddp×1", "+ckpt", "fsdp×N", "fsdp", "+ckpt", "choice"]
    body = []
    for r in rows:
        n = f"{r['fsdp_gpus']}{' T' if r['fsdp_teacher_sharded'] else ''}"
        teacher = "-" if r["teacher_b"] is None else f"{r['teacher_b']:.1f}"
        cells = [r["job"], f"{r['student_b']:.1f}", teacher, f"{r['ddp1']:.1f}", f"{r['ddp1_ckpt']:.1f}", n,
                 f"{r['fsdp']:.1f}", f"{r['fsdp_ckpt']:.1f}", r["choice"]]  # fmt: skip
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    numeric = {1, 2, 3, 4, 5, 6, 7}

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    memory = rows[0]["gpu_memory_gb"] if rows else None
    legend = [
        "student, teacher: billions of parameters; ddp×1, fsdp: GB per GPU (+ckpt: with gradient checkpointing);",
        "fsdp×N: at the chosen GPUs (the most when fsdp is not chosen), T: teacher sharded; choice"
        + (f" for GPUs of {memory:g} GB" if memory is not None else ""),
    ]
    return "\n".join([line(head), rule, *(line(b) for b in body), "", *legend])


__all__ = [
    "GPU_COUNTS",
    "STRATEGIES",
    "Choice",
    "Estimate",
    "ModelShape",
    "TrainingJob",
    "choose",
    "estimate",
    "format_plan",
    "model_shape",
    "plan_rows",
    "shipped_config_dir",
]
