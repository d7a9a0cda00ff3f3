"""How the numba row kernels of the losses run: threads, weights and gradient rows as numpy.

On CPU, a loss takes each chunk's log-softmaxes and exps with torch (its vectorized exp and log are much
faster than numba's scalar ones) and hands the rest, the sums over the vocabulary and the gradient, to
one compiled function per row (the ``*_rows`` modules beside each family). That function makes two
passes over the row's log-probability and probability vectors while they sit in the core's cache, where
element-wise tensor ops make a dozen passes over chunk-sized buffers. The log-probabilities are mostly
not stored: a row function reads them as the scaled logits plus one number per row (:func:`log_parts`).
sft stays a tensor op on CPU too: few passes, already close to the floor.

Rows are split over ``torch.get_num_threads()`` threads when numba's OpenMP layer shares torch's OpenMP
runtime (:func:`parts_for`), else they run in the calling thread. Compiled code is cached on disk by
numba (the first call in a fresh environment compiles, for some seconds). Importing this module changes
no setting of numba or torch; numba's threading layer is chosen on the first parallel launch.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import torch
from numba import njit, prange

__all__ = ["SUMS", "LogProbs", "as_weights", "grad_rows", "log_parts", "parts_for", "run_rows"]

SUMS = {"reassoc", "contract"}  # fastmath flags: sums may be reordered to vectorize; NaN and inf keep their meaning


@njit(cache=True, parallel=True)
def _probe(x):  # pragma: no cover - compiled
    for i in prange(x.shape[0]):
        x[i] = i


_omp: bool | None = None  # whether rows may run on several threads; decided on first use
_omp_pid = 0  # the process that decided: a forked child must not launch GNU OpenMP work (numba aborts it)


def _prefer_omp() -> None:
    """Prefer numba's OpenMP layer (see :func:`parts_for`) unless the user chose a layer.

    numba reads the priority on its first parallel launch and falls back to the next layer if OpenMP
    cannot be loaded; set before that launch, it decides the layer, later it changes nothing.
    """
    if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


def parts_for(n: int) -> int:
    """How many row ranges of a chunk of ``n`` rows to run at once: torch's thread count, or 1.

    numba's OpenMP threading layer uses the OpenMP runtime torch has already loaded, so its parallel
    loop runs on torch's worker threads, which are still spinning from the last torch op. Any other
    layer would start threads of its own to compete with those spinning workers (measured: slower than
    one thread), so then the rows run in the calling thread. So they do in a process forked from one
    that used the OpenMP layer (GNU OpenMP is not fork-safe; numba would terminate the child).
    """
    global _omp, _omp_pid
    threads = torch.get_num_threads()
    if threads == 1:
        # never start numba's threading layer: its team (NUMBA_NUM_THREADS, the machine's CPUs) would spin
        # between parallel regions on cores that other jobs use; two one-thread distills side by side on 2
        # cores ran 14x slower (142 s instead of 10 s for 60 steps each)
        return 1
    if _omp is None:
        _omp, _omp_pid = False, os.getpid()
        try:
            _prefer_omp()
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # no idle extra threads
            _probe(np.empty(2))  # starts numba's threading layer
            _omp = numba.threading_layer() == "omp"
        except Exception:  # no threading layer could be loaded: rows run in the calling thread
            _omp = False
    if not _omp or os.getpid() != _omp_pid:
        return 1
    parts = max(1, min(threads, numba.config.NUMBA_NUM_THREADS, n))
    numba.set_num_threads(parts)
    return parts


def as_weights(w: torch.Tensor | None) -> np.ndarray:
    """(n,) per-token loss weights as float64 numpy (empty when no gradient is wanted)."""
    return np.zeros(0) if w is None else w.detach().to(torch.float64).contiguous().numpy()


def grad_rows(out: torch.Tensor | None, like: torch.Tensor) -> np.ndarray:
    """The gradient rows as numpy, or a (1, 1) placeholder of ``like``'s dtype when none is wanted."""
    return np.zeros((1, 1), dtype=like.numpy().dtype) if out is None else out.numpy()


LogProbs = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # (n, V) log-probabilities, or (z, off): z + off


def log_parts(x: LogProbs) -> tuple[np.ndarray, np.ndarray]:
    """A model's log-probabilities for the row functions: (z, off) as numpy, off (n,) float64, with
    log p = z + off per row taken in float64 (:meth:`kdlm.losses.engine.Workspace.log_parts`: the scaled
    logits and minus their logsumexp, no pass stores log p); stored log-probabilities come as (ls, 0)."""
    if isinstance(x, torch.Tensor):
        return x.numpy(), np.zeros(x.shape[0])
    z, off = x
    return z.numpy(), off.to(torch.float64).contiguous().numpy()


def run_rows(serial, parallel, n: int, *args) -> None:
    """``serial(*args, 0, n)``, or ``parallel(*args, parts)`` over :func:`parts_for` row ranges."""
    parts = parts_for(n)
    if parts > 1:
        parallel(*args, parts)
    else:
        serial(*args, 0, n)
