"""What Slurm says about a job: its states, read from ``squeue``'s and ``sacct``'s lines into
one ``SlurmJob`` each, and this user's jobs still pending or running (for leftovers)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from kliko_async.runtime.slurm.commands import RETRY_DELAYS, Command, retrying, slurm_command

ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
    }
)
"""States of a job that may still run (or is still being cleaned up on its node)."""

REQUEUED_STATES = frozenset({"REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"})
"""States of a job whose attempt ended and that Slurm put back into the queue: not a job
running as usual (its next attempt starts from the beginning)."""

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

SQUEUE_FIELDS = (
    "JobArrayID:|,JobID:|,State:|,Reason:|,NodeList:|,exit_code:|,RestartCnt:|,UserName:|,Name:|"
)
"""``squeue --array --Format``: '|' after each field and no width (nothing is cut or padded).
The comment, which may hold '|', comes last when it is asked for. A task of a job array is
``<array>_<task>`` (with ``--array``, one line each, pending ones too); its own job ID, by
which accounting knows it, follows (it is the array's ID until the task started)."""

_JOB_ID = re.compile(r"\d+(?:_\d+)?")
"""A job's ID, or a task's of a job array (``<array>_<task>``)."""

NO_ACCOUNTING = "no accounting"
NOT_IN_ACCOUNTING = "not in accounting"
"""The reasons of a job in state UNKNOWN: it left squeue, and the cluster keeps no accounting,
or its accounting has no record of the job."""

INVALID_JOB_ID = "Invalid job id specified"
"""squeue's answer when none of the IDs asked for is known (all of them left the queue)."""


class SlurmJob(BaseModel):
    """What Slurm says about one job."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    raw_id: str = ""
    """For a task of a job array, the job ID of its own (accounting's name for it) once it
    started; else the same as ``job_id``."""
    name: str = ""
    state: str
    reason: str = ""
    node: str = ""
    exit_status: int = 0
    """The raw wait status: exit code << 8, or the signal number."""
    restarts: int = 0
    """How often Slurm requeued the job (its attempt number, from 0)."""
    user: str = ""
    comment: str = ""
    from_sacct: bool = False
    """Read from accounting after the job left squeue."""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def requeued(self) -> bool:
        return self.state in REQUEUED_STATES

    @property
    def exit_code(self) -> int:
        """The job script's exit code, as a shell reports it (128 + signal when killed)."""
        if self.exit_status & 0x7F:
            return 128 + (self.exit_status & 0x7F)
        return (self.exit_status >> 8) & 0xFF


def parse_squeue(text: str, *, with_comment: bool = False) -> dict[str, SlurmJob]:
    """``squeue --noheader --Format=SQUEUE_FIELDS[Comment:|]``'s lines, by job ID."""
    found: dict[str, SlurmJob] = {}
    fields = SQUEUE_FIELDS.count("|")
    for line in text.splitlines():
        parts = line.split("|", fields)
        if len(parts) <= fields or not _JOB_ID.fullmatch(parts[0].strip()):
            continue
        job_id, raw_id, state, reason, node, status, restarts, user, name = (
            p.strip() for p in parts[:9]
        )
        comment = parts[fields].rstrip().removesuffix("|") if with_comment else ""
        found[job_id] = SlurmJob(
            job_id=job_id,
            # A pending task shows its array's ID, which only its last task will keep.
            raw_id=raw_id if raw_id.isdigit() and state != "PENDING" else job_id,
            name=name,
            state=state.split()[0] if state else "",
            reason="" if reason in ("None", "(null)") else reason,
            node="" if node in ("(null)", "None") else node,
            exit_status=int(status) if status.isdigit() else 0,
            restarts=int(restarts) if restarts.isdigit() else 0,
            user=user,
            comment="" if comment == "(null)" else comment,
        )
    return found


def parse_sacct(text: str) -> dict[str, SlurmJob]:
    """``sacct -n -P -o JobID,State,ExitCode,NodeList,JobName``'s job lines, by job ID."""
    found: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or not _JOB_ID.fullmatch(parts[0]):
            continue  # a job step (ID.batch) or an unexpected line
        code, _, signal = parts[2].partition(":")
        status = (int(code) << 8 if code.isdigit() else 0) | (
            int(signal) & 0x7F if signal.isdigit() else 0
        )
        found[parts[0]] = SlurmJob(
            job_id=parts[0],
            raw_id=parts[0],
            state=parts[1].split()[0] if parts[1] else "",
            exit_status=status,
            node="" if parts[3] in ("None assigned", "(null)") else parts[3],
            name=parts[4],
            from_sacct=True,
        )
    return found


async def our_active_jobs(
    command: Command = slurm_command, delays: Sequence[float] = RETRY_DELAYS
) -> dict[str, SlurmJob]:
    """This user's jobs that are pending or running, with their comments (for leftovers)."""
    args = ["squeue", "--noheader", "--me", "--array", f"--Format={SQUEUE_FIELDS},Comment:|"]
    done = await retrying(args, command=command, delays=delays)
    return parse_squeue(done.stdout.decode("utf-8", "replace"), with_comment=True)
