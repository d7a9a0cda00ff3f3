"""The pipeline on a real (single-node) SLURM cluster through profiles/slurm-local.

- the smoke study submitted job by job with sbatch gives the same summary tables as a local run;
- a distill job cancelled (scancel) after its first checkpoint resumes from that checkpoint when the same
  snakemake command runs again;
- a distill job requeued (scontrol requeue, what preemption with PreemptMode=REQUEUE does) after its first
  checkpoint runs again under the same snakemake and resumes from it.

Needs the cluster of tests/slurm/start.sh and KDLM_SLURM=1 (see conftest.py); skipped loudly otherwise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm-local"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile")]
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}{os.pathsep}/usr/sbin",
}
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")


def _command(workdir: Path, *extra: str, overrides: Path | None = None) -> list[str]:
    """The smoke study in `workdir` (as tests/workflow/test_smoke.py runs it), plus extra arguments."""
    configs = [str(REPO / "config" / "smoke.yaml")] + ([str(overrides)] if overrides else [])
    return [*SNAKEMAKE, "-d", str(workdir), *extra, "--configfile", *configs]


def _run(workdir: Path, *extra: str, overrides: Path | None = None, timeout: int = 900):
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(_command(workdir, *extra, overrides=overrides), cwd=workdir, capture_output=True,
                          text=True, timeout=timeout, env=ENV)  # fmt: skip


def _slurm(*extra: str) -> tuple[str, ...]:
    return ("--workflow-profile", str(PROFILE), *extra)


def _submitted(output: str) -> list[tuple[int, int, Path]]:
    """(snakemake job id, SLURM job id, SLURM log) for every job the executor submitted."""
    return [(int(a), int(b), Path(c)) for a, b, c in SUBMITTED.findall(output)]


def _squeue_states(*args: str) -> dict[int, str]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T", *args], capture_output=True,
                         text=True, env=ENV, timeout=60)  # fmt: skip
    return {int(i): s for i, s in (line.split("|") for line in out.stdout.split())}


@pytest.fixture(scope="module")
def slurm_smoke(slurm_cluster, slurm_report, tmp_path_factory) -> tuple[Path, str]:
    """config/smoke.yaml through the local SLURM cluster: every job an sbatch job."""
    workdir = tmp_path_factory.mktemp("slurm_smoke")
    start = time.monotonic()
    result = _run(workdir, *_slurm(), timeout=1800)
    seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    (workdir / "snakemake.out").write_text(output)
    assert result.returncode == 0, output[-6000:]
    ids = [slurm for _, slurm, _ in _submitted(output)]
    slurm_report.append(
        f"smoke study via SLURM: {seconds:.0f} s, {len(ids)} sbatch jobs, SLURM job ids {ids}"
    )
    return workdir, output


@pytest.fixture(scope="module")
def local_smoke(slurm_cluster, slurm_report, tmp_path_factory) -> Path:
    """The same study run locally (no SLURM), for comparison."""
    workdir = tmp_path_factory.mktemp("local_smoke")
    start = time.monotonic()
    result = _run(workdir, "-c2", timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    slurm_report.append(f"smoke study locally (for comparison): {time.monotonic() - start:.0f} s")
    return workdir


def test_every_job_ran_as_a_slurm_job(slurm_smoke):
    workdir, output = slurm_smoke
    submitted = _submitted(output)
    # every job Snakemake started, except those of the workflow's localrules, went through sbatch
    rules = re.findall(r"^rule (\w+):$", output, flags=re.M)
    assert submitted and len(submitted) == len(rules), output[-4000:]
    assert {"teacher_sft", "generate", "distill", "evaluate"} <= set(rules)
    assert len({slurm for _, slurm, _ in submitted}) == len(submitted)
    # the plugin's per-job SLURM logs, named by job id (profile: slurm-keep-successful-logs)
    logs = workdir / ".snakemake" / "slurm_logs"
    for _, slurm, log in submitted:
        assert log.is_relative_to(logs) and log.name == f"{slurm}.log" and log.exists(), log
    # and SLURM itself knows the jobs of this run as completed (squeue keeps them for MinJobAge)
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    states = _squeue_states("--name", run_id)
    assert states, f"squeue knows no job named {run_id}"
    assert set(states) <= {slurm for _, slurm, _ in submitted}
    assert set(states.values()) == {"COMPLETED"}, states
    report = max(slurm for _, slurm, _ in submitted)
    assert states.get(report) == "COMPLETED", states


def test_summary_equals_local_run(slurm_smoke, local_smoke):
    workdir, _ = slurm_smoke
    tables_slurm, tables_local = workdir / "results" / "tables", local_smoke / "results" / "tables"
    pd.testing.assert_frame_equal(
        pd.read_parquet(tables_slurm / "summary.parquet"), pd.read_parquet(tables_local / "summary.parquet")
    )
    for name in ("summary.csv", "summary.md"):
        assert (tables_slurm / name).read_text() == (tables_local / name).read_text(), name


# one run without a teacher; 10 epochs of 19 steps, a checkpoint every 30 steps (~3 s apart on 2 cores)
RUN = "llama-student__none/gt/sft/seed0"
TARGET = f"results/runs/{RUN}/model.safetensors"
LONG_TRAINING = "training:\n  epochs: 10\n  save_steps: 30\n"
TOTAL_STEPS = 10 * 19


def _checkpoint_steps(workdir: Path) -> list[int]:
    root = workdir / "results" / "checkpoints" / RUN
    return sorted(int(p.parent.name.split("-")[1]) for p in root.glob("checkpoint-*/trainer_state.json"))


def _distill_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A workdir with everything the long distill job needs, made locally (only that job goes to SLURM)."""
    workdir, overrides = tmp_path / "work", tmp_path / "long_training.yaml"
    overrides.write_text(LONG_TRAINING)
    result = _run(workdir, "-c2", TARGET, "--omit-from", "distill", overrides=overrides)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert not (workdir / TARGET).exists()
    return workdir, overrides


