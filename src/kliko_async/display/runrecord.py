"""What a run did, step by step, kept after it: the record ``kliko-async report`` draws.

:class:`RunRecorder` folds a run's state events (never its log lines) into one
:class:`StepRecord` per step: its state, key, image, inputs, and when it was queued, prepared,
started and ended, in seconds from the run's start. At the run's end, :func:`write_record` puts
the whole :class:`RunRecord` in ``<cache>/runs/<run-id>.json`` (written to a temporary file and
renamed, so a half-written record is never read).
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kliko_async.engine.plan import Plan
from kliko_async.events import (
    Event,
    ImageBuilding,
    ImageBuilt,
    RunFinished,
    RunStarted,
    StepCached,
    StepCancelled,
    StepFailed,
    StepFinished,
    StepPreparing,
    StepQueued,
    StepRetried,
    StepSkipped,
    StepStarted,
)
from kliko_async.results import ResourceUse

RUNS = "runs"
"""The folder of run records in the cache folder."""

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
    """Folds a run's events into its record; cheap per event, called on the event loop."""

    def __init__(self, run_id: str, source: str) -> None:
        self.record = RunRecord(run_id=run_id, source=source)
        self._steps: dict[str, StepRecord] = {}
        self._t0: datetime | None = None

    def know_plan(self, plan: Plan) -> None:
        """The steps, their images and inputs, in order (called once the chain is planned)."""
        self.record.source = plan.source
        for name in plan.order:
            record = self._step(name)
            if name in plan.steps:
                planned = plan.steps[name]
                record.key = planned.key
                record.image = planned.image.ref
                record.image_id = planned.ingredients.image_id
                record.parameters = dict(planned.ingredients.parameters)
                record.file_hashes = dict(planned.ingredients.file_hashes)
                record.inputs = list(planned.step.inputs)
                if planned.step.matrix is not None:
                    record.group = planned.step.matrix.step

    def _step(self, name: str) -> StepRecord:
        record = self._steps.get(name)
        if record is None:
            record = self._steps[name] = StepRecord(name=name)
            self.record.steps.append(record)
        return record

    def _at(self, event: Event) -> float:
        if self._t0 is None:
            self._t0 = event.time
            self.record.started = event.time
        return round((event.time - self._t0).total_seconds(), 3)

    def __call__(self, event: Event) -> None:
        at = self._at(event)
        if isinstance(event, RunStarted):
            self.record.jobs = event.jobs
            for name in event.steps:
                self._step(name).image = self._step(name).image or event.images.get(name, "")
        elif isinstance(event, ImageBuilding):
            self._step(event.step).building_at = at
        elif isinstance(event, ImageBuilt):
            pass  # the build's end is when the step is queued or cached
        elif isinstance(event, StepQueued):
            step = self._step(event.step)
            step.queued_at, step.key = at, event.key
        elif isinstance(event, StepCached):
            step = self._step(event.step)
            step.state, step.key, step.saved_s = "cached", event.key, event.original_duration_s
            step.queued_at = step.queued_at if step.queued_at is not None else at
            step.ended_at = at
        elif isinstance(event, StepPreparing):
            self._step(event.step).preparing_at = at
        elif isinstance(event, StepStarted):
            step = self._step(event.step)
            step.started_at, step.attempts, step.key = at, event.attempt, event.key
        elif isinstance(event, StepRetried):
            self._step(event.step).reason = event.reason
        elif isinstance(event, StepFinished):
            step = self._step(event.step)
            step.state, step.ended_at, step.exit_code = "ran", at, event.exit_code
            step.log_path, step.usage = event.log_path, event.usage
        elif isinstance(event, StepFailed):
            step = self._step(event.step)
            step.state, step.ended_at, step.exit_code = "failed", at, event.exit_code
            step.reason, step.last_lines, step.log_path = (
                event.reason,
                event.last_lines,
                event.log_path,
            )
        elif isinstance(event, StepSkipped):
            step = self._step(event.step)
            step.state, step.reason = "skipped", event.reason
        elif isinstance(event, StepCancelled):
            step = self._step(event.step)
            step.state, step.ended_at = "cancelled", at
        elif isinstance(event, RunFinished):
            self.record.ok, self.record.wall_s = event.ok, event.wall_s
            self.record.saved_s = event.saved_s


def runs_folder(cache_root: Path) -> Path:
    return cache_root / RUNS


def write_record(record: RunRecord, cache_root: Path) -> Path:
    """Write ``record`` to ``<cache>/runs/<run-id>.json`` atomically; its path."""
    folder = runs_folder(cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{record.run_id}.json"
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{record.run_id}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(record.model_dump_json())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
