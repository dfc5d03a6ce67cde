"""Submitting the Slurm runtime's jobs: ``sbatch`` each alone, or the expansions of a matrix
step ready together as one job array (see ``arrays.py``), through a controller that may not
answer at once."""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import anyio

from kliko_async.cache.durable import remove_tree
from kliko_async.errors import ContainerError
from kliko_async.runtime.base import LABEL_PREFIX, ContainerJob
from kliko_async.runtime.slurm.arrays import Gatherer, Submission, array_script, shared_labels
from kliko_async.runtime.slurm.commands import (
    CALL_DEADLINE_SECONDS,
    RETRY_DELAYS,
    SlurmCallFailed,
    SlurmNoAnswer,
    command_error,
    parse_job_id,
    sbatch_transient,
    slurm_command,
)
from kliko_async.runtime.slurm.jobstates import SQUEUE_FIELDS, parse_squeue
from kliko_async.runtime.slurm.options import SlurmOptions
from kliko_async.runtime.slurm.queue import JobQueue

JOB_PREFIX = "kliko-"

SUBMIT_DEADLINE_SECONDS = 60
"""How long sbatch is tried for one submission (a controller that does not answer, or is
busy), the look-up of what the last try submitted aside."""

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class SbatchRefused(ContainerError):
    """sbatch said, with an error, that it did not take the job (or the array)."""


