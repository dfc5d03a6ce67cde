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
from kliko_async.runtime.inflight import InFlight, track, writing_into
from kliko_async.runtime.slurm.arrays import Gatherer, Submission, array_script, shared_labels
from kliko_async.runtime.slurm.cancelling import CLEANUP_DEADLINE_SECONDS, Canceller
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
from kliko_async.runtime.slurm.jobstates import SQUEUE_FIELDS, SlurmJob, parse_squeue
from kliko_async.runtime.slurm.options import SlurmOptions
from kliko_async.runtime.slurm.queue import JobQueue

JOB_PREFIX = "kliko-"

SUBMIT_DEADLINE_SECONDS = 60
"""How long sbatch is tried for one submission (a controller that does not answer, or is
busy), the look-up of what the last try submitted aside."""

CANCELLED_SBATCH_GRACE_SECONDS = 2.0
"""How long an sbatch under way when its submission is cancelled (Ctrl-C) may still answer (it
takes milliseconds): its answer names the job to cancel, where an sbatch stopped leaves the
job, if any, to be looked up by its name."""

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class SbatchRefused(ContainerError):
    """sbatch said, with an error, that it did not take the job (or the array)."""


class Submitter:
    """sbatch for one runtime: each job is watched in ``queue`` and counted ``live`` from its
    submission; ``arrays`` is the folder for the arrays' scripts. ``submitted`` counts the
    sbatch calls that took (an array is one).

    A submission cancelled (Ctrl-C) ends within seconds wherever it is (gathering an array,
    in sbatch, between its tries, or going in job by job); whatever sbatch may have submitted
    for it is cancelled with ``canceller``, or named at the end of the run."""

    def __init__(
        self,
        options: SlurmOptions,
        queue: JobQueue,
        live: set[str],
        arrays: Path,
        canceller: Canceller | None = None,
    ) -> None:
        self.options = options
        self.queue = queue
        self.submitted = 0
        self._live = live
        self._highest = 0
        """The highest job ID sbatch gave (Slurm's IDs grow)."""
        self._arrays = arrays
        self._canceller = canceller or Canceller(queue)
        # A task of an array waits, once cancelled, for the sbatch of its array (cancelled as
        # well) to answer or be stopped, and for what it submitted to be cancelled.
        wait = CANCELLED_SBATCH_GRACE_SECONDS + 2 * CLEANUP_DEADLINE_SECONDS
        self._gatherer = Gatherer(self._submit_one, self._submit_array, cancelled_wait=wait)

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
        one.job_id = await self._sbatch(args, name, f"step {one.step}", [one.folder])
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
        what = f"job array of step {first.family or first.step}"
        try:
            array_id = await self._sbatch(args, name, what, [folder, *(s.folder for s in group)])
        except ContainerError as error:
            await anyio.to_thread.run_sync(remove_tree, folder)
            if not isinstance(error, SbatchRefused) or "array" not in str(error).lower():
                raise  # no answer, an odd one, or not about arrays: the array may be queued
            await self._one_by_one(group)
            return
        except BaseException:  # cancelled: the folder goes, unless a task left may use it
            if not writing_into(folder):
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(remove_tree, folder)
            raise
        for task, submission in enumerate(group):
            submission.job_id = f"{array_id}_{task}"
            submission.link = folder / f"{task}.out"
            self._watch(submission.job_id)

    async def _one_by_one(self, group: Sequence[Submission]) -> None:
        """sbatch each of ``group`` on its own (Slurm refused them as an array)."""
        for submission in group:
            submission.error = None
            try:
                await self._submit_one([submission])
            except ContainerError as error:
                submission.error = error

    def _watch(self, job_id: str) -> None:
        self.queue.watch(job_id)
        self._live.add(job_id)

    @staticmethod
    def _run(job: ContainerJob) -> str:
        return job.labels.get(f"{LABEL_PREFIX}.run", "run")

    async def _sbatch(
        self, args: list[str], name: str, what: str, folders: Sequence[Path] = ()
    ) -> str:
        """Submit with ``args``, trying again while the controller is out of reach, for at most
        ``SUBMIT_DEADLINE_SECONDS``; the job's (or array's) ID. After a call that failed or
        gave no answer, a job it submitted all the same is looked up by name and adopted (it
        once ran on, unwatched, after its step failed). A refusal of the job itself fails at
        once; the deadline fails with the last error (the tries once outlasted it, and it
        hid a persistent error behind 'did not answer').

        Cancelled (Ctrl-C), it ends within seconds, wherever it is: what sbatch may have
        submitted is withdrawn (:meth:`_withdraw`; ``what`` and ``folders``: whose job it is
        and the folders it writes into, for one that cannot be). The tries once went on, in a
        shield, for up to 90 s after Ctrl-C, submitting all the while."""
        give_up = anyio.current_time() + SUBMIT_DEADLINE_SECONDS
        floor = self._highest  # jobs of this name up to here are earlier ones (a retry's)
        answer: list[subprocess.CompletedProcess[bytes] | None] = [None]
        try:
            for tries, delay in enumerate([*RETRY_DELAYS, None], start=1):
                left = give_up - anyio.current_time()
                answer[0] = None
                await self._call(args, min(CALL_DEADLINE_SECONDS, left), answer)
                done = answer[0]
                if done is not None and done.returncode == 0:
                    job_id = parse_job_id(done)
                    break
                # No answer, or a passing error: the job may have gone in all the same. A
                # refusal went nowhere, though Slurm may keep a record of it (FAILED).
                retry = done is None or sbatch_transient(done)
                if retry:
                    named = set(await self.jobs_named(name) or {}) - self._live  # the run's ID
                    adopted = {i for i in named if int(i.split("_")[0]) > floor}
                    if adopted:
                        job_id = min((i.split("_")[0] for i in adopted), key=int)
                        break
                if delay is None or not retry or anyio.current_time() + delay >= give_up:
                    raise _not_taken(done, tries, min(CALL_DEADLINE_SECONDS, left))
                await anyio.sleep(delay)
        except ContainerError:
            raise
        except BaseException:
            done = answer[0]
            took = _job_id_in(done) if done is not None and done.returncode == 0 else None
            await self._withdraw(name, floor, took, what, folders)
            raise
        self.submitted += 1
        self._highest = max(self._highest, int(job_id))
        return job_id

    async def _call(
        self,
        args: Sequence[str],
        limit: float,
        answer: list[subprocess.CompletedProcess[bytes] | None],
    ) -> None:
        """One sbatch call: its answer in ``answer[0]`` (None: no answer within ``limit``).
        Cancelled meanwhile, it may still answer for ``CANCELLED_SBATCH_GRACE_SECONDS`` (its
        answer names the job it submitted), and is then stopped; the cancellation follows."""
        failed: list[Exception] = []  # raised here, not as a task group's exception group
        async with anyio.create_task_group() as group:
            with anyio.CancelScope(shield=True) as call:

                async def stop_when_cancelled() -> None:
                    try:
                        await anyio.sleep_forever()
                    finally:
                        grace = anyio.current_time() + CANCELLED_SBATCH_GRACE_SECONDS
                        call.deadline = min(call.deadline, grace)

                group.start_soon(stop_when_cancelled)
                try:
                    answer[0] = await slurm_command(args, deadline=limit)
                except SlurmNoAnswer:
                    pass
                except Exception as error:  # sbatch is not installed, or cannot be run
                    failed.append(error)
            group.cancel_scope.cancel()
        if failed:
            raise failed[0]

    async def _withdraw(
        self, name: str, floor: int, took: str | None, what: str, folders: Sequence[Path]
    ) -> None:
        """Cancel what an sbatch cancelled under way may have submitted: the job it answered
        with (``took``), and any job called ``name`` it submitted before it was stopped (IDs
        above ``floor``, not watched already). One that cannot be cancelled, or looked up (squeue
        does not answer), is named at the end of the run with ``folders``, which are kept.
        Shielded, within the cleanup's deadline that the jobs being cancelled share."""
        named: dict[str, SlurmJob] | None = None
        with anyio.CancelScope(shield=True, deadline=self._canceller.deadline()):
            named = await self.jobs_named(name)
        if named is None and took is None:
            track(
                InFlight(
                    f"{what}: its sbatch was stopped, and squeue could not say what it submitted",
                    job_name=name,
                    writes_into=tuple(folders),
                )
            )
        found = {
            job_id.split("_")[0]
            for job_id, job in (named or {}).items()
            if job.active and job_id not in self._live and int(job_id.split("_")[0]) > floor
        }
        for job_id in sorted(found | ({took} if took else set()), key=int):
            with anyio.CancelScope(shield=True):
                await self._canceller.cancel_or_keep(job_id, what, folders)

    async def jobs_named(self, name: str) -> dict[str, SlurmJob] | None:
        """This user's jobs called ``name`` that squeue shows (None when squeue fails); ended
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
            return None
        if done.returncode != 0:
            return None
        return parse_squeue(done.stdout.decode("utf-8", "replace"))


def _job_id_in(done: subprocess.CompletedProcess[bytes]) -> str | None:
    try:
        return parse_job_id(done)
    except ContainerError:
        return None


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
