"""Slurm's commands as kliko-async calls them, and the queue of the jobs one process submitted.

pyslurm has no release for Slurm 22.05, so the commands are run with ``anyio.run_process``.
``squeue --json`` works in 22.05 (``scontrol --json`` does not); it ignores its filters and
returns every job the controller still knows, so one call per poll serves all of a run's jobs,
and the jobs are picked out here.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict

from kliko_async.errors import ContainerError, RuntimeUnavailable

ACTIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
)
"""States of a job that may still run (or is still being cleaned up on its node)."""

HOPELESS_REASONS = frozenset(
    {
        "BadConstraints",
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "InvalidAccount",
        "InvalidQOS",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxMemoryPerJob",
        "QOSMaxGRESPerJob",
        "QOSMaxWallDurationPerJobLimit",
    }
)
"""Pending reasons that never clear by waiting: the step fails with the reason instead."""

_HINT = (
    "Run kliko-async where Slurm's commands (sbatch, squeue, scancel, sinfo) work, or start "
    "the project's test cluster with scripts/slurm-cluster up."
)


class SlurmJob(BaseModel):
    """What ``squeue --json`` says about one job."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    name: str
    state: str
    reason: str = ""
    node: str = ""
    exit_status: int = 0
    """The raw wait status: exit code << 8, or the signal number."""
    user: str = ""
    comment: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def exit_code(self) -> int:
        """The job script's exit code, as a shell reports it (128 + signal when killed)."""
        if self.exit_status & 0x7F:
            return 128 + (self.exit_status & 0x7F)
        return (self.exit_status >> 8) & 0xFF


async def slurm_command(args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    """Run one Slurm command; its result whatever its exit status. No such command: refused."""
    try:
        return await anyio.run_process(list(args), check=False)
    except FileNotFoundError:
        raise RuntimeUnavailable(
            f"Slurm's '{args[0]}' command is not installed", hint=_HINT
        ) from None
    except OSError as error:
        raise RuntimeUnavailable(f"cannot run Slurm's '{args[0]}': {error}", hint=_HINT) from None


def command_error(done: subprocess.CompletedProcess[bytes]) -> str:
    """The useful lines of a failed Slurm command's output, as one line."""
    text = (done.stderr or done.stdout or b"").decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or f"exit status {done.returncode}"


async def all_jobs() -> dict[str, SlurmJob]:
    """Every job the controller knows (pending, running and recently finished), by ID."""
    done = await slurm_command(["squeue", "--json", "--states=all"])
    if done.returncode != 0:
        raise ContainerError(f"squeue failed: {command_error(done)}")
    try:
        found = json.loads(done.stdout)["jobs"]
    except (ValueError, KeyError, TypeError):
        raise ContainerError("squeue --json gave output that is not its JSON") from None
    return {str(j["job_id"]): _job(j) for j in found}


def _job(raw: dict[str, Any]) -> SlurmJob:
    return SlurmJob(
        job_id=str(raw["job_id"]),
        name=str(raw.get("name", "")),
        state=str(raw.get("job_state", "")),
        reason=str(raw.get("state_reason") or ""),
        node=str(raw.get("nodes") or ""),
        exit_status=int(raw.get("exit_code") or 0),
        user=str(raw.get("user_name") or ""),
        comment=str(raw.get("comment") or ""),
    )


class JobQueue:
    """The states of the jobs this process watches, from one ``squeue`` call per poll.

    Whoever waits first polls (after the current interval); everyone else waiting meanwhile
    gets the same answer. The interval starts at ``fastest`` and grows by half each poll in
    which no watched job changed, up to ``slowest``; a new job or any change resets it.
    """

    def __init__(self, fastest: float = 0.25, slowest: float = 3.0) -> None:
        self.fastest = fastest
        self.slowest = slowest
        self.interval = fastest
        self.polls = 0
        self._jobs: dict[str, SlurmJob | None] = {}
        self._tick = anyio.Event()
        self._polling = False

    def watch(self, job_id: str) -> None:
        self._jobs[job_id] = None
        self.interval = self.fastest

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def hurry(self) -> None:
        """Poll at the fastest pace again (a job is being cancelled, or just ended)."""
        self.interval = self.fastest

    async def next_state(self, job_id: str) -> SlurmJob | None:
        """The job's state after the next poll; None while squeue does not show it yet."""
        tick = self._tick
        if self._polling:
            await tick.wait()
        else:
            self._polling = True
            try:
                await anyio.sleep(self.interval)
                await self._poll()
            finally:
                self._polling = False
                self._tick = anyio.Event()
                tick.set()
        return self._jobs.get(job_id)

    async def _poll(self) -> None:
        found = await all_jobs()
        self.polls += 1
        changed = False
        for job_id, before in self._jobs.items():
            now = found.get(job_id)
            if now is not None and now != before:
                self._jobs[job_id] = now
                changed = True
        self.interval = self.fastest if changed else min(self.interval * 1.5, self.slowest)


def user_name() -> str:
    """The name of the user running this process (whose jobs are ours), else its uid."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


async def sinfo(partition: str | None, fields: str, *, per_node: bool) -> list[list[str]]:
    """sinfo's rows of the partition (the cluster's default one when none is set)."""
    args = ["sinfo", "-h", "-o", f"%P {fields}", *(["-N"] if per_node else [])]
    done = await slurm_command(args)
    if done.returncode != 0:
        raise RuntimeUnavailable(
            f"Slurm does not answer: {command_error(done)}",
            hint="Check that slurmctld runs and SLURM_CONF points at its slurm.conf "
            "(the test cluster: scripts/slurm-cluster up).",
        )
    rows = [line.split() for line in done.stdout.decode().splitlines() if line.strip()]
    wanted = partition
    chosen = [r[1:] for r in rows if (r[0] == wanted if wanted else r[0].endswith("*"))]
    if not chosen:
        if wanted:
            known = ", ".join(sorted({r[0].rstrip("*") for r in rows}))
            raise RuntimeUnavailable(f"Slurm has no partition '{wanted}' (it has: {known})")
        raise RuntimeUnavailable("Slurm has no default partition: give one with --partition")
    return chosen
