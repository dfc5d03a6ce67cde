"""What a run did, step by step, kept after it: the record ``kliko-async report`` draws.

:class:`RunRecorder` folds a run's state events (never its log lines) into one
:class:`StepRecord` per step: its state, key, image, inputs, and when it was queued, prepared,
started and ended, in seconds from the run's start. At the run's end, :func:`write_record` puts
the whole record (a :class:`RunRecord` as JSON) in ``<cache>/records/<run-id>.json``, written to a
temporary file and renamed, so a half-written record is never read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kliko_async.cache.store import RUN_RECORDS
from kliko_async.engine.plan import Plan
from kliko_async.events import (
    Event,
    ImageBuilding,
    RunFinished,
    RunStarted,
    StepCached,
    StepCancelled,
    StepFailed,
    StepFinished,
    StepPreparing,
    StepPublishing,
    StepQueued,
    StepRetried,
    StepSkipped,
    StepStarted,
)
from kliko_async.results import ResourceUse

RECORD_FORMAT = 1

StepState = Literal["ran", "cached", "failed", "skipped", "cancelled", "not run"]


class StepRecord(BaseModel):
    """One step of a run: times are seconds from the run's start, None when it never got there."""

    model_config = ConfigDict(extra="forbid")

    name: str
    state: StepState = "not run"
    key: str | None = None
    image: str = ""
    image_id: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict, description="As validated.")
    file_hashes: dict[str, str] = Field(default_factory=dict)
    inputs: list[str] = Field(default_factory=list)
    group: str | None = Field(None, description="The matrix step it is an expansion of.")
    building_at: float | None = Field(None, description="Its image began to be built.")
    queued_at: float | None = None
    preparing_at: float | None = Field(None, description="Its inputs began to be copied.")
    started_at: float | None = Field(None, description="Its (last) container started.")
    publishing_at: float | None = Field(None, description="Its outputs began to be published.")
    ended_at: float | None = None
    attempts: int = 0
    exit_code: int | None = None
    reason: str | None = Field(None, description="Why it failed, was skipped or retried.")
    last_lines: list[str] = Field(default_factory=list)
    log_path: str | None = None
    saved_s: float = Field(0.0, description="For a cache hit: how long the step took once.")
    usage: ResourceUse | None = None


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = RECORD_FORMAT
    run_id: str
    source: str = Field(description="The chain file, or what the chain was made from.")
    started: datetime | None = None
    wall_s: float | None = None
    ok: bool | None = Field(None, description="None while the run had not finished.")
    jobs: int = 0
    saved_s: float = 0.0
    steps: list[StepRecord] = Field(default_factory=list)


