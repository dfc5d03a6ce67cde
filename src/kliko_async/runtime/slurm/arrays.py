"""Expansions of a matrix step that are ready together go into Slurm as one job array
(``sbatch --array``).

The expansions of a matrix step become ready at the same moment and ask for the same resources:
one ``sbatch`` for all of them instead of one each (a site counts and rate-limits submissions,
and a controller answers one array faster than a thousand jobs). Each task runs the job script
of its own step, in its own folder, exactly as a lone job would: its mounts, parameters, log
files, status and result stay its own, and so do its failures, retries and cancellation (Slurm
knows each task as ``<array>_<task>``). Slurm counts each task as one job against its limits,
as ``--slurm-max-jobs`` does.

:class:`Gatherer` collects the expansions of one matrix step that arrive within a short window
with the same ``sbatch`` options; one of them alone, and any other step, is submitted at once
as a plain job, as before. The array is named after the matrix step.
"""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from kliko_async.errors import ContainerError
from kliko_async.runtime.base import ContainerJob
from kliko_async.runtime.slurm.script import UNSEEN_EXIT

GATHER_SECONDS = 0.2
"""How long a submission waits for others that may join it in one array."""

MOST_TASKS = 1000
"""The most tasks in one array (Slurm's default MaxArraySize is 1001: task IDs 0..1000)."""


@dataclass
class Submission:
    """One job waiting to be submitted, alone or as a task of an array."""

    job: ContainerJob
    folder: Path
    script: Path
    options: tuple[str, ...]
    """What it asks of the cluster in sbatch options (resources, time limit, partition; not
    its name, output or folder): jobs alike in these may share an array."""
    step: str
    family: str | None = None
    """The matrix step it is an expansion of: only expansions of one matrix step share an
    array (named after it); any other job goes in on its own at once."""
    job_id: str = ""
    error: ContainerError | None = None
    link: Path | None = None
    """For a task of an array: the link through which Slurm writes the task's own output into
    ``folder`` (removed once the job ended)."""
    done: anyio.Event = field(default_factory=anyio.Event)


Submit = Callable[[Sequence[Submission]], Awaitable[None]]


class Gatherer:
    """Hands the expansions of one matrix step that arrive within ``gather_s`` with equal
    options to ``submit_many`` together (one array); one alone, or a job of no matrix step, to
    ``submit_one`` (at once).

    Each of them sets the ``job_id`` (or ``error``) of its submissions. The first submission of a
    group waits the window and submits for all; the others wait for it. Cancelled (Ctrl-C
    cancels them all), each of the others still waits, at most ``cancelled_wait`` seconds, for
    the first one's submission to end (it ends within seconds, cancelled too), so that the job
    it may have gone in as is known to be cancelled (its ``job_id``, set, is its caller's to
    cancel). The caller bounds :meth:`submit` in time.
    """

    def __init__(
        self,
        submit_one: Submit,
        submit_many: Submit,
        *,
        gather_s: float = GATHER_SECONDS,
        most: int = MOST_TASKS,
        cancelled_wait: float = 0.0,
    ) -> None:
        self._submit_one = submit_one
        self._cancelled_wait = cancelled_wait
        self._submit_many = submit_many
        self._gather_s = gather_s
        self._most = most
        self._open: dict[tuple[str, ...], list[Submission]] = {}
        self.arrays = 0
        """How many arrays were submitted."""

    async def submit(self, submission: Submission) -> str:
        """The job ID (``<array>_<task>`` for a task of an array) of ``submission``."""
        key = (submission.family or "", *submission.options)
        group = self._open.get(key)
        if submission.family is None:
            await self._hand_over([submission])
        elif group is not None and len(group) < self._most:
            group.append(submission)
            try:
                await submission.done.wait()
            except BaseException:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._cancelled_wait):
                    await submission.done.wait()
                raise
        else:
            group = self._open[key] = [submission]
            try:
                await anyio.sleep(self._gather_s)
            except BaseException:  # cancelled: the others are not submitted either
                for other in group[1:]:
                    other.error = ContainerError("not submitted: its job array was cancelled")
                    other.done.set()
                raise
            finally:
                if self._open.get(key) is group:
                    del self._open[key]
            await self._hand_over(group)
        if submission.error is not None:
            raise submission.error
        return submission.job_id

    async def _hand_over(self, group: list[Submission]) -> None:
        try:
            if len(group) == 1:
                await self._submit_one(group)
            else:
                await self._submit_many(group)
                self.arrays += 1
        except ContainerError as error:
            for submission in group:
                submission.error = error
        finally:  # never leave one waiting, whatever happened (a deadline: no job ID)
            for submission in group:
                submission.done.set()


def array_script(folders: Sequence[Path]) -> str:
    """The script of a job array whose task ``i`` runs the job script in ``folders[i]``."""
    quoted = "\n".join(f"    {shlex.quote(str(folder))}" for folder in folders)
    return f"""\
#!/bin/bash
# A kliko-async job array, submitted by runtime/slurm/runtime.py: task i runs the step job in
# the i-th folder (its own job.sh, parameters, mounts, log files and status).
dirs=(
{quoted}
)
dir=${{dirs[$SLURM_ARRAY_TASK_ID]}}
[ -f "$dir/job.sh" ] || {{ echo "cannot see $dir on $(hostname)" >&2; exit {UNSEEN_EXIT}; }}
exec "$dir/job.sh"
"""


def shared_labels(jobs: Sequence[ContainerJob]) -> Mapping[str, str]:
    """The labels every one of ``jobs`` has (the run's and the owner's): an array's comment,
    by which a later run finds what an interrupted one left behind."""
    first, *rest = jobs
    return {k: v for k, v in first.labels.items() if all(j.labels.get(k) == v for j in rest)}
