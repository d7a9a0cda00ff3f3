#!/usr/bin/env bash
# The paper-scale rehearsal on one GPU (an H200; at most about 8 minutes), from a checkout without
# installing kdlm (torch, transformers, accelerate, tokenizers, safetensors, datasets, pandas, pyarrow,
# tqdm, rich importable; trl for the TRL side):
#   bash scripts/rehearse_gpu.sh [OUT_DIR]
# 1. randomly initialised OPT-1.3B (student, float32 master weights) and OPT-6.7B (teacher, bf16) of the
#    real shapes, from the configs kdlm ships (kdlm/model_configs), with a tokenizer of OPT's 50,272 rows;
# 2. `kdlm bench train --bf16` at 512 tokens, batch 2 (one optimizer step of the paper's recipe on one
#    GPU: batch 1 x 2 accumulation steps), 20 timed steps after 3, forward KL and ATKD, against TRL's
#    GKDTrainer on the same models and batches: tokens/s, peak memory, and the memory plan's estimate
#    (`planned_gb`, `measured_vs_planned`; the plan aims within 15%).
# Shapes can be changed: STUDENT=facebook/opt-2.7b TEACHER=facebook/opt-6.7b bash scripts/rehearse_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/bench/rehearsal}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
student=${STUDENT:-facebook/opt-1.3b}
teacher=${TEACHER:-facebook/opt-6.7b}
models=${MODELS:-/tmp/kdlm-rehearsal-models}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
[ -f "$models/teacher/config.json" ] || $py -m kdlm.bench.shapes "$models" "$student" "$teacher"
echo "models ready after $(( $(date +%s) - start )) s"
trl=()
$py -c "import trl" 2>/dev/null || trl=(--no-trl)
$py -m kdlm.cli bench train --teacher "$models/teacher" --student "$models/student" --bf16 \
    --batch-size "${BATCH:-2}" --max-length "${MAX_LENGTH:-512}" --lengthen 150 --steps "${STEPS:-20}" \
    --warmup-steps 3 --repeats 1 --losses forward atkd "${trl[@]}" --out "$out/rehearsal.parquet" --json \
    | tee "$out/rehearsal.json"
echo "rehearsal done after $(( $(date +%s) - start )) s"
