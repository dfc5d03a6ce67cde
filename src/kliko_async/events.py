"""The events every consumer sees: one frozen pydantic model per state change.

The scheduler emits them and never prints; displays, the JSON log and library users consume them.
``EventBus`` fans them out without ever blocking the run: each consumer has its own queue and its
own pace, state events are always delivered, a consumer that falls behind only loses log lines
(the saved step log is written separately), and a consumer that fails ends alone.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from time import time as _clock
from typing import Annotated, Literal, Protocol

import anyio
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


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
    """Log lines of ``step`` that one consumer did not get, as it fell behind (its queue was
    full); they are in the step's saved log. Only that consumer sees this event."""

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
        True, description="False when copying the outputs to the run's --out folder failed."
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
    done: int = Field(description="Steps exported so far, this one included.")
    total: int = Field(description="Steps to export in all.")


Event = Annotated[
    RunStarted
    | StepQueued
    | StepCached
    | ImageBuilding
    | ImageBuilt
    | StepPreparing
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
    """

    def __call__(self, event: Event, /) -> None: ...

    def close(self) -> None: ...


class _Skipped:
    """Where log lines of ``step`` were dropped: ``count[0]`` of them, so far."""

    __slots__ = ("count", "step")

    def __init__(self, step: str, count: list[int]) -> None:
        self.step = step
        self.count = count


class _EventQueue:
    """Events waiting for one consumer: log lines beyond ``max_log_lines`` are dropped (and
    counted), every other event is kept until taken. Putting never blocks."""

    def __init__(self, max_log_lines: int) -> None:
        self._events: deque[Event | _Skipped] = deque()
        self._skipping: dict[str, list[int]] = {}
        self._log_lines = 0
        self._max_log_lines = max_log_lines
        self._wakeup = anyio.Event()
        self.closed = False
        self.dropped_log_lines = 0

    def put(self, event: Event) -> None:
        if isinstance(event, LogLine):
            if self._log_lines >= self._max_log_lines:
                self.dropped_log_lines += 1
                skipped = self._skipping.get(event.step)
                if skipped is None:  # where they were dropped, the consumer is told how many
                    skipped = self._skipping[event.step] = [0]
                    self._events.append(_Skipped(event.step, skipped))
                skipped[0] += 1
                return
            self._skipping.pop(event.step, None)
            self._log_lines += 1
        self._events.append(event)
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    async def wait(self) -> bool:
        """Wait for an event; False once the queue is closed and empty."""
        while not self._events:
            if self.closed:
                return False
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
        return True

    def take(self, limit: int) -> list[Event]:
        batch: list[Event] = []
        while self._events and len(batch) < limit:
            event = self._events.popleft()
            if isinstance(event, _Skipped):
                if self._skipping.get(event.step) is event.count:
                    del self._skipping[event.step]  # later drops start a new count
                batch.append(LogLinesSkipped(step=event.step, count=event.count[0]))
                continue
            if isinstance(event, LogLine):
                self._log_lines -= 1
            batch.append(event)
        return batch


class EventSubscription:
    """An async iterator over the events of one run, fed without ever blocking the producer.

    At most ``max_log_lines`` undelivered log lines are kept; later ones are dropped (counted in
    ``dropped_log_lines``). Every other event is kept until consumed.
    """

    def __init__(self, max_log_lines: int) -> None:
        self._queue = _EventQueue(max_log_lines)

    @property
    def dropped_log_lines(self) -> int:
        return self._queue.dropped_log_lines

    def put(self, event: Event) -> None:
        self._queue.put(event)

    def close(self) -> None:
        self._queue.close()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if not await self._queue.wait():
            raise StopAsyncIteration
        return self._queue.take(1)[0]


class ConsumerFeed:
    """How one consumer is being fed: its queue, the log lines it missed, and its error if any."""

    BATCH = 1024
    """Events handed to the consumer's thread at once, so a log flood costs few thread hops."""

    GATHER_S = 0.02
    """After the first of several events, wait this long for more before a hop to the thread:
    a run of 10,000 short steps costs a few hundred hops, not tens of thousands."""

    def __init__(
        self,
        consumer: EventConsumer | Callable[[Event], None],
        max_log_lines: int,
        on_failure: Callable[[BaseException], None] | None,
    ) -> None:
        self.consumer = consumer
        self.queue = _EventQueue(max_log_lines)
        self.error: BaseException | None = None
        self._on_failure = on_failure
        self._limiter = anyio.CapacityLimiter(1)
        self.scope = anyio.CancelScope()

    @property
    def dropped_log_lines(self) -> int:
        return self.queue.dropped_log_lines

    async def pump(self) -> None:
        """Deliver queued events in a worker thread until the queue closes, then close it."""
        with anyio.CancelScope(shield=True), self.scope:  # the run's last events still arrive
            delivered = True
            try:
                while await self.queue.wait():
                    if not self.queue.closed:
                        await anyio.sleep(self.GATHER_S)  # fewer, larger batches
                    batch = self.queue.take(self.BATCH)
                    delivered = False
                    await anyio.to_thread.run_sync(
                        self._deliver, batch, limiter=self._limiter, abandon_on_cancel=True
                    )
                    delivered = True
            except Exception as error:  # the consumer's own error: it alone ends
                delivered = True  # its thread returned, with this error
                self.error = error
                self.queue.close()
                if self._on_failure is not None:
                    with contextlib.suppress(Exception):  # nor may the report of its error
                        self._on_failure(error)
            if delivered:  # not while an abandoned delivery may still run in its thread
                await anyio.to_thread.run_sync(
                    self._close, limiter=self._limiter, abandon_on_cancel=True
                )

    def _deliver(self, batch: list[Event]) -> None:
        for event in batch:
            self.consumer(event)

    def _close(self) -> None:
        close = getattr(self.consumer, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):  # after a failure, closing may fail the same way
                close()


class EventBus:
    """Delivers each emitted event to consumers (each at its own pace) and to subscriptions.

    Consumers are fed while ``async with bus.delivering():`` runs; leaving it closes the bus and
    waits until every consumer has had every event, or, when leaving on an error or a
    cancellation, at most ``grace_s`` seconds.
    """

    def __init__(self, *, grace_s: float = 5.0) -> None:
        self._feeds: list[ConsumerFeed] = []
        self._subscriptions: list[EventSubscription] = []
        self._grace_s = grace_s

    def on_event(
        self,
        consumer: EventConsumer | Callable[[Event], None],
        *,
        max_log_lines: int = 10_000,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> ConsumerFeed:
        """Feed ``consumer`` every event; ``on_failure(error)`` runs on the loop if it raises
        (an error of ``on_failure`` itself is ignored: it must not break the run either)."""
        feed = ConsumerFeed(consumer, max_log_lines, on_failure)
        self._feeds.append(feed)
        return feed

    def subscribe(self, max_log_lines: int = 10_000) -> EventSubscription:
        subscription = EventSubscription(max_log_lines)
        self._subscriptions.append(subscription)
        return subscription

    @property
    def wants_log_lines(self) -> bool:
        return bool(self._feeds or self._subscriptions)

    def emit(self, event: Event) -> None:
        for feed in self._feeds:
            if not feed.queue.closed:
                feed.queue.put(event)
        for subscription in self._subscriptions:
            subscription.put(event)

    @asynccontextmanager
    async def delivering(self) -> AsyncIterator[None]:
        """Feed the consumers while the block runs; see the class docstring for its end."""
        async with anyio.create_task_group() as group:
            for feed in self._feeds:
                group.start_soon(feed.pump)
            try:
                yield
            except BaseException:
                deadline = anyio.current_time() + self._grace_s
                for feed in self._feeds:
                    feed.scope.deadline = deadline
                raise
            finally:
                self.close()

    def close(self) -> None:
        for feed in self._feeds:
            feed.queue.close()
        for subscription in self._subscriptions:
            subscription.close()
