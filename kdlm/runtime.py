"""Where the workflow's jobs run: the `kdlm` command they call and the GPUs the machine gives them.

Torch-free: the workflow calls these at planning time.
"""

from __future__ import annotations

import glob
import os
import sys


def prefer_this_kdlm() -> None:
    """Put the directory of the running Python first on PATH, so that rules call the `kdlm` installed
    beside the Python that runs Snakemake, whether or not its environment is activated."""
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


def visible_gpus() -> int:
    """CUDA devices this machine gives its jobs, counted without importing torch: CUDA_VISIBLE_DEVICES
    when set, else the /dev/nvidia<N> device files."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")])
    return len(glob.glob("/dev/nvidia[0-9]*"))
