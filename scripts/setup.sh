#!/usr/bin/env bash
# Create .venv beside this repository and install kdlm with its test tools. Safe to rerun.
#
# torch is installed first and pinned (KDLM_TORCH, default torch==2.13.0) so pip does not pull a
# multi-GB CUDA build on a CPU-only machine; on a GPU machine install the CUDA build you want into
# .venv before running this script, and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/pip install --quiet --disable-pip-version-check "${KDLM_TORCH:-torch==2.13.0}"
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
echo "kdlm installed in $(pwd)/.venv"
