"""How a step's Slurm job ended, in words: from the job's ``status`` file when its script got
that far, else from the state Slurm gives (squeue, or sacct once the job left the queue)."""

from __future__ import annotations

from pathlib import Path

from kliko_async.errors import ContainerError
from kliko_async.runtime.base import ContainerExit
from kliko_async.runtime.slurm.jobstates import NOT_IN_ACCOUNTING, SlurmJob
from kliko_async.runtime.slurm.logfiles import read_text
from kliko_async.runtime.slurm.script import REQUEUED_EXIT, UNSEEN_EXIT
from kliko_async.runtime.slurm.usage import job_usage

NODE_STATES = {
    "NODE_FAIL": "node {node} failed while it ran Slurm job {job} (NODE_FAIL)",
    "BOOT_FAIL": "node {node} could not be booted for Slurm job {job} (BOOT_FAIL)",
    "PREEMPTED": "Slurm job {job} was preempted on node {node} by a job of higher priority "
    "(PREEMPTED)",
    "DEADLINE": "Slurm job {job} passed its deadline before it could end (DEADLINE)",
}
"""States where the cluster, not the step, ended the job: the step may well succeed when it
is tried again (its ``retries``)."""


def status_exit(job_id: str, folder: Path, container_id: str) -> ContainerExit:
    """The container's end, from the ``status`` file its job wrote."""
    code_text, oom, engine, *_ = [*read_text(folder / "status").split(), "", "", ""]
    code = int(code_text) if code_text.lstrip("-").isdigit() else -1
    if engine == "requeued" and code == REQUEUED_EXIT:
        raise ContainerError(
            f"Slurm requeued job {job_id} after it had started; a step with join IO cannot "
            "start again in the /work its first attempt changed, so this attempt is given up "
            "(the step's retries start afresh)"
        )
    if (folder / "timed-out").exists():
        raise ContainerError(
            f"stopped by its own time limit inside Slurm job {job_id} (exit code {code})"
        )
    return ContainerExit(
        container_id=container_id,
        exit_code=code,
        oom_killed=oom == "true",
        usage=job_usage(folder, engine),
    )


def ended_without_status(job_id: str, folder: Path, info: SlurmJob | None) -> ContainerExit:
    """A job that ended before its container could say how it ended: Slurm's reason."""
    if info is None:
        raise ContainerError(f"Slurm job {job_id} vanished from squeue before it ended")
    node = f" on node {info.node}" if info.node else ""
    if info.state == "OUT_OF_MEMORY":
        return ContainerExit(container_id=f"{job_id}@{info.node}", exit_code=137, oom_killed=True)
    if info.state in NODE_STATES:
        raise ContainerError(NODE_STATES[info.state].format(node=info.node or "?", job=job_id))
    if info.state == "CANCELLED":
        raise ContainerError(
            f"killed from outside the run: Slurm job {job_id} was cancelled{node} (scancel)"
        )
    if info.state == "TIMEOUT":
        raise ContainerError(f"Slurm ended job {job_id}{node} at its time limit (TIMEOUT)")
    if info.state == "UNKNOWN" and info.reason == NOT_IN_ACCOUNTING:
        raise ContainerError(
            f"Slurm job {job_id} left squeue before its end was seen, and accounting (sacct) "
            "holds no record of it (Slurm keeps none for a task of a job array cancelled on its "
            "own while pending)"
        )
    if info.state == "UNKNOWN":
        raise ContainerError(
            f"Slurm job {job_id} left squeue before its end was seen, and the cluster keeps no "
            "accounting (sacct) that could say how it ended"
        )
    if info.exit_code == UNSEEN_EXIT:
        raise ContainerError(
            f"node {info.node or '?'} cannot see the job's folder {folder}: the cache must be "
            "on a filesystem shared by every node, at the same path"
        )
    said = read_text(folder / "slurm.out").strip().splitlines()[-5:]
    raise ContainerError(
        f"Slurm job {job_id} ended {info.state}{node} (exit code {info.exit_code}) before "
        "its container reported" + (": " + " | ".join(said) if said else "")
    )


def pending_for_good(job_id: str, partition: str | None, reason: str | None) -> ContainerError:
    """The error of a job pending for a reason waiting will not change (it was cancelled)."""
    where = f" in partition '{partition}'" if partition else ""
    return ContainerError(
        f"Slurm cannot run job {job_id}{where}: it is pending with reason '{reason}', which "
        "waiting will not change"
    )
