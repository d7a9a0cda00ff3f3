#!/usr/bin/env bash
# `kdlm bench losses` on a CUDA GPU at a LLaMA-3 sized vocabulary, in bf16: kdlm's chunked losses and their
# straightforward versions at the default chunk size, then kdlm's alone at larger chunk sizes.
# Runs from a checkout without installing kdlm (torch, pandas, pyarrow and rich must be importable):
#   bash scripts/bench_losses_gpu.sh [OUT_DIR]
# Writes OUT_DIR/losses_gpu.{txt,json,parquet} (default results/bench) and, for the chunk-size sweep,
# OUT_DIR/losses_gpu_chunk<N>.{txt,parquet}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/bench}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
$py -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"
shape=(--device cuda --dtype bfloat16 --tokens 8192 --vocab 128256)
# every loss, kdlm and the straightforward version, default chunk size
$py -m kdlm.cli bench losses "${shape[@]}" --out "$out/losses_gpu.parquet" | tee "$out/losses_gpu.txt"
# kdlm alone with larger chunks: on a GPU, small chunks are bound by kernel launches, not memory
for chunk in 256 1024; do
  $py -m kdlm.cli bench losses "${shape[@]}" --no-reference --chunk-size "$chunk" \
    --out "$out/losses_gpu_chunk$chunk.parquet" | tee "$out/losses_gpu_chunk$chunk.txt"
done
