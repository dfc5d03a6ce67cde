"""The Slurm runtime: each container runs as one Slurm job on a cluster node (see ``Runtime``).

Images are resolved, read and built on the local Docker Engine (the submitting host's); each
``run`` submits one batch job (``sbatch --parsable``, named ``kliko-<run>-<step>``; jobs alike and
ready together go in as one job array, see ``slurm/arrays.py``) whose script
(``slurm/script.py``) runs the container on its node with Docker, or with Charliecloud where the
node has no Docker Engine. The job's folder is in the step's staging folder in the cache, which
must be on a filesystem every node sees at the same path: the container's stdout and stderr are
written there and followed from here while the job runs, and the job's end is read from its
``status`` file, or, when the job never got that far, from ``squeue --json``.

What this relies on across nodes: files written on a node become visible here (NFS close-to-open
consistency is enough, since every file is read after it was closed or renamed), and ``rename``
within one folder is atomic (cache publish, converted images). It does not rely on ``flock``
across nodes: the cache's per-key locks are taken on the submitting host only, so runs from two
hosts may compute one key twice, and the first rename wins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anyio

from kliko_async.errors import ContainerError, RuntimeUnavailable
from kliko_async.runtime.base import (
    LABEL_PREFIX,
    MATRIX_LABEL,
    ContainerExit,
    ContainerJob,
    ImageFiles,
    LogSink,
)
from kliko_async.runtime.docker import DockerRuntime
from kliko_async.runtime.inflight import InFlight, track, untrack
from kliko_async.runtime.slurm.arrays import (
    Submission,
)
from kliko_async.runtime.slurm.cancelling import Canceller
from kliko_async.runtime.slurm.charliecloud import CharliecloudImages
from kliko_async.runtime.slurm.commands import (
    CALL_DEADLINE_SECONDS,
    RETRY_DELAYS,
    SlurmCallFailed,
    SlurmNoAnswer,
    not_answering,
    sinfo,
    user_name,
)
from kliko_async.runtime.slurm.endings import (
    ended_without_status,
    pending_for_good,
    status_exit,
)
from kliko_async.runtime.slurm.jobstates import HOPELESS_REASONS, SlurmJob, our_active_jobs
from kliko_async.runtime.slurm.logfiles import LogFiles, job_folder
from kliko_async.runtime.slurm.looks import FolderLooks
from kliko_async.runtime.slurm.options import SlurmOptions
from kliko_async.runtime.slurm.places import Places
from kliko_async.runtime.slurm.queue import JobQueue
from kliko_async.runtime.slurm.script import env_file, job_script
from kliko_async.runtime.slurm.sharedcheck import check_shared
from kliko_async.runtime.slurm.submit import (
    JOB_PREFIX,
    SUBMIT_DEADLINE_SECONDS,
    Submitter,
    unlink_with_folder,
)
from kliko_async.runtime.slurm.unchanged import check_unchanged, tree_state

TIME_LIMIT_MARGIN_SECONDS = 10
"""The job stops its container this long after the step's timeout: the run's own timer, which
stops the job with scancel, comes first; the job's own limit holds when nobody is left to."""

STATUS_GRACE_SECONDS = 3
"""After Slurm says a job ended, how long its status file may take to appear here."""

SUBMIT_LAST_RESORT_SECONDS = SUBMIT_DEADLINE_SECONDS + 2 * CALL_DEADLINE_SECONDS
"""How long one submission may take in all: sbatch's tries, the look-up by name of what the
last one submitted, and the array's gathering (each bounded on its own)."""

PROBE_DEADLINE_SECONDS = 60
"""How long the shared-filesystem check at start waits for its job to run."""

_FOLLOW_FASTEST, _FOLLOW_SLOWEST, _FOLLOW_PENDING = 0.05, 0.25, 1.0


