"""How jobs that left ``squeue`` ended, from Slurm's accounting: its database, or, without one,
the job completion log (``sacct --completion``); which of them the cluster keeps is found at
first use (a cluster may keep neither)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from kliko_async.runtime.slurm.commands import Command, SlurmCallFailed, command_error
from kliko_async.runtime.slurm.jobstates import SlurmJob, parse_sacct


class Accounting:
    """``sacct`` through ``command``, for the jobs a :class:`~.queue.JobQueue` watches."""

    def __init__(self, command: Command) -> None:
        self._command = command
        self.mode: str | None = None
        """"", "--completion" or "none": found at first use."""

    async def ended(
        self, ids: Iterable[str], known: Mapping[str, SlurmJob | None]
    ) -> dict[str, SlurmJob]:
        """How jobs that left squeue ended, from accounting; {} where there is none. ``known``:
        what squeue said of each job before.

        A task of a job array is asked for by its own job ID (the completion log knows no
        ``<array>_<task>``), once squeue showed it started. One never seen started is asked for
        by its array's ID: tasks cancelled while pending (``scancel '<array>_[0-3]'``) end in
        the array's one record, and their steps are told that, not that nothing is known.
        """
        by_raw: dict[str, str] = {}
        unstarted: dict[str, list[str]] = {}  # an array's ID: its tasks never seen started
        for job_id in ids:
            seen = known.get(job_id)
            raw = seen.raw_id if seen is not None and seen.raw_id else job_id
            if "_" in raw:
                unstarted.setdefault(raw.partition("_")[0], []).append(job_id)
            else:
                by_raw[raw] = job_id
        # An array's ID that is a started task's own (the last task's) is that task's record.
        arrays = [array for array in unstarted if array not in by_raw]
        if not by_raw and not arrays:
            return {}
        asked = {*by_raw.values(), *(t for a in arrays for t in unstarted[a])}
        ended: dict[str, SlurmJob] = {}
        for printed, job in (await self._accounting_of([*by_raw, *arrays])).items():
            # The completion log prints the job ID asked for; a database the task's name.
            if printed in by_raw or printed in asked:
                names = [by_raw.get(printed) or printed]
            elif printed in unstarted and job.state == "CANCELLED":
                names = unstarted[printed]  # the array's record, for its pending tasks
            else:
                continue
            for name in names:
                ended[name] = job.model_copy(update={"job_id": name})
        return ended

    async def _accounting_of(self, ids: Sequence[str]) -> dict[str, SlurmJob]:
        if self.mode == "none":
            return {}
        fields = ["-n", "-P", "-X", "-o", "JobID,State,ExitCode,NodeList,JobName"]
        args = ["sacct", *fields, f"--jobs={','.join(ids)}"]
        if self.mode is None:
            for mode in ("", "--completion"):
                done = await self._command([*args, mode] if mode else args)
                if done.returncode == 0:
                    self.mode = mode
                    return parse_sacct(done.stdout.decode("utf-8", "replace"))
                if "disabled" not in command_error(done) and "none" not in command_error(done):
                    raise SlurmCallFailed(f"sacct failed: {command_error(done)}")
            self.mode = "none"
            return {}
        mode_args = [self.mode] if self.mode else []
        done = await self._command([*args, *mode_args])
        if done.returncode != 0:
            raise SlurmCallFailed(f"sacct failed: {command_error(done)}")
        return parse_sacct(done.stdout.decode("utf-8", "replace"))
