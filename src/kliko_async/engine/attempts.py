"""One attempt at a step: its staging folder, its container, its saved log, why it ended.

Kept apart from the scheduler, which holds ordering, limits, retries and failure policy only.
An attempt either publishes its output to the cache or leaves nothing behind but its log.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.lowlevel
from pydantic import BaseModel, ConfigDict

from kliko_async.cache.entry import CacheEntry, Manifest, Staging
from kliko_async.cache.groupcommit import GroupCommit
from kliko_async.cache.store import Cache
from kliko_async.engine.plan import PlannedStep
from kliko_async.engine.steplogs import StepLog, keep_log
from kliko_async.engine.workspace import build_job, remove_scratch
from kliko_async.errors import CacheError, KlikoError, UnpublishableOutput
from kliko_async.events import (
    Event,
    LogLinesSkipped,
    StepPreparing,
    StepPublishing,
    StepStarted,
    log_line,
)
from kliko_async.model.quantities import describe_size
from kliko_async.results import ResourceUse
from kliko_async.runtime.base import (
    LABEL_PREFIX,
    MATRIX_LABEL,
    OWNER_LABEL,
    ContainerExit,
    ContainerJob,
    LogSink,
    Runtime,
    Stream,
    owner_label,
)
from kliko_async.runtime.inflight import InFlight, track, untrack, writing_into

LAST_LINES = 20
"""A failed step shows this many of its last log lines."""

SHOWN_LINE_CHARS = 10_000
"""A longer log line is cut to this many characters for displays and a failure's last lines;
the saved log keeps it whole."""


class AttemptOutcome(BaseModel):
    """How one attempt ended: published (``entry``), or failed with a reason and its log."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    reason: str | None = None
    exit_code: int | None = None
    entry: CacheEntry | None = None
    log_path: Path | None = None
    last_lines: tuple[str, ...] = ()