class SlurmRuntime:
    """Runs each Kliko container as one Slurm job (see ``Runtime`` for the contract)."""

    def __init__(
        self,
        cache_root: Path,
        options: SlurmOptions | None = None,
        *,
        docker: DockerRuntime | None = None,
    ) -> None:
        self.options = options or SlurmOptions()
        self.folder = Path(os.path.abspath(cache_root)) / "slurm"
        self.queue = JobQueue(
            self.options.poll_fastest, self.options.poll_slowest, patience=self.options.patience
        )
        self.most_in_queue = 0
        """The most of this process's step jobs that were pending or running at once."""
        self._places = Places(self.options.max_jobs)
        self._docker = docker or DockerRuntime()
        self._images = CharliecloudImages(self.folder / "images", self._docker)
        self._live: set[str] = set()
        self._looks = FolderLooks()
        self._cancels = Canceller(self.queue)
        self._submitter = Submitter(
            self.options, self.queue, self._live, self.folder / "arrays", self._cancels
        )

    # -- images: on the local engine ---------------------------------------------------------

    async def resolve_image(self, ref: str) -> str:
        return await self._docker.resolve_image(ref)

    async def probe_image(
        self, image_id: str, *, read: Sequence[str] = (), stat: Sequence[str] = ()
    ) -> ImageFiles:
        return await self._docker.probe_image(image_id, read=read, stat=stat)

    async def build_image(
        self,
        context: Path,
        *,
        tag: str | None = None,
        on_log: Callable[[str], None] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        return await self._docker.build_image(context, tag=tag, on_log=on_log, labels=labels)

    async def find_images(self, labels: Mapping[str, str]) -> list[str]:
        return await self._docker.find_images(labels)

    # -- the cluster -------------------------------------------------------------------------

    def _partition_args(self) -> list[str]:
        return [f"--partition={self.options.partition}"] if self.options.partition else []

    async def nodes(self) -> list[str]:
        """The partition's nodes that respond (not down, drained or unknown)."""
        usable = {
            name
            for name, state in await sinfo(self.options.partition, "%N %t", per_node=True)
            if state.rstrip("*~#%!$@^-") in ("idle", "mix", "alloc", "comp", "resv")
        }
        if not usable:
            where = self.options.partition or "default"
            raise RuntimeUnavailable(f"Slurm's {where} partition has no node that takes jobs")
        return sorted(usable)

    async def total_cpus(self) -> int:
        """The CPUs of the partition's nodes, all together: how many steps may be queued."""
        try:
            return max(
                1,
                sum(
                    int(r[0].split("/")[3])
                    for r in await sinfo(self.options.partition, "%C", per_node=False)
                ),
            )
        except (ValueError, IndexError):
            return 1

    async def check_shared_cache(self, paths: Sequence[Path] = ()) -> None:
        """Refuse, clearly, when a node cannot see the cache folder (or one of ``paths``, the
        chain's data) at the same path (:mod:`~kliko_async.runtime.slurm.sharedcheck`)."""
        await check_shared(self, paths)

    def partition_args(self) -> list[str]:
        return self._partition_args()

    job_prefix = JOB_PREFIX

    async def wait_probe(self, job_id: str, folder: Path) -> bool:
        """Wait for a probe job to end (True), or cancel it after PROBE_DEADLINE_SECONDS; one
        left running is named at the end of the run, with its ``folder`` (kept)."""
        what = "the check of the cache folder"
        self.queue.watch(job_id)
        try:
            with anyio.move_on_after(PROBE_DEADLINE_SECONDS):
                while True:
                    info = await self.queue.next_state(job_id)
                    if info is not None and not info.active:
                        return True
            await self._cancels.cancel_or_keep(job_id, what, [folder])
            return False
        except SlurmCallFailed:  # squeue keeps failing: the check is left to the jobs too
            await self._cancels.cancel_or_keep(job_id, what, [folder])
            return False
        except BaseException:
            await self._cancels.cancel_or_keep(job_id, what, [folder])
            raise
        finally:
            self.queue.forget(job_id)

    # -- running one container as one job ----------------------------------------------------

    async def run(
        self,
        job: ContainerJob,
        *,
        on_log: LogSink,
        on_start: Callable[[str], None] | None = None,
    ) -> ContainerExit:
        if job.lend_mounts:
            raise ContainerError(
                f"the step runs as its own user ({job.user}), and under Slurm kliko-async cannot "
                "give that user the step's folders without opening them to everyone; run the "
                "step as yourself (no user:), or on the local Docker Engine"
            )
        folder = await anyio.to_thread.run_sync(job_folder, job, self.folder / "jobs")
        image_dir = None
        if self.options.engine != "docker":
            image_dir = await self._images.converted(job.image)
        limit = job.timeout + TIME_LIMIT_MARGIN_SECONDS if job.timeout is not None else None
        (folder / "env").write_text(env_file(job))
        script = folder / "job.sh"
        script.write_text(
            job_script(
                job, folder=folder, image_dir=image_dir, engine=self.options.engine, limit=limit
            )
        )
        script.chmod(0o755)
        # Charliecloud binds copies of the read-only mounts: the originals are checked after.
        watched = [m.source for m in job.mounts if m.read_only and self.options.engine != "docker"]
        before = await anyio.to_thread.run_sync(tree_state, watched)
        step = job.labels.get(f"{LABEL_PREFIX}.step", "step")
        family = job.labels.get(MATRIX_LABEL)
        options = self._submitter.job_options(job, limit, self._partition_args())
        submission = Submission(job, folder, script, options, step, family)
        async with self._places.take(family is not None):  # at most max_jobs in Slurm's queue
            job_id = ""
            try:
                # Cancelled (Ctrl-C), a submission ends within seconds, and withdraws what its
                # sbatch submitted; its own deadline comes first, this one is a last resort.
                with anyio.move_on_after(SUBMIT_LAST_RESORT_SECONDS):
                    job_id = await self._submitter.submit(submission)
            except BaseException:
                if submission.job_id:  # a task of an array that went in as it was cancelled
                    await self._end(submission, f"step {step}", cancel=True)
                raise
            if not job_id:
                raise ContainerError(f"sbatch did not answer within {SUBMIT_LAST_RESORT_SECONDS} s")
            self.most_in_queue = max(self.most_in_queue, self._places.in_use)
            tracked = track(InFlight(f"step {step}", job_id=job_id))
            cancel = True
            try:
                exited = await self._follow(job_id, folder, on_log, on_start)
                await self._cancels.left_queue(job_id)  # before its place goes to the next job
                cancel = False
                await anyio.to_thread.run_sync(check_unchanged, before, watched)
                return exited
            finally:
                # Cancelled (Ctrl-C, a timeout) or failed while the job may live: cancelled.
                await self._end(submission, f"step {step}", cancel=cancel)
                untrack(tracked)

    async def _end(self, submission: Submission, what: str, *, cancel: bool) -> None:
        """The end of a step's job: cancelled (``cancel``), not watched any more, and its array
        task's link removed (the last one takes the array's folder along); a job that may be
        left running keeps its link and is named at the end of the run, with its folder."""
        job_id = submission.job_id
        left = cancel and not await self._cancels.cancel_or_keep(job_id, what, [submission.folder])
        self.queue.forget(job_id)
        self._live.discard(job_id)
        if submission.link is not None and not left:
            with anyio.CancelScope(shield=True):  # Ctrl-C: the more so
                await anyio.to_thread.run_sync(unlink_with_folder, submission.link)

    async def _follow(
        self,
        job_id: str,
        folder: Path,
        on_log: LogSink,
        on_start: Callable[[str], None] | None,
    ) -> ContainerExit:
        logs = LogFiles(folder, on_log)
        latest: list[SlurmJob] = []
        failed: list[ContainerError] = []
        status = folder / "status"
        # Set when the queue shows the job in a new state (or its reason changed): the files
        # are looked at again at once, not after the pause (a second while it was pending).
        changed = [anyio.Event()]

        async def watch_state() -> None:
            # Errors are kept, not raised: raised in this task group they would arrive as an
            # ExceptionGroup, which no caller of ``run`` expects.
            try:
                while True:
                    info = await self.queue.next_state(job_id)
                    if info is not None:
                        before = latest[0] if latest else None
                        latest[:] = [info]
                        if before is None or (before.state, before.reason) != (
                            info.state,
                            info.reason,
                        ):
                            changed[0].set()
                        if not info.active:
                            return
            except ContainerError as error:
                failed.append(error)
                changed[0].set()

        ending: list[bool] = []

        async def cut_polls_when_cancelled() -> None:
            # Cancelled from outside (Ctrl-C, a timeout), not at the job's end: the poll under
            # way, when watch_state's, would hold the scancel until it ends (squeue hanging).
            try:
                await anyio.sleep_forever()
            finally:
                if not ending:
                    self.queue.cut_short()

        container_id = f"slurm-{job_id}"
        started = False
        ended_at: float | None = None
        hopeless: SlurmJob | None = None
        pending: str | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_state)
            tg.start_soon(cut_polls_when_cancelled)
            pause = _FOLLOW_FASTEST
            while not failed:
                # The job's files are on the shared file system: read off the loop, in one
                # thread hop with the other jobs' folders.
                look = await self._looks.look(folder, logs)
                node, attempt = [*look.started.split(), "", ""][:2]
                if node and not started:
                    started = True
                    container_id = f"{job_id}@{node}"
                    on_log("stderr", f"[kliko-async] Slurm job {job_id} runs on node {node}")
                    if on_start:
                        on_start(container_id)
                if attempt.isdigit() and int(attempt) > logs.attempt:
                    logs.restart(
                        int(attempt),
                        f"[kliko-async] Slurm requeued job {job_id}: attempt {int(attempt) + 1} "
                        f"starts on node {node} with an empty /output",
                    )
                got = logs.deliver(look.chunks)
                if look.status:
                    break
                info = latest[0] if latest else None
                if info is not None and info.state == "PENDING" and info.reason != pending:
                    pending = info.reason  # why it waits, each time that changes
                    why = pending or "no reason given yet"
                    on_log("stderr", f"[kliko-async] Slurm job {job_id} is pending: {why}")
                if info is not None and info.state == "PENDING" and info.reason in HOPELESS_REASONS:
                    hopeless = info
                    break
                if info is not None and not info.active:
                    now = anyio.current_time()
                    ended_at = ended_at or now
                    if now - ended_at > STATUS_GRACE_SECONDS:
                        break
                pause = _FOLLOW_FASTEST if got else min(pause * 1.5, _FOLLOW_SLOWEST)
                if not started and info is not None and info.state == "PENDING":
                    pause = _FOLLOW_PENDING  # waiting for a node: its files change little
                if not changed[0].is_set():
                    with anyio.move_on_after(pause):
                        await changed[0].wait()
                changed[0] = anyio.Event()
            ending.append(True)
            tg.cancel_scope.cancel()
        while logs.deliver(await anyio.to_thread.run_sync(logs.fetch)):
            pass  # the rest of what the job wrote
        logs.flush()
        ended = await anyio.to_thread.run_sync(status.exists)
        if failed and not ended:
            raise failed[0]
        if hopeless is not None:
            await self._cancels.cancel(job_id)
            raise pending_for_good(job_id, self.options.partition, hopeless.reason)
        if ended:
            if not started and on_start:  # the job was over before its start was seen
                on_start(container_id)
            return await anyio.to_thread.run_sync(status_exit, job_id, folder, container_id)
        last = latest[0] if latest else None
        return await anyio.to_thread.run_sync(ended_without_status, job_id, folder, last)

    # -- leftovers ---------------------------------------------------------------------------

    async def find_containers(self, labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
        """This user's kliko-async jobs still pending or running, by ``slurm-<id>``, with the
        labels they carry in their comment; and the local engine's containers (image probes)."""
        me = user_name()
        found: dict[str, dict[str, str]] = {}
        try:
            ours = await our_active_jobs(delays=RETRY_DELAYS[:3])
        except SlurmNoAnswer as error:  # a run could submit, but never follow its jobs
            raise not_answering(error) from None
        except SlurmCallFailed:  # a later run, when squeue answers, finds them
            ours = {}
        for job in ours.values():
            if not job.active or not job.name.startswith(JOB_PREFIX) or job.user != me:
                continue
            try:
                carried = {str(k): str(v) for k, v in dict(json.loads(job.comment)).items()}
            except (ValueError, TypeError):
                continue
            carried[f"{LABEL_PREFIX}.managed"] = "1"
            if all(carried.get(k) == v for k, v in labels.items()):
                found[f"slurm-{job.job_id}"] = carried
        found.update(await self._docker.find_containers(labels))
        return found

    async def remove_container(self, container_id: str) -> None:
        if container_id.startswith("slurm-"):
            await self._cancels.cancel(container_id.removeprefix("slurm-"))
        else:
            await self._docker.remove_container(container_id)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):  # each within the cleanup's deadline
            for job_id in sorted(self._live):
                left = await self._cancels.cancel(job_id, closing=True)
                if left is not None:  # the end of the run names it
                    track(InFlight(f"a job of this run, {left}", job_id=job_id))
        await self._docker.aclose()
