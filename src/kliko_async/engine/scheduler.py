"""The async engine: run a plan's steps as soon as their inputs are done, within limits.

anyio only; it knows the Runtime protocol, never a container engine. Every step runs inside the
scheduler's task group: at most ``jobs`` at once, within the machine's CPUs and memory, each
under its cache key's lock. A step's outputs are written to a fresh staging folder and published
to the cache only on success. Everything that happens is emitted as an event.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from kliko_async.cache.durations import StepImage, past_durations_of, record_durations
from kliko_async.cache.entry import CacheEntry
from kliko_async.cache.groupcommit import GroupCommit
from kliko_async.cache.holds import RunHold
from kliko_async.cache.logfiles import run_log_dir
from kliko_async.cache.store import Cache
from kliko_async.engine.attempts import AttemptOutcome, StepAttempts
from kliko_async.engine.plan import Plan, PlannedStep, check_resources
from kliko_async.engine.resources import JobSlots, ResourcePool
from kliko_async.events import (
    Event,
    RunFinished,
    RunStarted,
    StepCached,
    StepCancelled,
    StepFailed,
    StepFinished,
    StepQueued,
    StepRetried,
    StepSkipped,
    StepWaitingForLock,
)
from kliko_async.model.chainmodel import matrix_steps
from kliko_async.results import RunResult, StepResult
from kliko_async.runtime.base import (
    Runtime,
)

LOCK_PATIENCE_S = 0.25
"""A key's lock not taken within this time is held by another run: the step says it waits."""


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
        log_lines_per_second: float | None = None,
        hold: RunHold | None = None,
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
        # A step's task starts when its last input settles: no task waits for its inputs.
        # Data inputs are there from the start: only steps are waited for.
        self._step_inputs = {
            name: [i for i in plan.steps[name].step.inputs if i not in plan.data]
            for name in plan.order
        }
        self._unsettled = {name: len(set(self._step_inputs[name])) for name in plan.order}
        self._consumers: dict[str, list[str]] = {}
        for name in plan.order:
            for dep in set(self._step_inputs[name]):
                self._consumers.setdefault(dep, []).append(name)
        self._slots = JobSlots(self.jobs)
        self._stopping = False
        self.commits = GroupCommit(cache)
        self.attempts = StepAttempts(
            runtime=runtime,
            cache=cache,
            emit=emit,
            run_id=run_id,
            log_dir=self.log_dir,
            wants_log_lines=wants_log_lines,
            log_lines_per_second=log_lines_per_second,
            commits=self.commits,
        )
        self.hold = hold
        """The entries this run holds against ``cache gc``; the caller's, to keep them held
        through its export. None: the scheduler holds them while it runs."""
        keys = Counter(plan.steps[name].key for name in plan.to_run)
        # Steps of this run that share one key take turns; the later ones find the entry made.
        self._shared_keys = {key: anyio.Lock() for key, count in keys.items() if count > 1}
        self._made: set[str] = set()
        self._durations: dict[StepImage, float] = {}  # of the steps done, for later ETAs
        self._waited: dict[str, float] = {}
        self._waiting: dict[str, float] = {}  # since when a step waits for another run's lock
        self._began: dict[str, float] = {}  # when a step's first container started
        self._matrix = matrix_steps(planned.step for planned in plan.steps.values())

    async def run(self) -> RunResult:
        check_resources(
            (self.plan.steps[name].step for name in self.plan.to_run),
            self.pool,
            where=self.plan.source,
        )
        started = time.monotonic()
        expected = await anyio.to_thread.run_sync(past_durations, self.cache, self.plan)
        self.emit(
            RunStarted(
                run_id=self.run_id,
                steps=self.plan.order,
                images={n: s.image.ref for n, s in self.plan.steps.items()},
                jobs=self.jobs,
                expected_s=expected,
                matrix=self._matrix,
            )
        )
        for name in self.plan.to_run:
            self.emit(StepQueued(step=name, key=self.plan.steps[name].key))
        own_hold = self.hold is None
        hold = self.hold = self.hold or RunHold(self.cache.root, self.run_id)
        try:
            try:
                async with anyio.create_task_group() as tg:
                    for name in self.plan.order:
                        if not self._unsettled[name]:
                            tg.start_soon(self._step, tg, self.plan.steps[name])
            finally:
                await self.commits.close()  # the last entries' names, durable
        except anyio.get_cancelled_exc_class():
            self._finish(started)  # the summary of a cancelled run, with its cancelled steps
            raise
        finally:
            if own_hold:
                hold.close()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(record_durations, self.cache, self._durations)
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
            matrix=self._matrix,
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

    async def _step(self, tg: TaskGroup, planned: PlannedStep | None) -> None:
        """Settle one step whose inputs have all settled; then start its ready consumers.

        The first of them goes on in this task, the others in tasks of their own: a chain of
        steps is one task, not a task a step (starting one costs more than most of a step)."""
        while planned is not None:
            name = planned.name
            try:
                self.results[name] = await self._settle(planned)
            except anyio.get_cancelled_exc_class():
                self.results[name] = StepResult(name=name, key=planned.key, state="cancelled")
                self.emit(StepCancelled(step=name))
                raise
            planned = None
            for consumer in self._consumers.get(name, ()):
                self._unsettled[consumer] -= 1
                if self._unsettled[consumer]:
                    continue
                if planned is None:
                    planned = self.plan.steps[consumer]
                else:
                    tg.start_soon(self._step, tg, self.plan.steps[consumer])

    async def _settle(self, planned: PlannedStep) -> StepResult:
        broken = [
            d
            for d in self._step_inputs[planned.name]
            if self.results[d].state not in ("done", "cached")
        ]
        if broken:
            return self._skip(planned, f"input {', '.join(repr(b) for b in broken)} did not finish")
        if planned.cached is not None:
            entry = await self._hold_cached(planned.key, planned.cached)
            if entry is not None:
                return self._cached(planned, entry)
            # Removed since planning (by `cache gc` or by hand): computed again below.
            self.emit(StepQueued(step=planned.name, key=planned.key))
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

    async def _attempt_in_slot(
        self, planned: PlannedStep, attempt: int
    ) -> AttemptOutcome | StepResult:
        """One attempt within the limits: its key's lock, the step's resources, a job slot.

        Taken in that order, so that a step waiting for another run's lock, or for CPUs, memory
        or GPUs, holds no job slot: a ready step that fits never waits behind it.
        """
        key = planned.key
        twins = self._shared_keys.get(key)
        if twins is None:
            return await self._attempt_locked(planned, attempt)
        async with twins:
            made = self.cache.lookup(key) if key in self._made else None
            if made is not None:  # by a twin in this run: read it as a hit, as others do
                entry = await self._hold_cached(key, made)
                if entry is not None:
                    return self._cached(planned, entry)
            return await self._attempt_locked(planned, attempt)

    async def _attempt_locked(
        self, planned: PlannedStep, attempt: int
    ) -> AttemptOutcome | StepResult:
        """The attempt under its key's lock; if another run holds it, the step says so and the
        time waited, which is not the step's own, is counted apart."""
        key, name = planned.key, planned.name
        on_wait = functools.partial(self._lock_waited, planned)
        async with self.cache.lock(key, on_wait=on_wait, patience=LOCK_PATIENCE_S):
            began_waiting = self._waiting.pop(name, None)
            if began_waiting is not None:
                waited = time.monotonic() - began_waiting
                self._waited[name] = self._waited.get(name, 0.0) + waited
            entry = self.cache.lookup(key)
            if entry is not None and (not planned.forced or key in self._made):
                self._note(key)
                return self._cached(planned, entry)  # made meanwhile, by this run or another
            input_keys = sorted({self.results[i].key for i in self._step_inputs[name]})
            if not input_keys:
                return await self._attempt_reading(planned, attempt)
            async with contextlib.AsyncExitStack() as reading:
                for input_key in input_keys:
                    # Readers hold a shared lock: `cache gc` leaves these entries alone.
                    await reading.enter_async_context(self.cache.lock(input_key, shared=True))
                return await self._attempt_reading(planned, attempt)

    async def _attempt_reading(
        self, planned: PlannedStep, attempt: int
    ) -> AttemptOutcome | StepResult:
        """The attempt, its inputs held: within the step's resources and a job slot, which go
        back as soon as its container has ended well, before its output is published (the next
        step's container starts meanwhile, and the steps publishing at once share one
        durability barrier)."""
        gone = [i for i in planned.step.inputs if not self._input_there(i)]
        if gone:
            result = self._input_gone(planned, gone)
            self._stop_unless_keep_going()
            return result
        resources = planned.step.resources
        claim = await self.pool.take(resources.cpus, resources.memory, resources.gpus)
        try:
            await self._slots.take()
        except BaseException:
            self.pool.give(claim)
            raise
        held = True

        def give_back() -> None:  # once: when the container has ended well, or at the end
            nonlocal held
            if held:
                held = False
                self._slots.give()
                self.pool.give(claim)

        try:
            if self._stopping and attempt == 1:
                return self._skip(planned, "an earlier step failed (use --keep-going to go on)")
            inputs = {i: self._output_of(i) for i in planned.step.inputs}
            outcome = await self.attempts.run(
                planned,
                attempt,
                inputs,
                container_done=give_back,
                container_started=functools.partial(self._began.setdefault, planned.name),
            )
            if outcome.ok:
                self._made.add(planned.key)
                self._note(planned.key)  # still under its lock, so `cache gc` sees it held
            if not outcome.ok and attempt > planned.step.retries:
                self._stop_unless_keep_going()  # before the slot goes to a waiting step
            return outcome
        finally:
            give_back()

    async def _hold_cached(self, key: str, entry: CacheEntry) -> CacheEntry | None:
        """Hold a cache hit (found at planning, or made by a twin step of this run) for the rest
        of the run; None if it has gone."""
        async with self.cache.lock(key, shared=True):
            self._note(key)
            return entry if entry.output_dir.is_dir() else None

    def _note(self, key: str) -> None:
        assert self.hold is not None  # set for the whole of run()
        self.hold.note(key)

    def _lock_waited(self, planned: PlannedStep) -> None:
        """Another run holds the step's key's lock: say so, and count the wait."""
        self.emit(StepWaitingForLock(step=planned.name, key=planned.key))
        self._waiting[planned.name] = time.monotonic()

    def _stop_unless_keep_going(self) -> None:
        if not self.keep_going:
            self._stopping = True

    def _input_gone(self, planned: PlannedStep, gone: list[str]) -> StepResult:
        names = ", ".join(repr(g) for g in gone)
        if all(g in self.plan.data for g in gone):
            reason = f"the data {names} was removed before this step could read it"
        else:
            reason = (
                f"the cache entry of input {names} was removed before this step could read it "
                "(by 'kliko-async cache gc'?); run the chain again to recompute it"
            )
        self.emit(StepFailed(step=planned.name, key=planned.key, reason=reason))
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
        self, planned: PlannedStep, outcome: AttemptOutcome, attempts: int, started: float
    ) -> StepResult:
        """The step's result after its last attempt, announced as finished or failed."""
        step = planned.step
        waited = self._waited.get(step.name, 0.0)
        # Its own time: from its first container's start (not its wait for a job slot, a lock,
        # a place in a Slurm queue or the engine), or from its first attempt if none started.
        duration = time.monotonic() - self._began.get(step.name, started)
        if outcome.ok and outcome.entry is not None:
            manifest = outcome.entry.manifest
            self._durations[(step.name, manifest.image)] = manifest.duration_s
            self.emit(
                StepFinished(
                    step=step.name,
                    key=planned.key,
                    exit_code=0,
                    duration_s=duration,
                    waited_s=waited,
                    log_path=str(outcome.entry.log_path),
                    usage=outcome.entry.manifest.usage,
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
            StepFailed(
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

    def _input_there(self, name: str) -> bool:
        if name in self.plan.data:
            return self.plan.data[name].path.exists()
        return self._output_of(name).is_dir()

    def _output_of(self, name: str) -> Path:
        if name in self.plan.data:
            return self.plan.data[name].path
        output = self.results[name].output
        assert output is not None  # only done or cached inputs get here
        return output


def past_durations(cache: Cache, plan: Plan) -> dict[str, float]:
    """How long the latest earlier run of each step to run (same name and image) took, from
    the cache's durations index (read once per run, only when something is to run); for an
    ETA. Blocking: call it in a worker thread."""
    wanted = {(name, plan.steps[name].image.ref): name for name in plan.to_run}
    found = past_durations_of(cache, wanted)
    return {wanted[pair]: seconds for pair, seconds in found.items()}