def _submit_until_checkpoint(
    workdir: Path, overrides: Path, out_file: Path
) -> tuple[subprocess.Popen, int, list[int]]:
    """Snakemake (slurm-local) started on the distill target, once its SLURM job has written a checkpoint."""
    with open(out_file, "w") as out:
        proc = subprocess.Popen(_command(workdir, *_slurm(), TARGET, overrides=overrides), cwd=workdir,
                                stdout=out, stderr=subprocess.STDOUT, text=True, env=ENV)  # fmt: skip
    start = time.monotonic()
    try:
        jobid, steps = None, []
        while not steps:
            assert proc.poll() is None, (
                f"snakemake ended before a checkpoint:\n{out_file.read_text()[-4000:]}"
            )
            assert time.monotonic() - start < 300, (
                f"no checkpoint after 300 s:\n{out_file.read_text()[-4000:]}"
            )
            time.sleep(0.5)
            submitted = _submitted(out_file.read_text())
            jobid = submitted[0][1] if submitted else None
            steps = _checkpoint_steps(workdir) if jobid else []
        assert _squeue_states("-j", str(jobid)).get(jobid) == "RUNNING"
    except BaseException:
        proc.kill()
        raise
    return proc, jobid, steps


def _wait(proc: subprocess.Popen, timeout: int) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def _assert_resumed(workdir: Path, steps: list[int]) -> int:
    """The run finished after resuming from one of `steps` or a later checkpoint; returns that step."""
    run_dir = workdir / "results" / "runs" / RUN
    run = json.loads((run_dir / "run.json").read_text())
    assert run["resumed_from"], run
    resumed_step = int(re.fullmatch(r".*checkpoint-(\d+)", run["resumed_from"]).group(1))
    assert steps[0] <= resumed_step < TOTAL_STEPS
    assert run["global_steps"] == TOTAL_STEPS
    assert "resuming from" in (workdir / "logs" / "distill" / f"{RUN}.log").read_text()
    train_log = pd.read_parquet(run_dir / "train_log.parquet")  # the history before the resume is kept
    assert train_log["step"].min() <= steps[0] and train_log["step"].max() >= TOTAL_STEPS - 19
    assert (workdir / TARGET).exists() and not (workdir / "results" / "checkpoints" / RUN).exists()
    return resumed_step


