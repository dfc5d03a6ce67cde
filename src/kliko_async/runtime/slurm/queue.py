"""The queue of the jobs one process submitted, as Slurm reports them.

One ``squeue`` call per poll asks for this process's watched jobs only (``--me --jobs=ID,...``,
never every job on the cluster), and a job that has left ``squeue`` (the controller forgets
finished jobs after ``MinJobAge``) is looked up once with ``sacct`` (``accounting.py``), from
the accounting database or, without one, from the job completion log (``sacct --completion``).
A failed call is tried again with backoff; only failures that last ``patience`` seconds reach
the steps waiting for an answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.lowlevel

from kliko_async.runtime.slurm.accounting import Accounting
from kliko_async.runtime.slurm.commands import (
    Command,
    SlurmCallFailed,
    command_error,
    slurm_command,
)
from kliko_async.runtime.slurm.jobstates import (
    INVALID_JOB_ID,
    NO_ACCOUNTING,
    NOT_IN_ACCOUNTING,
    SQUEUE_FIELDS,
    SlurmJob,
    parse_squeue,
)

POLL_DEADLINE_SECONDS = 30
"""The longest one poll's commands may take (a controller that does not answer)."""


CUT_SHORT_GRACE_SECONDS = 1.0
"""How long a poll cut short (:meth:`JobQueue.cut_short`) may take: a well squeue takes ms."""

SECONDS_PER_JOB = 0.01
"""How the shortest poll interval grows with the jobs watched: 0.25 s up to 25 jobs, 1 s with
100, 2 s with 200 (3 s, the slowest, from 300)."""


