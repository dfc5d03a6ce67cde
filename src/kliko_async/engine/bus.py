"""The event bus: fans a run's events out to its consumers without ever blocking the run.

Each consumer has its own queue and its own pace, state events are always delivered, a consumer
that falls behind only loses log lines (the saved step log is written separately), and a
consumer that fails ends alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from kliko_async.events import Event, EventConsumer, LogLine, LogLinesSkipped

_log = logging.getLogger("kliko_async")


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
        self._flush: Callable[[], object] | None = getattr(consumer, "flush", None)
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
                with contextlib.suppress(Exception):  # nor may the report of its error
                    if self._on_failure is not None:
                        self._on_failure(error)
                    else:  # never silent: a bug in a callback would look like a quiet run
                        _log.error(
                            "the event consumer %r failed and gets no more events (the run "
                            "goes on; pass on_event_error to handle this yourself)",
                            self.consumer,
                            exc_info=error,
                        )
            if delivered:  # not while an abandoned delivery may still run in its thread
                await anyio.to_thread.run_sync(
                    self._close, limiter=self._limiter, abandon_on_cancel=True
                )

    def _deliver(self, batch: list[Event]) -> None:
        for event in batch:
            self.consumer(event)
        if self._flush is not None:  # the batch's output out now, not when a later one comes
            self._flush()

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

    @property
    def log_lines_per_second(self) -> float | None:
        """How many lines of a step per second the consumers take at most (the highest of their
        ``log_lines_per_second``); None when one of them takes every line."""
        if self._subscriptions:
            return None
        budgets = [getattr(feed.consumer, "log_lines_per_second", None) for feed in self._feeds]
        if not budgets or any(b is None for b in budgets):
            return None
        return max(float(b) for b in budgets if b is not None)

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