class Submitter:
    """sbatch for one runtime: each job is watched in ``queue`` and counted ``live`` from its
    submission; ``arrays`` is the folder for the arrays' scripts. ``submitted`` counts the
    sbatch calls that took (an array is one)."""

    def __init__(
        self, options: SlurmOptions, queue: JobQueue, live: set[str], arrays: Path
    ) -> None:
        self.options = options
        self.queue = queue
        self.submitted = 0
        self._live = live
        self._highest = 0
        """The highest job ID sbatch gave (Slurm's IDs grow)."""
        self._arrays = arrays
        self._gatherer = Gatherer(self._submit_one, self._submit_array)

    async def submit(self, submission: Submission) -> str:
        """The job ID of ``submission`` (``<array>_<task>`` for a task of an array)."""
        return await self._gatherer.submit(submission)

    def job_options(
        self, job: ContainerJob, limit: float | None, partition: Sequence[str]
    ) -> tuple[str, ...]:
        """sbatch's options for what ``job`` asks of the cluster (jobs alike in these may go
        in as one array); its name, output, folder and comment are added at submission."""
        args = [
            "--nodes=1",
            "--ntasks=1",
            *partition,
        ]
        if not self.options.requeue and "--requeue" not in self.options.sbatch_options:
            args.append("--no-requeue")  # a node failure or preemption ends the job: retries
        if job.cpus is not None:
            args.append(f"--cpus-per-task={max(1, math.ceil(job.cpus))}")
        if job.memory is not None:
            args.append(f"--mem={max(1, math.ceil(job.memory / (1 << 20)))}M")
        if job.gpus:
            args.append(f"--gres=gpu:{job.gpus}")
        if limit is not None:  # Slurm's limits are minutes; leave time to start the container
            args.append(f"--time={math.ceil((limit + 60) / 60)}")
        return (*args, *self.options.sbatch_options)

    async def _submit_one(self, group: Sequence[Submission]) -> None:
        """sbatch one job on its own."""
        (one,) = group
        name = f"{JOB_PREFIX}{self._run(one.job)}-{_SAFE.sub('_', one.step)}"
        args = [
            "sbatch",
            "--parsable",
            f"--job-name={name}",
            f"--output={one.folder}/slurm.out",
            f"--chdir={one.folder}",
            f"--comment={json.dumps(one.job.labels, separators=(',', ':'))}",
            *one.options,
            str(one.script),
        ]
        one.job_id = await self._sbatch(args, name)
        self._watch(one.job_id)

    async def _submit_array(self, group: Sequence[Submission]) -> None:
        """sbatch jobs alike as the tasks of one array; where Slurm refuses the array (a site
        may disable arrays, or allow smaller ones: its error names the array), each goes in on
        its own. Any other failure fails them all: an sbatch interrupted, late or answering
        oddly may have queued the array, and single jobs then ran each task twice."""
        first = group[0]
        name = f"{JOB_PREFIX}{self._run(first.job)}-{_SAFE.sub('_', first.family or first.step)}"
        try:
            folder = await anyio.to_thread.run_sync(
                array_folder, self._arrays, [s.folder for s in group]
            )
        except OSError as error:
            raise ContainerError(f"could not write the job array's script: {error}") from None
        labels = shared_labels([s.job for s in group])
        args = [
            "sbatch",
            "--parsable",
            f"--array=0-{len(group) - 1}",
            f"--job-name={name}",
            f"--output={folder}/%a.out",  # each a link to its task's folder/slurm.out
            f"--chdir={folder}",
            f"--comment={json.dumps(labels, separators=(',', ':'))}",
            *first.options,
            str(folder / "array.sh"),
        ]
        try:
            array_id = await self._sbatch(args, name)
        except ContainerError as error:
            await anyio.to_thread.run_sync(remove_tree, folder)
            if not isinstance(error, SbatchRefused) or "array" not in str(error).lower():
                raise  # no answer, an odd one, or not about arrays: the array may be queued
            for submission in group:
                submission.error = None
                try:
                    await self._submit_one([submission])
                except ContainerError as error:
                    submission.error = error
            return
        for task, submission in enumerate(group):
            submission.job_id = f"{array_id}_{task}"
            submission.link = folder / f"{task}.out"
            self._watch(submission.job_id)

    def _watch(self, job_id: str) -> None:
        self.queue.watch(job_id)
        self._live.add(job_id)

    @staticmethod
    def _run(job: ContainerJob) -> str:
        return job.labels.get(f"{LABEL_PREFIX}.run", "run")

    async def _sbatch(self, args: list[str], name: str) -> str:
        """Submit with ``args``, trying again while the controller is out of reach, for at most
        ``SUBMIT_DEADLINE_SECONDS``; the job's (or array's) ID. After a call that failed or
        gave no answer, a job it submitted all the same is looked up by name and adopted (it
        once ran on, unwatched, after its step failed). A refusal of the job itself fails at
        once; the deadline fails with the last error (the tries once outlasted it, and it
        hid a persistent error behind 'did not answer')."""
        give_up = anyio.current_time() + SUBMIT_DEADLINE_SECONDS
        floor = self._highest  # jobs of this name up to here are earlier ones (a retry's)
        for tries, delay in enumerate([*RETRY_DELAYS, None], start=1):
            left = give_up - anyio.current_time()
            try:
                done = await slurm_command(args, deadline=min(CALL_DEADLINE_SECONDS, left))
            except SlurmNoAnswer:
                done = None
            if done is not None and done.returncode == 0:
                job_id = parse_job_id(done)
                break
            # No answer, or a passing error: the job may have gone in all the same. A refusal
            # went nowhere, though Slurm may keep a record of it (FAILED, BadConstraints).
            retry = done is None or sbatch_transient(done)
            if retry:
                named = (await self.jobs_named(name)) - self._live  # names hold the run's ID
                adopted = {i for i in named if int(i.split("_")[0]) > floor}
                if adopted:
                    job_id = min((i.split("_")[0] for i in adopted), key=int)
                    break
            if delay is None or not retry or anyio.current_time() + delay >= give_up:
                raise _not_taken(done, tries, min(CALL_DEADLINE_SECONDS, left))
            await anyio.sleep(delay)
        self.submitted += 1
        self._highest = max(self._highest, int(job_id))
        return job_id

    async def jobs_named(self, name: str) -> set[str]:
        """This user's jobs called ``name`` that squeue shows (empty when squeue fails); ended
        ones too: a short job that a late sbatch submitted may be over before it is looked
        for."""
        args = [
            "squeue",
            "--noheader",
            "--me",
            "--states=all",
            "--array",
            f"--name={name}",
            f"--Format={SQUEUE_FIELDS}",
        ]
        try:
            done = await slurm_command(args)  # at most CALL_DEADLINE_SECONDS
        except SlurmCallFailed:
            return set()
        if done.returncode != 0:
            return set()
        return set(parse_squeue(done.stdout.decode("utf-8", "replace")))


def _not_taken(
    done: subprocess.CompletedProcess[bytes] | None, tries: int, waited: float
) -> ContainerError:
    """Why sbatch did not take a job: its last error, or that it gave no answer."""
    after = f" (after {tries} tries)" if tries > 1 else ""
    if done is None:
        return ContainerError(f"sbatch gave no answer within {waited:.0f} s{after}")
    return SbatchRefused(f"Slurm refused the job{after}: {command_error(done)}")


def array_folder(root: Path, folders: Sequence[Path]) -> Path:
    """A new folder with an array's script and, for each task, the link through which Slurm
    writes that task's own output (``%a.out``) into its job folder's ``slurm.out``."""
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="array-", dir=root))
    script = folder / "array.sh"
    script.write_text(array_script(folders))
    script.chmod(0o755)
    for task, job in enumerate(folders):
        (folder / f"{task}.out").symlink_to(job / "slurm.out")
    return folder


def unlink_with_folder(link: Path) -> None:
    """Remove a task's link; the last one also takes the array's folder."""
    with contextlib.suppress(OSError):
        link.unlink()
    try:
        left = [p.name for p in link.parent.iterdir()]
    except OSError:  # another task's end took the folder already
        return
    if left == ["array.sh"]:
        with contextlib.suppress(OSError):
            remove_tree(link.parent)