class JobQueue:
    """The states of the jobs this process watches, from one ``squeue`` call per poll.

    Whoever waits first polls (after the current interval); everyone else waiting meanwhile
    gets the same answer. The interval starts at ``fastest`` (longer with many jobs watched:
    :meth:`quickest`) and grows by half each poll in which no watched job changed, up to
    ``slowest``; a new job or any change resets it. A
    failed poll is retried after a growing pause (up to 30 s); when polls have failed for
    ``patience`` seconds, the jobs' waiters get ``SlurmCallFailed`` (their steps fail, the
    run goes on) and the next waiter starts afresh. A requeued job missing from squeue is not
    taken as ended from accounting until it has been missing ``requeue_blip`` seconds.
    """

    def __init__(
        self,
        fastest: float = 0.25,
        slowest: float = 3.0,
        *,
        patience: float = 120.0,
        accounting_grace: float = 10.0,
        requeue_blip: float = 5.0,
        command: Command = slurm_command,
    ) -> None:
        self.fastest = fastest
        self.slowest = slowest
        self.patience = patience
        self.accounting_grace = accounting_grace
        self.requeue_blip = requeue_blip
        self.interval = fastest
        self.polls = 0
        self.failed_polls = 0
        self._command = command
        self._jobs: dict[str, SlurmJob | None] = {}
        self._watched_at: dict[str, float] = {}
        self._missing_since: dict[str, float] = {}
        self._tick = anyio.Event()
        self._polling = False
        self._polled_at: float | None = None  # when the last poll began (None: none yet)
        self._hurried = anyio.Event()
        self._failing_since: float | None = None
        self._failure: SlurmCallFailed | None = None
        self._accounting = Accounting(command)
        self._ended: dict[str, str] = {}
        self._poll_scope: anyio.CancelScope | None = None  # the poll under way's
        self.cleanup_by: float | None = None  # a cleanup's deadline (Canceller.deadline)
        self._poll_began = 0.0

    def watch(self, job_id: str) -> None:
        self._jobs.setdefault(job_id, None)
        self._watched_at.setdefault(job_id, anyio.current_time())
        self.interval = self.quickest()

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self._watched_at.pop(job_id, None)
        self._missing_since.pop(job_id, None)
        self._ended.pop(job_id, None)

    def ended(self, job_id: str, state: str) -> None:
        """The run knows the job ended (``state``: its status file was read, or ``scancel``
        took it): once squeue no longer shows it, it has gone, whatever accounting says. (A job
        cancelled while pending may never reach accounting: waiting for it held Ctrl-C 11 s.
        One that ended between two polls was never seen in squeue: its place in the queue was
        held for the whole patience with Slurm.)"""
        self._ended[job_id] = state

    def cut_short(self) -> None:
        """Give up the poll under way if it takes longer than ``CUT_SHORT_GRACE_SECONDS`` (a
        run being cancelled: its poller's shielded poll held the cancellation, and the scancel
        after it, for up to ``POLL_DEADLINE_SECONDS`` while squeue hung)."""
        if self._poll_scope is not None:
            by = max(self._poll_began + CUT_SHORT_GRACE_SECONDS, anyio.current_time())
            self._poll_scope.deadline = min(self._poll_scope.deadline, by)

    def hurry(self) -> None:
        """Poll at the fastest pace again (a job is being cancelled, or just ended), from the
        poll that is waited for now on."""
        self.interval = self.quickest()
        self._hurried.set()

    def quickest(self) -> float:
        """The shortest interval now: ``fastest``, longer the more jobs are watched (one poll
        answers for all of them: a big run keeps its jobs moving on 1 call a second or two,
        and a controller is not asked 4 times a second for 200 jobs), at most ``slowest``."""
        return min(max(self.fastest, len(self._jobs) * SECONDS_PER_JOB), self.slowest)

    def known(self, job_id: str) -> SlurmJob | None:
        """The job's state as of the last poll."""
        return self._jobs.get(job_id)

    async def next_state(self, job_id: str) -> SlurmJob | None:
        """The job's state after the next poll; None while Slurm does not show it yet."""
        tick = self._tick
        if self._polling:
            await tick.wait()
        else:
            self._polling = True
            try:
                # Until the poll is due, from the last one: a poller cancelled meanwhile (its
                # job ended) leaves the rest of the wait to the next one, not a new interval
                # (with 16 jobs ending each 2 s interval, no poll was ever due for 30 s).
                if self._polled_at is None:
                    self._polled_at = anyio.current_time()
                while (wait := self._polled_at + self.interval - anyio.current_time()) > 0:
                    self._hurried = anyio.Event()  # hurry() shortens the wait under way
                    with anyio.move_on_after(wait):
                        await self._hurried.wait()
                # A waiter cancelled meanwhile (Ctrl-C) starts no poll: with squeue hanging, a
                # poll outlasts the interval, and the cancelled poller went from one shielded
                # poll to the next without a checkpoint, holding Ctrl-C for the whole patience.
                await anyio.lowlevel.checkpoint_if_cancelled()
                self._polled_at = anyio.current_time()
                await self._poll()
            finally:
                self._polling = False
                self._tick = anyio.Event()
                tick.set()
        if self._failure is not None and job_id in self._jobs:
            raise self._failure
        return self._jobs.get(job_id)

    async def _poll(self) -> None:
        self._failure = None
        ids = sorted(self._jobs, key=_order)
        if not ids:
            return
        # A cleanup under way (Ctrl-C) has polls end by its deadline, not 30 s after it.
        limit = float(POLL_DEADLINE_SECONDS)
        if self.cleanup_by is not None and self.cleanup_by > anyio.current_time():
            limit = min(limit, self.cleanup_by - anyio.current_time())
        try:
            # Shielded: a poll, once its command started, is let end (bounded in time). The
            # poller is whichever follower asked first, and followers are cancelled as their
            # jobs end; a command killed mid-way raced Python's child watcher, which then
            # printed "Unknown child process pid ..." on the user's terminal (Python 3.11).
            with anyio.CancelScope(shield=True), anyio.fail_after(limit) as self._poll_scope:
                self._poll_began = anyio.current_time()
                found = await self._squeue(ids)
                # Not in squeue: it left the queue (seen there before), or it ended before any
                # poll saw it and has left already (squeue may show no ended job): ask
                # accounting. How a job ended is read from accounting once. A step whose job
                # ended meanwhile has forgotten it: it is no longer asked about.
                missing = [
                    i
                    for i in ids
                    if i in self._jobs
                    and i not in found
                    and not _ended_in_accounting(self._jobs.get(i))
                ]
                if missing:
                    found.update(await self._accounting.ended(missing, self._jobs))
        except (SlurmCallFailed, TimeoutError) as error:
            self._poll_scope = None
            self._poll_failed(str(error) or "squeue or sacct did not answer in time")
            return
        self._poll_scope = None
        self._failing_since = None
        self.polls += 1
        changed = False
        now = anyio.current_time()
        for job_id in [i for i in ids if i in found and i not in missing]:
            self._missing_since.pop(job_id, None)
        for job_id in missing:
            since = self._missing_since.setdefault(job_id, now)
            blip = now - since < self.requeue_blip
            if job_id in found and blip and _requeued_before(self._jobs.get(job_id)):
                # Releasing a requeued job (scontrol update, scontrol release) can hide it from
                # squeue for a moment, and accounting then holds only the record of its earlier
                # attempt: not its end. Believed once the job stays away.
                del found[job_id]
                continue
            if job_id in found:
                continue
            if job_id in self._ended:  # it ended, and squeue no longer shows it: gone
                found[job_id] = SlurmJob(job_id=job_id, state=self._ended[job_id], from_sacct=True)
                continue
            # Neither squeue nor accounting knows it. Accounting may lag a moment behind a job
            # that just left squeue (the completion log is written as it ends): a job seen
            # before has vanished once that grace is over (at once with no accounting at all),
            # one never seen once the patience with Slurm is. Say so rather than wait forever.
            grace = 0.0 if self._accounting.mode == "none" else self.accounting_grace
            seen = _seen_in_squeue(self._jobs.get(job_id))
            if (seen and now - since >= grace) or now - self._watched_at.get(
                job_id, now
            ) >= self.patience:
                found[job_id] = SlurmJob(
                    job_id=job_id, state="UNKNOWN", reason=self._unknown_reason(), from_sacct=True
                )
        for job_id in ids:
            state = found.get(job_id)
            if state is not None and job_id in self._jobs and state != self._jobs[job_id]:
                self._jobs[job_id] = state
                changed = True
        self.interval = self.quickest() if changed else min(self.interval * 1.5, self.slowest)

    def _unknown_reason(self) -> str:
        """Why a job that left squeue has no known end: the cluster keeps no accounting, or
        its accounting holds no record of the job."""
        return NO_ACCOUNTING if self._accounting.mode == "none" else NOT_IN_ACCOUNTING

    def _poll_failed(self, error: str) -> None:
        self.failed_polls += 1
        now = anyio.current_time()
        self._failing_since = self._failing_since or now
        self.interval = min(max(self.interval * 2, 1.0), 30.0)
        if now - self._failing_since >= self.patience:
            self._failing_since = None
            self.interval = self.fastest
            self._failure = SlurmCallFailed(
                f"Slurm did not answer about its jobs for {self.patience:g} s: {error}"
            )

    async def _squeue(self, ids: Sequence[str]) -> dict[str, SlurmJob]:
        args = [
            "squeue",
            "--noheader",
            "--me",
            "--states=all",
            "--array",
            f"--jobs={','.join(ids)}",
            f"--Format={SQUEUE_FIELDS}",
        ]
        done = await self._command(args)
        if done.returncode != 0:
            if INVALID_JOB_ID in command_error(done):
                return {}  # every one of them has left the queue
            raise SlurmCallFailed(f"squeue failed: {command_error(done)}")
        return parse_squeue(done.stdout.decode("utf-8", "replace"))


def _order(job_id: str) -> tuple[int, int]:
    """Jobs in the order they were submitted, an array's tasks in theirs."""
    array, _, task = job_id.partition("_")
    return int(array), int(task or -1)


def _seen_in_squeue(job: SlurmJob | None) -> bool:
    return job is not None and not job.from_sacct


def _requeued_before(job: SlurmJob | None) -> bool:
    """Seen in squeue as requeued, or on a later attempt: accounting may hold an earlier
    attempt's end for it."""
    return _seen_in_squeue(job) and job is not None and (job.requeued or job.restarts > 0)


def _ended_in_accounting(job: SlurmJob | None) -> bool:
    return job is not None and job.from_sacct