class StepAttempts:
    """Runs attempts at the steps of one run, on one runtime and cache."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        cache: Cache,
        emit: Callable[[Event], None],
        run_id: str,
        log_dir: Path,
        wants_log_lines: bool,
        log_lines_per_second: float | None = None,
        commits: GroupCommit | None = None,
    ) -> None:
        self.runtime = runtime
        self.cache = cache
        self.commits = commits or GroupCommit(cache)
        self.emit = emit
        self.run_id = run_id
        self.log_dir = log_dir
        self.wants_log_lines = wants_log_lines
        self.log_lines_per_second = log_lines_per_second
        """At most this many LogLine events per step and second (None: every line); see
        :class:`~kliko_async.events.EventConsumer`."""
        self._owner = owner_label()

    async def run(
        self,
        planned: PlannedStep,
        attempt: int,
        inputs: Mapping[str, Path],
        *,
        container_done: Callable[[], object] | None = None,
        container_started: Callable[[float], object] | None = None,
    ) -> AttemptOutcome:
        """Attempt ``planned`` once (the ``attempt``-th time) with its inputs' output folders.

        ``container_done`` is called when the container has ended well, before its output is
        published (the scheduler gives its job slot back there); ``container_started`` is told
        when (``time.monotonic()``) the container started: a step's time counts from there, not
        from its wait for a place in a Slurm queue or for the engine."""
        step = planned.step
        last: deque[str] = deque(maxlen=LAST_LINES)
        try:
            staging = self.cache.stage(planned.key)
        except CacheError as error:
            return AttemptOutcome(ok=False, reason=str(error))
        tracked = track(InFlight(f"staging folder of step {step.name}", folder=staging.path))
        try:
            return await self._run_staged(
                planned, attempt, inputs, staging, last, container_done, container_started
            )
        finally:
            untrack(tracked)

    async def _run_staged(
        self,
        planned: PlannedStep,
        attempt: int,
        inputs: Mapping[str, Path],
        staging: Staging,
        last: deque[str],
        container_done: Callable[[], object] | None = None,
        container_started: Callable[[float], object] | None = None,
    ) -> AttemptOutcome:
        step = planned.step
        began = [time.monotonic()]  # the container's start, once it is known
        try:
            prepare = functools.partial(
                build_job,
                planned.image,
                planned.params,
                scratch=staging.scratch_dir,
                output=staging.output_dir,
                inputs=inputs,
                inputs_in_folders=step.inputs_in_folders,
                user=step.user,
                env=step.env,
                labels=self._labels(planned),
                cpus=step.resources.cpus,
                memory=step.resources.memory,
                gpus=step.resources.gpus,
                timeout=step.timeout,
            )
            if planned.image.spec.io == "join" and step.inputs:
                self.emit(StepPreparing(step=step.name, inputs=list(step.inputs)))
                # Copying the inputs into /work may take long: in a worker thread, so that it
                # never stalls the log streams and timers of the other running steps.
                job = await prepare_in_thread(prepare)
            else:  # a few small files: cheaper here than a round trip to a thread
                job = prepare()
            log = StepLog(staging.log_path)
            budget = LineBudget(step.name, self.emit, self.log_lines_per_second)
            try:
                on_log = self._log_sink(step.name, log, last, budget)
                # The timeout counts from the container's start: not while it waits in a
                # Slurm queue (or for the engine to create it).
                with anyio.CancelScope() as scope:
                    on_start = self._start_sink(planned, attempt, scope, began, container_started)
                    log.on_error = scope.cancel  # a log that cannot be saved stops the step
                    exited = await self.runtime.run(job, on_log=on_log, on_start=on_start)
                timed_out = scope.cancelled_caught and log.error is None
            finally:
                log.close()
                budget.flush()  # the count of lines not made into events, before the end
            if log.error is not None:
                reason = f"could not save its log: {log.error.strerror or log.error}"
                return await self._failed(planned, staging, reason, None, last)
        except KlikoError as error:  # the engine refused or lost the container, or went away
            return await self._failed(planned, staging, str(error), None, last)
        except OSError as error:  # preparing the step's folders failed (full disk, permissions)
            reason = f"could not prepare the step's folders: {error.strerror or error}"
            return await self._failed(planned, staging, reason, None, last)
        except BaseException:
            await self._discard(staging, planned.name)  # shielded: runs even while being cancelled
            raise
        if timed_out:
            stopped = "" if writing_into(staging.path) else "; the container was stopped"
            reason = f"timed out after {step.timeout:g} s{stopped}"
            return await self._failed(planned, staging, reason, None, last)
        if exited.exit_code != 0:
            reason = exit_reason(exited, step.resources.memory)
            return await self._failed(planned, staging, reason, exited.exit_code, last)
        try:
            if container_done is not None:
                container_done()
            return await self._publish(planned, staging, began[0], last, exited.usage)
        except BaseException:
            await self._discard(staging, planned.name)  # cancelled while publishing: nothing stays
            raise

    async def _publish(
        self,
        planned: PlannedStep,
        staging: Staging,
        began: float,
        last: deque[str],
        usage: ResourceUse | None = None,
    ) -> AttemptOutcome:
        step = planned.step
        self.emit(StepPublishing(step=step.name))
        finished_at = datetime.now(UTC)
        duration = time.monotonic() - began
        manifest = Manifest(
            key=planned.key,
            step=step.name,
            image=planned.image.ref,
            ingredients=planned.ingredients,
            run_id=self.run_id,
            started_at=finished_at - timedelta(seconds=duration),
            finished_at=finished_at,
            duration_s=duration,
            exit_code=0,
            usage=usage,
            outputs={},
        )
        try:
            if planned.forced:  # a big old entry takes a while to delete: off the loop too
                await anyio.to_thread.run_sync(self.cache.remove, planned.key)
            # Off the loop (hashing big outputs takes seconds), with the other steps finishing
            # now: one durability barrier and one worker thread for all of them.
            scratch = self._scratch(planned, staging)
            entry = await self.commits.publish(staging, manifest, scratch=scratch)
        except UnpublishableOutput as error:  # the step's fault: keep its log, say what it wrote
            return await self._failed(planned, staging, error.message, 0, last)
        except CacheError as error:  # the cache's disk: the step's log is kept all the same
            return await self._failed(planned, staging, str(error), 0, last)
        return AttemptOutcome(ok=True, exit_code=0, entry=entry)

    def _scratch(self, planned: PlannedStep, staging: Staging) -> Path | None:
        """Remove the staging folder's ``scratch/`` (not part of the entry) here when it holds
        only parameters.json and perhaps the empty /input: two or three calls. Anything more
        (copies of file parameters, a Slurm job's folder) is left to the commit's worker
        thread: the folder returned."""
        scratch = staging.scratch_dir
        if planned.params.files and planned.params.files_root is None:
            return scratch
        if not self.commits.seal_here:  # a slow (network) file system: nothing of it here
            return scratch
        # Here rather than in the thread: a thread making these calls beside the event loop's
        # own file calls passes the GIL back and forth at each (seven context switches a step).
        return None if remove_scratch(scratch) else scratch

    async def _failed(
        self,
        planned: PlannedStep,
        staging: Staging,
        reason: str,
        exit_code: int | None,
        last: deque[str],
    ) -> AttemptOutcome:
        """Keep the failed attempt's log in the run's log folder; drop everything else (but a
        staging folder that a job left running may still write into: said, and kept)."""
        full = full_disk(staging.path, self.cache.root)
        if full is not None and "is full" not in reason:
            reason = f"{reason}; {full}"
        for item in writing_into(staging.path):
            if item.name not in reason:  # the engine's going away names its container already
                reason = f"{reason}; {item.name} may still be running ({item.what})"
        log_path = keep_log(staging.log_path, self.log_dir / f"{planned.name}.log")
        if not await self._discard(staging, planned.name):
            kept = staging.path.absolute()
            reason = f"{reason}: the step's staging folder is kept, at {kept}"
        return AttemptOutcome(
            ok=False, reason=reason, exit_code=exit_code, log_path=log_path, last_lines=tuple(last)
        )

    async def _discard(self, staging: Staging, step: str) -> bool:
        """Delete a staging folder in a worker thread (it may hold gigabytes); one left behind
        is never taken as cached, and the next run removes it. False when a job or container
        left running (scancel failed) may still write into it: it is kept, and named at the
        end of the run (it was once deleted under the running job)."""
        writers = writing_into(staging.path)
        if writers:
            names = ", ".join(item.name for item in writers)
            kept = f"staging folder of step {step}, kept: {names} may still write into it"
            track(InFlight(kept, folder=staging.path))
            return False
        with anyio.CancelScope(shield=True), contextlib.suppress(CacheError):
            await anyio.to_thread.run_sync(self.cache.discard, staging)
        return True

    def _labels(self, planned: PlannedStep) -> dict[str, str]:
        labels = {
            f"{LABEL_PREFIX}.run": self.run_id,
            f"{LABEL_PREFIX}.step": planned.name,
            f"{LABEL_PREFIX}.key": planned.key,
            OWNER_LABEL: self._owner,
        }
        if planned.step.matrix is not None:  # its expansions may share a Slurm job array
            labels[MATRIX_LABEL] = planned.step.matrix.step
        return labels

    def _log_sink(self, step: str, log: StepLog, last: deque[str], budget: LineBudget) -> LogSink:
        emit, wants = self.emit, self.wants_log_lines
        take = None
        if wants and budget.per_second is not None:
            wants, take = False, budget.take  # the budget decides, and emits

        def on_log(stream: Stream, text: str, at: str | None = None, /) -> None:
            log.write_line(stream, text, at)
            if len(text) > SHOWN_LINE_CHARS:
                text = shown_part(text)
            last.append(text)
            if wants:
                emit(log_line(step, stream, text))
            elif take is not None:
                take(stream, text)

        return on_log

    def _start_sink(
        self,
        planned: PlannedStep,
        attempt: int,
        scope: anyio.CancelScope,
        began: list[float],
        container_started: Callable[[float], object] | None,
    ) -> Callable[[str], None]:
        timeout = planned.step.timeout

        def on_start(container_id: str) -> None:
            began[0] = time.monotonic()
            if container_started is not None:
                container_started(began[0])
            if timeout is not None:
                scope.deadline = anyio.current_time() + timeout
            self.emit(
                StepStarted(
                    step=planned.name, key=planned.key, container_id=container_id, attempt=attempt
                )
            )

        return on_start


async def prepare_in_thread(prepare: Callable[..., ContainerJob]) -> ContainerJob:
    """``prepare(between_files=...)`` (:func:`build_job` of a join step) in a worker thread that
    stops copying between two files, or two pieces of a big one, once the run is cancelled.

    A worker thread is never interrupted: Ctrl-C used to wait for the whole copy (minutes for
    a huge input), and the container was then created and started all the same. A cancellation
    that comes after the copy's last check is raised here, before any container exists.
    """
    checked = functools.partial(prepare, between_files=anyio.from_thread.check_cancelled)
    job = await anyio.to_thread.run_sync(checked)
    await anyio.lowlevel.checkpoint_if_cancelled()
    return job


class LineBudget:
    """Makes at most ``per_second`` lines of one step per second into LogLine events and
    counts the rest, said in a LogLinesSkipped event before the next line made an event (and
    at the step's end: ``flush``). ``per_second`` None: no budget (the caller emits)."""

    __slots__ = ("_emit", "_made", "_skipped", "_window", "per_second", "step")

    def __init__(self, step: str, emit: Callable[[Event], None], per_second: float | None) -> None:
        self.step = step
        self.per_second = per_second
        self._emit = emit
        self._window = 0.0
        self._made = 0
        self._skipped = 0

    def take(self, stream: Stream, text: str) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._made = now, 0
        if self.per_second is not None and self._made >= self.per_second:
            self._skipped += 1
            return
        self.flush()
        self._made += 1
        self._emit(log_line(self.step, stream, text))

    def flush(self) -> None:
        if self._skipped:
            self._emit(LogLinesSkipped(step=self.step, count=self._skipped))
            self._skipped = 0


def exit_reason(exited: ContainerExit, memory: int | None) -> str:
    code = exited.exit_code
    if exited.oom_killed:
        limit = (
            f"its memory limit is {describe_size(memory)}" if memory else "it had no memory limit"
        )
        return f"killed for running out of memory (exit code {code}; {limit})"
    if exited.killed_by is not None:
        return (
            f"killed from outside the run: {exited.killed_by} (docker kill/stop), exit code {code}"
        )
    if code == 137:
        return "killed (exit code 137: SIGKILL, from outside or out of memory)"
    return f"exited with code {code}"


def shown_part(text: str) -> str:
    """The start of a line too long to show, and how much of it is not shown."""
    rest = len(text) - SHOWN_LINE_CHARS
    return f"{text[:SHOWN_LINE_CHARS]}… ({rest:,} more characters in the saved log)"


def full_disk(path: Path, cache_root: Path) -> str | None:
    """Why a step failed, if the disk of its staging folder is (nearly) full; else None."""
    try:
        disk = os.statvfs(path)
    except OSError:
        return None
    free = disk.f_bavail * disk.f_frsize
    if free >= min(1 << 20, disk.f_blocks * disk.f_frsize // 100):
        return None
    return (
        f"the disk holding the cache folder {cache_root} is full ({describe_size(free)} free); "
        "free space, for example with 'kliko-async cache gc --max-size 10G'"
    )
