"""The SLURM tests' cluster: a real single-node SLURM (munged, slurmctld, slurmd) started by start.sh.

They run only when asked: KDLM_SLURM=1 (as .ci/run sets it) means the cluster must come up, so a
failure of start.sh fails the tests. Without it they are skipped, loudly: a skip reason and a banner
at the end of the pytest output say how to run them. The README's `pytest -q` never starts SLURM.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
START = HERE / "start.sh"
NOT_REQUESTED = (
    "SLURM tests NOT RUN: they start a real single-node SLURM cluster (root, apt-get) and run only with "
    "KDLM_SLURM=1, e.g. `bash tests/slurm/start.sh && KDLM_SLURM=1 .venv/bin/pytest -q -m slurm tests/slurm` "
    "(as .ci/run does)"
)
_skipped: list[str] = []


def slurm_requested() -> bool:
    return os.environ.get("KDLM_SLURM", "").strip().lower() in {"1", "true", "yes", "on"}


def _skip_loudly(reason: str) -> None:
    if reason not in _skipped:
        _skipped.append(reason)
        print(f"\n*** {reason} ***", file=sys.stderr)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Start (or find running) the test cluster; returns start.sh's output (sinfo at the end)."""
    if not slurm_requested():
        _skip_loudly(NOT_REQUESTED)
    result = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(
            f"KDLM_SLURM=1 but tests/slurm/start.sh could not bring the cluster up (exit {result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    return result.stdout


_REPORT = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def slurm_report(request) -> list[str]:
    """Lines (wall times, SLURM job ids) printed at the end of the pytest output."""
    return request.config.stash.setdefault(_REPORT, [])


def pytest_terminal_summary(terminalreporter):
    for reason in _skipped:
        terminalreporter.write_sep("!", "SLURM tests skipped", yellow=True, bold=True)
        terminalreporter.write_line(reason, yellow=True, bold=True)
    lines = terminalreporter.config.stash.get(_REPORT, [])
    if lines:
        terminalreporter.write_sep("-", "SLURM tests")
        for line in lines:
            terminalreporter.write_line(line)
