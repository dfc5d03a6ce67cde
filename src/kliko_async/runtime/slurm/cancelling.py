"""Cancelling the Slurm runtime's jobs (``scancel``), and waiting until Slurm no longer counts
them, within one deadline for all the jobs cancelled together (Ctrl-C); a job that may be left
running is tracked (``inflight``), so that the run's last message names it with the folders it
may still write into, which are kept."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio

from kliko_async.runtime.inflight import InFlight, track
from kliko_async.runtime.slurm.commands import SlurmCallFailed, retrying, saying_errors
from kliko_async.runtime.slurm.queue import JobQueue

CLEANUP_DEADLINE_SECONDS = 30
"""How long cancelling a job (scancel, then waiting for it to leave the node) may take: all the
jobs cancelled together (Ctrl-C) share the one deadline."""


class Canceller:
    """scancel for the jobs ``queue`` watches, and the waits until they have left it."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self._cleanup_until: float | None = None  # the deadline of the cleanup under way

    async def left_queue(self, job_id: str) -> None:
        """Wait until Slurm no longer counts the job in its queue (at most
        ``CLEANUP_DEADLINE_SECONDS``). The job's status file comes before the end of its script
        (the container is still being removed) and Slurm's bookkeeping: its place under
        ``--slurm-max-jobs`` goes to the next job only once Slurm agrees, as a site's limit
        counts (under load, a run once had 9 jobs in the queue with a limit of 8)."""
        self.queue.ended(job_id, "COMPLETED")  # its status file was read
        with anyio.move_on_after(CLEANUP_DEADLINE_SECONDS):
            await self.until_gone(job_id)

    async def cancel_or_keep(self, job_id: str, what: str, folders: Sequence[Path] = ()) -> bool:
        """:meth:`cancel` the job (``what``: whose it is, for people); True once it is. One
        that may be left running is tracked, with ``folders``, the folders it may still write
        into: the end of the run names both, and they are kept (a step's staging folder was
        deleted under a job that scancel had failed to cancel)."""
        left = await self.cancel(job_id)
        if left is not None:
            track(InFlight(f"{what}, {left}", job_id=job_id, writes_into=tuple(folders)))
        return left is None

    async def cancel(self, job_id: str, *, closing: bool = False) -> str | None:
        """scancel the job; wait until it has left its node (its script removes the container).
        None once it has (or Slurm took it and stopped answering); else why it may be left
        running, in words (scancel's error): a Ctrl-C once said nothing of jobs scancel
        failed to cancel, which kept running after the run had ended.

        Shielded, with the cleanup's deadline (:meth:`deadline`): it runs while its caller is
        being cancelled (Ctrl-C). Slurm not answering by then leaves the job to Slurm (a later
        run cancels it)."""
        deadline = self.deadline(closing=closing)
        if deadline <= anyio.current_time():
            return f"not cancelled: the cleanup's {CLEANUP_DEADLINE_SECONDS} s were over"
        said: list[str] = []  # scancel's last error
        taken = False
        with anyio.CancelScope(shield=True, deadline=deadline) as scope:
            self.queue.watch(job_id)
            try:
                await retrying(["scancel", job_id], command=saying_errors(said))
                taken = True
                self.queue.ended(job_id, "CANCELLED")
                await self.until_gone(job_id)
            except SlurmCallFailed:
                pass
            finally:
                self.queue.forget(job_id)
        if taken and scope.cancelled_caught:
            return (
                "cancelled, but squeue did not show it leave its node within the cleanup's "
                f"{CLEANUP_DEADLINE_SECONDS} s"
            )
        if taken:
            return None
        if said:
            return f"not cancelled, scancel failed: {said[-1]}"
        return f"not cancelled, scancel did not answer within {CLEANUP_DEADLINE_SECONDS} s"

    def deadline(self, *, closing: bool = False) -> float:
        """When the cleanup under way must end, or one starting now: jobs cancelled together
        (Ctrl-C) share one deadline, and closing the runtime after them shares theirs, over or
        not. Each had its own, and polls that outlived it: with squeue hanging, Ctrl-C took 2
        to 5 minutes to answer, not 30 s."""
        now = anyio.current_time()
        if closing and self._cleanup_until is not None:
            return self._cleanup_until
        if self._cleanup_until is None or self._cleanup_until <= now:
            self._cleanup_until = now + CLEANUP_DEADLINE_SECONDS
            self.queue.cleanup_by = self._cleanup_until
        return self._cleanup_until

    async def until_gone(self, job_id: str) -> None:
        """Until Slurm no longer shows the job pending, running or completing (not in squeue at
        all: not counted either); a Slurm that stops answering ends the wait."""
        self.queue.hurry()
        try:
            info = self.queue.known(job_id) or await self.queue.next_state(job_id)
            while info is not None and info.active:
                info = await self.queue.next_state(job_id)
        except SlurmCallFailed:
            return