def test_cancelled_distill_job_resumes_when_rerun(slurm_cluster, slurm_report, tmp_path):
    """scancel (a preemption without requeue, a node lost): the same snakemake command resumes."""
    workdir, overrides = _distill_inputs(tmp_path)
    start = time.monotonic()
    out_file = tmp_path / "first.out"
    proc, jobid, steps = _submit_until_checkpoint(workdir, overrides, out_file)
    subprocess.run(["scancel", str(jobid)], check=True, env=ENV, timeout=60)
    assert _wait(proc, 240) != 0
    output = out_file.read_text()
    assert f"SLURM-job '{jobid}' failed, SLURM status is: 'CANCELLED'" in output, output[-4000:]
    assert not (workdir / TARGET).exists()
    assert _checkpoint_steps(workdir), "the checkpoints did not survive the cancelled job"
    cancelled_after = time.monotonic() - start

    again = _run(workdir, *_slurm(), TARGET, overrides=overrides, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    (second,) = [slurm for _, slurm, _ in _submitted(again.stdout + again.stderr)]
    assert second != jobid
    resumed_step = _assert_resumed(workdir, steps)
    slurm_report.append(
        f"scancel: job {jobid} cancelled with checkpoints at steps {steps} (snakemake out after "
        f"{cancelled_after:.0f} s), rerun as job {second}, resumed from step {resumed_step} of {TOTAL_STEPS}; "
        f"{time.monotonic() - start:.0f} s in all"
    )


def test_requeued_distill_job_resumes_in_the_same_run(slurm_cluster, slurm_report, tmp_path):
    """scontrol requeue (what a preemption with PreemptMode=REQUEUE does): snakemake keeps waiting and the
    job, started again by SLURM, resumes from its checkpoint."""
    workdir, overrides = _distill_inputs(tmp_path)
    start = time.monotonic()
    out_file = tmp_path / "snakemake.out"
    proc, jobid, steps = _submit_until_checkpoint(workdir, overrides, out_file)
    try:
        subprocess.run(["scontrol", "requeue", str(jobid)], check=True, env=ENV, timeout=60)
        # SLURM holds a requeued job back for about two minutes (BeginTime); let it start at once
        deadline = time.monotonic() + 60
        while _squeue_states("-j", str(jobid)).get(jobid) != "PENDING":
            assert time.monotonic() < deadline, _squeue_states("-j", str(jobid))
            time.sleep(0.5)
        # slurmd refuses to launch a job it is still tearing down ("Job N already killed, do not launch
        # batch job", seen when the release came 0.7 s after the kill): give the teardown a few seconds
        time.sleep(5)
        subprocess.run(
            ["scontrol", "update", f"JobId={jobid}", "StartTime=now"], check=True, env=ENV, timeout=60
        )
    except BaseException:
        proc.kill()
        raise
    assert _wait(proc, 600) == 0, out_file.read_text()[-6000:]
    assert [slurm for _, slurm, _ in _submitted(out_file.read_text())] == [jobid]
    job = subprocess.run(
        ["scontrol", "show", "job", str(jobid)], capture_output=True, text=True, env=ENV
    ).stdout
    assert "Restarts=1" in job and "JobState=COMPLETED" in job, job
    resumed_step = _assert_resumed(workdir, steps)
    slurm_report.append(
        f"requeue: job {jobid} requeued with checkpoints at steps {steps}, ran again and resumed from step "
        f"{resumed_step} of {TOTAL_STEPS}; {time.monotonic() - start:.0f} s in all"
    )
