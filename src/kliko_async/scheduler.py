"""The async engine: run a plan's steps as soon as their inputs are done, within limits.

anyio only; it knows the Runtime protocol, never a container engine. Every step runs inside the
scheduler's task group: at most ``jobs`` at once, within the machine's CPUs and memory, each
under its cache key's lock. A step's outputs are written to a fresh staging folder and published
to the cache only on success. Everything that happens is emitted as an event.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
from pydantic import BaseModel, ConfigDict

from kliko_async.attempts import StepLog, exit_reason, full_disk, keep_log
from kliko_async.cache import Cache
from kliko_async.entry import CacheEntry, Manifest, Staging
from kliko_async.errors import CacheError, KlikoError, UnpublishableOutput
from kliko_async.events import (
    Event,
    RunFinished,
    RunStarted,
    StepCached,
    StepCancelled,
    StepFinished,
    StepPreparing,
    StepQueued,
    StepRetried,
    StepSkipped,
    StepStarted,
    StepWaitingForLock,
    log_line,
)
from kliko_async.events import (
    StepFailed as StepFailedEvent,
)
from kliko_async.plan import Plan, PlannedStep
from kliko_async.processes import pid_alive
from kliko_async.resources import ResourcePool
from kliko_async.results import RunResult, StepResult
from kliko_async.runtime.base import (
    LABEL_PREFIX,
    OWNER_LABEL,
    LogSink,
    Runtime,
    Stream,
    owner_label,
)
from kliko_async.steplogs import run_log_dir
from kliko_async.workspace import build_job

LAST_LINES = 20
LOCK_PATIENCE_S = 0.25
"""A key's lock not taken within this time is held by another run: the step says it waits."""


class _Attempt(BaseModel):
    model_config = ConfigDict(frozen=True)

    ok: bool
    reason: str | None = None
    exit_code: int | None = None
    entry: CacheEntry | None = None
    log_path: Path | None = None
    last_lines: list[str] = []


