"""The events every consumer sees: one frozen pydantic model per state change.

The scheduler emits them and never prints; displays, the JSON log and library users consume
them, through :class:`kliko_async.engine.bus.EventBus`, which fans them out without ever blocking
the run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from time import time as _clock
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from kliko_async.results import ResourceUse


def _now() -> datetime:
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    time: datetime = Field(default_factory=_now, description="When it happened (UTC).")


class RunStarted(_Event):
    kind: Literal["run_started"] = "run_started"
    run_id: str
    steps: list[str] = Field(description="Step names in a valid execution order.")
    images: dict[str, str] = Field(default_factory=dict, description="Step -> image reference.")
    jobs: int = Field(description="At most this many steps run at once.")
    expected_s: dict[str, float] = Field(
        default_factory=dict,
        description="Step -> how long an earlier run of it (same step name and image) took, "
        "for the steps to run whose past duration the cache knows; for an ETA.",
    )
    matrix: dict[str, str] = Field(
        default_factory=dict,
        description="Each expansion of a matrix step -> the name of that matrix step.",
    )


class StepQueued(_Event):
    kind: Literal["step_queued"] = "step_queued"
    step: str
    key: str


class StepCached(_Event):
    kind: Literal["step_cached"] = "step_cached"
    step: str
    key: str
    original_duration_s: float = Field(description="How long the run that produced it took.")
    waited_s: float = Field(0.0, description="Time spent waiting for another run to make it.")


class DataKeying(_Event):
    """A data input's files are being looked at (and read where they changed) to key it."""

    kind: Literal["data_keying"] = "data_keying"
    data: str = Field(description="The data's name in the chain file.")
    path: str


class DataKeyed(_Event):
    kind: Literal["data_keyed"] = "data_keyed"
    data: str
    path: str
    files: int
    size_bytes: int
    read_files: int = Field(description="Files read this time (new, or their stat changed).")
    read_bytes: int
    duration_s: float


class ImageBuilding(_Event):
    kind: Literal["image_building"] = "image_building"
    step: str
    context: str


class ImageBuilt(_Event):
    kind: Literal["image_built"] = "image_built"
    step: str
    context: str
    image_id: str


class StepPreparing(_Event):
    kind: Literal["step_preparing"] = "step_preparing"
    step: str
    inputs: list[str] = Field(description="The inputs being copied into the step's /work.")


class StepPublishing(_Event):
    """The step's container ended well; its outputs are being hashed and made durable."""

    kind: Literal["step_publishing"] = "step_publishing"
    step: str


class StepWaitingForLock(_Event):
    kind: Literal["step_waiting_for_lock"] = "step_waiting_for_lock"
    step: str
    key: str


class StepStarted(_Event):
    kind: Literal["step_started"] = "step_started"
    step: str
    key: str
    container_id: str
    attempt: int = 1


class LogLine(_Event):
    kind: Literal["log_line"] = "log_line"
    step: str
    stream: Literal["stdout", "stderr"]
    text: str


class LogLinesSkipped(_Event):
    """Log lines of ``step`` that a consumer did not get; they are in the step's saved log.

    Either that consumer fell behind (its queue was full; only it sees this event), or every
    consumer of the run takes at most so many lines per second (``log_lines_per_second``) and
    the lines past that were never made into events."""

    kind: Literal["log_lines_skipped"] = "log_lines_skipped"
    step: str
    count: int


class StepFinished(_Event):
    kind: Literal["step_finished"] = "step_finished"
    step: str
    key: str
    exit_code: int
    duration_s: float = Field(
        description="The step's own time: from holding a job slot and its lock to the end "
        "(retries included), not the time queueing for a slot or another run's lock."
    )
    waited_s: float = Field(0.0, description="Time spent waiting for another run's lock.")
    log_path: str | None = Field(None, description="Where its full saved log is.")
    usage: ResourceUse | None = Field(None, description="What its container used.")


class StepFailed(_Event):
    kind: Literal["step_failed"] = "step_failed"
    step: str
    key: str
    reason: str
    exit_code: int | None = None
    last_lines: list[str] = Field(default_factory=list)
    log_path: str | None = Field(None, description="Where the failed attempt's full log is.")


class StepRetried(_Event):
    kind: Literal["step_retried"] = "step_retried"
    step: str
    attempt: int = Field(description="The attempt about to start (2 for the first retry).")
    reason: str
    delay_s: float