class RunRecorder:
    """Folds a run's events into its record; called on the event loop for every state event,
    so it keeps plain values (a pydantic model per assignment would cost more than the step)
    and makes the :class:`RunRecord` once, at :meth:`finish`."""

    def __init__(self, run_id: str, source: str) -> None:
        self.run_id, self.source = run_id, source
        self._steps: dict[str, dict[str, Any]] = {}
        self._t0: float | None = None
        self._started: datetime | None = None
        self._run: dict[str, Any] = {}

    def know_plan(self, plan: Plan) -> None:
        """The steps, their images and inputs, in order (called once the chain is planned)."""
        self.source = plan.source
        for name in plan.order:
            record = self._step(name)
            if name in plan.steps:
                planned = plan.steps[name]
                record["key"] = planned.key
                record["image"] = planned.image.ref
                record["image_id"] = planned.ingredients.image_id
                record["parameters"] = planned.ingredients.parameters
                record["file_hashes"] = planned.ingredients.file_hashes
                record["inputs"] = list(planned.step.inputs)
                if planned.step.matrix is not None:
                    record["group"] = planned.step.matrix.step

    def _step(self, name: str) -> dict[str, Any]:
        record = self._steps.get(name)
        if record is None:
            record = self._steps[name] = {"name": name}
        return record

    def __call__(self, event: Event) -> None:
        now = event.time.timestamp()
        if self._t0 is None:
            self._t0, self._started = now, event.time
        fold = _FOLDS.get(event.kind)
        if fold is not None:
            fold(self, event, round(now - self._t0, 3))

    def _run_started(self, event: RunStarted, at: float) -> None:
        self._run["jobs"] = event.jobs
        for name in event.steps:
            self._step(name).setdefault("image", event.images.get(name, ""))

    def _building(self, event: ImageBuilding, at: float) -> None:
        self._step(event.step)["building_at"] = at

    def _queued(self, event: StepQueued, at: float) -> None:
        self._step(event.step).update(queued_at=at, key=event.key)

    def _cached(self, event: StepCached, at: float) -> None:
        step = self._step(event.step)
        step.update(state="cached", key=event.key, saved_s=event.original_duration_s, ended_at=at)
        step.setdefault("queued_at", at)

    def _preparing(self, event: StepPreparing, at: float) -> None:
        self._step(event.step)["preparing_at"] = at

    def _started_step(self, event: StepStarted, at: float) -> None:
        self._step(event.step).update(started_at=at, attempts=event.attempt, key=event.key)

    def _publishing(self, event: StepPublishing, at: float) -> None:
        self._step(event.step)["publishing_at"] = at

    def _retried(self, event: StepRetried, at: float) -> None:
        self._step(event.step)["reason"] = event.reason

    def _finished(self, event: StepFinished, at: float) -> None:
        self._step(event.step).update(
            state="ran",
            ended_at=at,
            exit_code=event.exit_code,
            log_path=event.log_path,
            usage=event.usage.model_dump() if event.usage is not None else None,
        )

    def _failed(self, event: StepFailed, at: float) -> None:
        self._step(event.step).update(
            state="failed",
            ended_at=at,
            exit_code=event.exit_code,
            reason=event.reason,
            last_lines=event.last_lines,
            log_path=event.log_path,
        )

    def _skipped(self, event: StepSkipped, at: float) -> None:
        self._step(event.step).update(state="skipped", reason=event.reason)

    def _cancelled(self, event: StepCancelled, at: float) -> None:
        self._step(event.step).update(state="cancelled", ended_at=at)

    def _run_finished(self, event: RunFinished, at: float) -> None:
        self._run.update(ok=event.ok, wall_s=event.wall_s, saved_s=event.saved_s)

    def finish(self) -> dict[str, Any]:
        """The record of everything folded in so far, as the JSON document of a
        :class:`RunRecord` (made without building a model per step: 10,000 steps cost about
        as much as their events)."""
        return {
            "format_version": RECORD_FORMAT,
            "run_id": self.run_id,
            "source": self.source,
            "started": self._started.isoformat() if self._started else None,
            **self._run,
            "steps": list(self._steps.values()),
        }


_FOLDS: dict[str, Callable[[RunRecorder, Any, float], None]] = {
    "run_started": RunRecorder._run_started,
    "image_building": RunRecorder._building,
    "step_queued": RunRecorder._queued,
    "step_cached": RunRecorder._cached,
    "step_preparing": RunRecorder._preparing,
    "step_started": RunRecorder._started_step,
    "step_publishing": RunRecorder._publishing,
    "step_retried": RunRecorder._retried,
    "step_finished": RunRecorder._finished,
    "step_failed": RunRecorder._failed,
    "step_skipped": RunRecorder._skipped,
    "step_cancelled": RunRecorder._cancelled,
    "run_finished": RunRecorder._run_finished,
}


def runs_folder(cache_root: Path) -> Path:
    return cache_root / RUN_RECORDS


def write_record(record: dict[str, Any], cache_root: Path) -> Path:
    """Write a run's record (:meth:`RunRecorder.finish`) to ``<cache>/records/<run-id>.json``
    atomically; its path."""
    folder = runs_folder(cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    run_id = str(record["run_id"])
    target = folder / f"{run_id}.json"
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{run_id}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(record, default=str, separators=(",", ":")))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