class Scheduler:
    """Runs one plan once. Results so far are in ``results``, also after a cancellation."""

    def __init__(
        self,
        plan: Plan,
        *,
        runtime: Runtime,
        cache: Cache,
        emit: Callable[[Event], None],
        run_id: str,
        jobs: int,
        keep_going: bool = False,
        log_dir: Path | None = None,
        pool: ResourcePool | None = None,
        wants_log_lines: bool = True,
    ) -> None:
        self.plan = plan
        self.runtime = runtime
        self.cache = cache
        self.emit = emit
        self.run_id = run_id
        self.jobs = max(1, jobs)
        self.keep_going = keep_going
        self.log_dir = log_dir or run_log_dir(cache, run_id)
        self.pool = pool or ResourcePool()
        self.wants_log_lines = wants_log_lines
        self.results: dict[str, StepResult] = {}
        self._done = {name: anyio.Event() for name in plan.order}
        self._slots = anyio.CapacityLimiter(self.jobs)
        self._stopping = False
        self._owner = owner_label()
        self._waited: dict[str, float] = {}
        self._began: dict[str, float] = {}  # when a step first held its slot and its lock

    async def run(self) -> RunResult:
        started = time.monotonic()
        expected = await anyio.to_thread.run_sync(past_durations, self.cache, self.plan)
        self.emit(
            RunStarted(
                run_id=self.run_id,
                steps=self.plan.order,
                images={n: s.image.ref for n, s in self.plan.steps.items()},
                jobs=self.jobs,
                expected_s=expected,
            )
        )
        for name in self.plan.to_run:
            self.emit(StepQueued(step=name, key=self.plan.steps[name].key))
        try:
            async with anyio.create_task_group() as tg:
                for name in self.plan.order:
                    tg.start_soon(self._step, self.plan.steps[name])
        except anyio.get_cancelled_exc_class():
            self._finish(started)  # the summary of a cancelled run, with its cancelled steps
            raise
        return self._finish(started)

    def _finish(self, started: float) -> RunResult:
        for name in self.plan.order:
            if name not in self.results:  # cancelled before its task ever ran
                key = self.plan.steps[name].key
                self.results[name] = StepResult(name=name, key=key, state="cancelled")
                self.emit(StepCancelled(step=name))
        result = RunResult(
            run_id=self.run_id,
            steps={n: self.results[n] for n in self.plan.order},
            wall_s=time.monotonic() - started,
            saved_s=sum(r.duration_s for r in self.results.values() if r.state == "cached"),
        )
        self.emit(
            RunFinished(
                run_id=self.run_id,
                ran=result.count("done"),
                cached=result.count("cached"),
                failed=result.count("failed"),
                skipped=result.count("skipped"),
                cancelled=result.count("cancelled"),
                wall_s=result.wall_s,
                saved_s=result.saved_s,
                ok=result.ok,
            )
        )
        return result

    async def _step(self, planned: PlannedStep) -> None:
        name = planned.name
        try:
            for dep in planned.step.inputs:
                await self._done[dep].wait()
            self.results[name] = await self._settle(planned)
        except anyio.get_cancelled_exc_class():
            self.results[name] = StepResult(name=name, key=planned.key, state="cancelled")
            self.emit(StepCancelled(step=name))
            raise
        finally:
            self._done[name].set()

    async def _settle(self, planned: PlannedStep) -> StepResult:
        broken = [d for d in planned.step.inputs if self.results[d].state not in ("done", "cached")]
        if broken:
            return self._skip(planned, f"input {', '.join(repr(b) for b in broken)} did not finish")
        if planned.cached is not None:
            return self._cached(planned, planned.cached)
        if self._stopping:
            return self._skip(planned, "an earlier step failed (use --keep-going to go on)")
        step = planned.step
        started = time.monotonic()
        attempt = 1
        while True:
            outcome = await self._attempt_in_slot(planned, attempt)
            if isinstance(outcome, StepResult):
                return outcome  # skipped, made by another run meanwhile, or an input vanished
            if outcome.ok or attempt > step.retries or self._stopping:
                return self._conclude(planned, outcome, attempt, started)
            delay = step.retry_backoff * 2 ** (attempt - 1)
            self.emit(
                StepRetried(
                    step=step.name, attempt=attempt + 1, reason=outcome.reason or "", delay_s=delay
                )
            )
            await anyio.sleep(delay)  # holding no job slot, no resources and no lock
            if self._stopping:  # another step failed meanwhile: no new attempt starts
                return self._conclude(planned, outcome, attempt, started)
            attempt += 1

    async def _attempt_in_slot(self, planned: PlannedStep, attempt: int) -> _Attempt | StepResult:
        """One attempt within the limits: a job slot, the step's resources, its key's lock."""
        key, resources = planned.key, planned.step.resources
        async with self._slots, self.pool.claim(resources.cpus, resources.memory, resources.gpus):
            if self._stopping and attempt == 1:
                return self._skip(planned, "an earlier step failed (use --keep-going to go on)")
            async with contextlib.AsyncExitStack() as reading:
                await self._lock_key(planned, reading)
                self._began.setdefault(planned.name, time.monotonic())
                entry = self.cache.lookup(key)
                if entry is not None and not planned.forced:
                    return self._cached(planned, entry)  # another run made it meanwhile
                for input_key in sorted({self.results[i].key for i in planned.step.inputs}):
                    # Readers hold a shared lock: `cache gc` leaves these entries alone.
                    await reading.enter_async_context(self.cache.lock(input_key, shared=True))
                gone = [i for i in planned.step.inputs if not self._output_of(i).is_dir()]
                if gone:
                    result = self._input_gone(planned, gone)
                    self._stop_unless_keep_going()
                    return result
                outcome = await self._attempt(planned, attempt)
                if not outcome.ok and attempt > planned.step.retries:
                    self._stop_unless_keep_going()  # before the slot goes to a waiting step
                return outcome

    async def _lock_key(self, planned: PlannedStep, stack: contextlib.AsyncExitStack) -> None:
        """Hold the step's key's lock in ``stack``; if another run holds it, say so and count
        the time waited, which is not the step's own."""
        with anyio.move_on_after(LOCK_PATIENCE_S):
            await stack.enter_async_context(self.cache.lock(planned.key))
            return
        self.emit(StepWaitingForLock(step=planned.name, key=planned.key))
        waiting = time.monotonic()
        try:
            await stack.enter_async_context(self.cache.lock(planned.key))
        finally:
            waited = time.monotonic() - waiting
            self._waited[planned.name] = self._waited.get(planned.name, 0.0) + waited

    def _stop_unless_keep_going(self) -> None:
        if not self.keep_going:
            self._stopping = True

    def _input_gone(self, planned: PlannedStep, gone: list[str]) -> StepResult:
        names = ", ".join(repr(g) for g in gone)
        reason = (
            f"the cache entry of input {names} was removed before this step could read it "
            "(by 'kliko-async cache gc'?); run the chain again to recompute it"
        )
        self.emit(StepFailedEvent(step=planned.name, key=planned.key, reason=reason))
        return StepResult(name=planned.name, key=planned.key, state="failed", reason=reason)

    def _skip(self, planned: PlannedStep, reason: str) -> StepResult:
        self.emit(StepSkipped(step=planned.name, reason=reason))
        return StepResult(name=planned.name, key=planned.key, state="skipped", reason=reason)

    def _cached(self, planned: PlannedStep, entry: CacheEntry) -> StepResult:
        self.emit(
            StepCached(
                step=planned.name,
                key=planned.key,
                original_duration_s=entry.manifest.duration_s,
                waited_s=self._waited.get(planned.name, 0.0),
            )
        )
        return StepResult(
            name=planned.name,
            key=planned.key,
            state="cached",
            output=entry.output_dir,
            exit_code=entry.manifest.exit_code,
            duration_s=entry.manifest.duration_s,
            log_path=entry.log_path,
        )

    def _conclude(
        self, planned: PlannedStep, outcome: _Attempt, attempts: int, started: float
    ) -> StepResult:
        """The step's result after its last attempt, announced as finished or failed."""
        step = planned.step
        waited = self._waited.get(step.name, 0.0)
        # Its own time: from first holding a job slot and its lock (not queueing for them).
        duration = time.monotonic() - self._began.get(step.name, started)
        if outcome.ok and outcome.entry is not None:
            self.emit(
                StepFinished(
                    step=step.name,
                    key=planned.key,
                    exit_code=0,
                    duration_s=duration,
                    waited_s=waited,
                    log_path=str(outcome.entry.log_path),
                )
            )
            return StepResult(
                name=step.name,
                key=planned.key,
                state="done",
                output=outcome.entry.output_dir,
                exit_code=0,
                duration_s=duration,
                log_path=outcome.entry.log_path,
            )
        reason = outcome.reason or "failed"
        if attempts > 1:
            reason = f"{reason} (after {attempts} attempts)"
        if attempts <= step.retries:
            reason = f"{reason}; not retried, since another step failed"
        self.emit(
            StepFailedEvent(
                step=step.name,
                key=planned.key,
                reason=reason,
                exit_code=outcome.exit_code,
                last_lines=outcome.last_lines,
                log_path=str(outcome.log_path) if outcome.log_path else None,
            )
        )
        return StepResult(
            name=step.name,
            key=planned.key,
            state="failed",
            exit_code=outcome.exit_code,
            duration_s=duration,
            reason=reason,
            log_path=outcome.log_path,
            last_lines=tuple(outcome.last_lines),
        )

    async def _attempt(self, planned: PlannedStep, attempt: int) -> _Attempt:
        step = planned.step
        last: deque[str] = deque(maxlen=LAST_LINES)
        try:
            staging = self.cache.stage(planned.key)
        except CacheError as error:
            return _Attempt(ok=False, reason=str(error))
        started_at = datetime.now(UTC)
        started = time.monotonic()
        try:
            prepare = functools.partial(
                build_job,
                planned.image,
                planned.params,
                scratch=staging.path / "scratch",
                output=staging.output_dir,
                inputs={i: self._output_of(i) for i in step.inputs},
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
                job = await anyio.to_thread.run_sync(prepare)
            else:  # a few small files: cheaper here than a round trip to a thread
                job = prepare()
            log = StepLog(staging.log_path)
            try:
                on_log = self._log_sink(step.name, log, last)
                on_start = self._start_sink(planned, attempt)
                with anyio.move_on_after(step.timeout) as scope:
                    log.on_error = scope.cancel  # a log that cannot be saved stops the step
                    exited = await self.runtime.run(job, on_log=on_log, on_start=on_start)
                timed_out = scope.cancelled_caught and log.error is None
            finally:
                log.close()
            if log.error is not None:
                reason = f"could not save its log: {log.error.strerror or log.error}"
                return self._failed_attempt(planned, staging, reason, None, last)
        except KlikoError as error:  # the engine refused or lost the container, or went away
            return self._failed_attempt(planned, staging, str(error), None, last)
        except OSError as error:  # preparing the step's folders failed (full disk, permissions)
            reason = f"could not prepare the step's folders: {error.strerror or error}"
            return self._failed_attempt(planned, staging, reason, None, last)
        except BaseException:
            self._discard(staging)  # synchronous: runs even while being cancelled
            raise
        if timed_out:
            reason = f"timed out after {step.timeout:g} s; the container was stopped"
            return self._failed_attempt(planned, staging, reason, None, last)
        if exited.exit_code != 0:
            reason = exit_reason(exited, step.resources.memory)
            return self._failed_attempt(planned, staging, reason, exited.exit_code, last)
        shutil.rmtree(staging.path / "scratch", ignore_errors=True)
        finished_at = datetime.now(UTC)
        manifest = Manifest(
            key=planned.key,
            step=step.name,
            image=planned.image.ref,
            ingredients=planned.ingredients,
            run_id=self.run_id,
            started_at=started_at,
            finished_at=finished_at,
            duration_s=time.monotonic() - started,
            exit_code=0,
            outputs={},
        )
        try:
            if planned.forced:
                self.cache.remove(planned.key)
            # Hashing and fsyncing the outputs may take seconds for big outputs: off the loop.
            entry = await anyio.to_thread.run_sync(self.cache.publish, staging, manifest)
        except UnpublishableOutput as error:  # the step's fault: keep its log, say what it wrote
            return self._failed_attempt(planned, staging, error.message, 0, last)
        except CacheError as error:
            return _Attempt(ok=False, reason=str(error), exit_code=0, last_lines=list(last))
        return _Attempt(ok=True, exit_code=0, entry=entry)

    def _failed_attempt(
        self,
        planned: PlannedStep,
        staging: Staging,
        reason: str,
        exit_code: int | None,
        last: deque[str],
    ) -> _Attempt:
        """Keep the failed attempt's log in the run's log folder; drop everything else."""
        full = full_disk(staging.path, self.cache.root)
        if full is not None and "is full" not in reason:
            reason = f"{reason}; {full}"
        log_path = keep_log(staging.log_path, self.log_dir / f"{planned.name}.log")
        self._discard(staging)
        return _Attempt(
            ok=False, reason=reason, exit_code=exit_code, log_path=log_path, last_lines=list(last)
        )

    def _discard(self, staging: Staging) -> None:
        # A leftover staging folder is never taken as cached, and gc removes it.
        with contextlib.suppress(CacheError):
            self.cache.discard(staging)

    def _output_of(self, name: str) -> Path:
        output = self.results[name].output
        assert output is not None  # only done or cached inputs get here
        return output

    def _labels(self, planned: PlannedStep) -> dict[str, str]:
        return {
            f"{LABEL_PREFIX}.run": self.run_id,
            f"{LABEL_PREFIX}.step": planned.name,
            f"{LABEL_PREFIX}.key": planned.key,
            OWNER_LABEL: self._owner,
        }

    def _log_sink(self, step: str, log: StepLog, last: deque[str]) -> LogSink:
        emit, wants = self.emit, self.wants_log_lines

        def on_log(stream: Stream, text: str, at: str | None = None, /) -> None:
            log.write_line(stream, text, at)
            last.append(text)
            if wants:
                emit(log_line(step, stream, text))

        return on_log

    def _start_sink(self, planned: PlannedStep, attempt: int) -> Callable[[str], None]:
        def on_start(container_id: str) -> None:
            self.emit(
                StepStarted(
                    step=planned.name, key=planned.key, container_id=container_id, attempt=attempt
                )
            )

        return on_start


def past_durations(cache: Cache, plan: Plan) -> dict[str, float]:
    """How long the latest cached run of each step to run (same name and image) took.

    Read from the cache's manifests once per run, only when something is to run; for an ETA.
    """
    wanted = {(name, plan.steps[name].image.ref): name for name in plan.to_run}
    if not wanted:
        return {}
    latest: dict[str, Manifest] = {}
    for entry in cache.entries():
        manifest = entry.manifest
        name = wanted.get((manifest.step, manifest.image))
        if name is not None and (
            name not in latest or manifest.finished_at > latest[name].finished_at
        ):
            latest[name] = manifest
    return {name: manifest.duration_s for name, manifest in latest.items()}


async def remove_leftovers(runtime: Runtime) -> int:
    """Remove containers of earlier kliko-async processes on this host that no longer exist."""
    host = socket.gethostname()
    found = await runtime.find_containers({f"{LABEL_PREFIX}.managed": "1"})
    removed = 0
    for container_id, labels in found.items():
        owner = labels.get(OWNER_LABEL, "")
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not pid_alive(int(pid)):
            await runtime.remove_container(container_id)
            removed += 1
    return removed