class StepSkipped(_Event):
    kind: Literal["step_skipped"] = "step_skipped"
    step: str
    reason: str


class StepCancelled(_Event):
    kind: Literal["step_cancelled"] = "step_cancelled"
    step: str


class RunFinished(_Event):
    kind: Literal["run_finished"] = "run_finished"
    run_id: str
    ran: int
    cached: int
    failed: int
    skipped: int
    cancelled: int
    wall_s: float
    saved_s: float = Field(description="Sum of the original durations of the cache hits.")
    ok: bool
    outputs_copied: bool = Field(
        True,
        description="False when the outputs were not all copied to the run's --out folder "
        "(the copy failed, or was interrupted).",
    )
    stale_outputs: list[str] = Field(
        default_factory=list,
        description="Steps that did not finish in this run whose <out>/<step> still holds an "
        "earlier run's export, left as it was.",
    )


class ExportStarted(_Event):
    kind: Literal["export_started"] = "export_started"
    folder: str = Field(description="The --out folder the outputs are copied under.")
    steps: list[str] = Field(description="The steps whose outputs are copied, in order.")


class OutputExported(_Event):
    kind: Literal["output_exported"] = "output_exported"
    step: str
    path: str = Field(description="Where the copy is: <out>/<step>.")
    files: int
    size_bytes: int
    duration_s: float
    unchanged: bool = Field(
        False,
        description="An earlier export of the same output was there, unchanged since: left as "
        "it was (``files`` and ``size_bytes`` are what it holds).",
    )
    done: int = Field(description="Steps exported so far, this one included.")
    total: int = Field(description="Steps to export in all.")


Event = Annotated[
    RunStarted
    | StepQueued
    | StepCached
    | DataKeying
    | DataKeyed
    | ImageBuilding
    | ImageBuilt
    | StepPreparing
    | StepPublishing
    | StepWaitingForLock
    | StepStarted
    | LogLine
    | LogLinesSkipped
    | StepFinished
    | StepFailed
    | StepRetried
    | StepSkipped
    | StepCancelled
    | RunFinished
    | ExportStarted
    | OutputExported,
    Field(discriminator="kind"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
"""Parses any event from JSON (``EVENT_ADAPTER.validate_json(line)``)."""


_LOG_LINE_FIELDS = frozenset(LogLine.model_fields)
_new_object = object.__new__
_set_dict = object.__setattr__
# BaseModel's own slots, set through their descriptors: cheaper than object.__setattr__.
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
_last_stamp: list[tuple[float, datetime]] = [(0.0, _now())]


def log_line(step: str, stream: Literal["stdout", "stderr"], text: str) -> LogLine:
    """A LogLine without validation: log floods make hundreds of thousands of them.

    What ``LogLine.model_construct`` does for these known, valid values, at a third of its
    cost; lines within the same millisecond share one time stamp (``datetime.now`` costs more
    than the rest of the event).
    """
    now = _clock()
    seen, stamp = _last_stamp[0]
    if not 0 <= now - seen < 0.001:
        stamp = datetime.fromtimestamp(now, UTC)
        _last_stamp[0] = (now, stamp)
    event: LogLine = _new_object(LogLine)
    _set_dict(
        event,
        "__dict__",
        {"time": stamp, "kind": "log_line", "step": step, "stream": stream, "text": text},
    )
    _set_fields_set(event, set(_LOG_LINE_FIELDS))
    _set_extra(event, None)
    _set_private(event, None)
    return event


class EventConsumer(Protocol):
    """What consumes a run's events: the CLI's displays, and a host application's own consumer.

    The bus calls it from a worker thread, one event at a time, in order and never concurrently
    with itself, so it may block (a slow terminal, a paused pipe) without stalling the run. If it
    raises, it gets no further events and the run goes on; the error is not the run's. ``close``
    is called once, after its last event (``RunFinished``, or the one it failed on).

    A consumer that shows only so many lines of a step per second (a live view) may say so in
    an attribute ``log_lines_per_second``: when every consumer of a run has one, lines past the
    highest are counted at the source (``LogLinesSkipped``) instead of becoming events, so that
    a flood of millions of lines costs next to nothing. Without it, a consumer gets every line.

    A consumer that buffers what it writes (log lines to a pipe) may have a method ``flush``:
    the bus calls it after each batch of events it handed over (events are gathered for a few
    milliseconds), so that the last line before a quiet spell is not held back until the next.
    """

    def __call__(self, event: Event, /) -> None: ...

    def close(self) -> None: ...
