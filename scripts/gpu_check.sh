#!/usr/bin/env bash
# GPU checks on a CUDA machine, from a checkout without installing kdlm (needs torch, transformers,
# accelerate, tokenizers, safetensors, pandas, pyarrow, tqdm, rich, pytest and hypothesis importable):
#   bash scripts/gpu_check.sh [OUT_DIR]
# 1. the training and generation tests, which train and generate on the GPU when one is visible;
# 2. every loss on the GPU against its straightforward version (float64) and finite in bf16 at +-1e4 logits;
# 3. `kdlm bench losses` in bf16 at 8,192 tokens x V = 128,256 (kdlm only) at chunk sizes $CHUNKS (default "32 256").
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/bench}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -m pytest -q -p no:cacheprovider tests/kdlm/test_training.py tests/kdlm/test_training_sources.py \
  tests/kdlm/test_generation.py 2>&1 | tee "$out/gpu_tests.txt" || status=1
$py - <<'PY' 2>&1 | tee "$out/gpu_losses.txt" || status=1
import torch
from kdlm.losses import LOSSES
from kdlm.losses.reference import REFERENCE

dev = torch.device("cuda")
g = torch.Generator(dev).manual_seed(0)
B, T, V = 2, 37, 5003
labels = torch.randint(0, V, (B, T), generator=g, device=dev)
labels[0, :5] = -100
worst = 0.0
for name, fn in LOSSES.items():
    s = (torch.randn(B, T, V, generator=g, device=dev, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randn(B, T, V, generator=g, device=dev, dtype=torch.float64) * 3
    got = fn(s, t, labels, chunk_size=16)
    (g1,) = torch.autograd.grad(got, s)
    want = REFERENCE[name](s, t, labels)
    (g2,) = torch.autograd.grad(want, s)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-9)
    worst = max(worst, abs(float(got.detach() - want.detach())) / max(abs(float(want.detach())), 1e-12))
    sb = (torch.randn(B, T, V, generator=g, device=dev) * 1e4).to(torch.bfloat16).requires_grad_()
    tb = (torch.randn(B, T, V, generator=g, device=dev) * 1e4).to(torch.bfloat16)
    lb = fn(sb, tb, labels)
    lb.backward()
    assert torch.isfinite(lb) and torch.isfinite(sb.grad.float()).all(), name
    print(f"{name:8s} {dev.type} float64 value {float(got.detach()):.6f} = reference; bf16 at 1e4 logits finite ({float(lb):.3g})")
print(f"largest relative difference to the reference: {worst:.2e}")
PY
for chunk in ${CHUNKS:-32 256}; do
  $py -m kdlm.cli bench losses --device cuda --dtype bfloat16 --tokens 8192 --vocab 128256 --no-reference \
    --chunk-size "$chunk" --out "$out/losses_gpu_chunk$chunk.parquet" | tee "$out/losses_gpu_chunk$chunk.txt" || status=1
done
exit $status
