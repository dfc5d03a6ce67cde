"""Looks at the folders of all the jobs a run follows, together: one worker-thread hop per look
for all of them, instead of one per job.

A 200-way matrix on Slurm has 200 jobs followed at once, each looked at a few times a second
(has it started, what did it write, has it ended). One thread hop each cost this process a
quarter of its CPU beside the cluster's own work, on the machine the containers need. Here a
follower asks for its next look; requests that arrive within ``gather_s`` share one hop.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from kliko_async.runtime.slurm.logfiles import JobFiles, LogFiles, look_at_job_files

GATHER_SECONDS = 0.02
"""How long a look waits for others that may share its thread hop."""


class FolderLooks:
    """Whoever asks first gathers the requests of ``gather_s`` and looks at all their folders
    in one worker thread; the others wait for that look. A cancelled asker's request goes with
    it; a look cancelled midway leaves its waiters to ask again (one of them looks then)."""

    def __init__(self, gather_s: float = GATHER_SECONDS) -> None:
        self.gather_s = gather_s
        self.hops = 0
        self._wanted: dict[Path, LogFiles] = {}
        self._seen: dict[Path, JobFiles] = {}
        self._done = anyio.Event()
        self._looking = False

    async def look(self, folder: Path, logs: LogFiles) -> JobFiles:
        """The next look at ``folder`` (see :func:`look_at_job_files`)."""
        self._wanted[folder] = logs
        try:
            while folder not in self._seen:
                done = self._done
                if self._looking:
                    await done.wait()
                    continue
                self._looking = True
                try:
                    await anyio.sleep(self.gather_s)
                    wanted, self._wanted = self._wanted, {}
                    self.hops += 1
                    self._seen.update(await anyio.to_thread.run_sync(_look_at_all, wanted))
                finally:
                    self._looking = False
                    self._done = anyio.Event()
                    done.set()
            return self._seen.pop(folder)
        finally:
            self._wanted.pop(folder, None)
            self._seen.pop(folder, None)


def _look_at_all(wanted: dict[Path, LogFiles]) -> dict[Path, JobFiles]:
    return {folder: look_at_job_files(folder, logs) for folder, logs in wanted.items()}
