"""Event consumers (displays, pipes, a host application's callback) cannot stall or break a run.

Each consumer has its own queue and is fed from a worker thread: one that raises ends alone, one
that blocks for seconds lets the run go on at full pace (it only misses log lines beyond its
queue), and the run's result and saved logs are the same as without any consumer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import anyio
import pytest

from kliko_async import api
from kliko_async.cache.logfiles import log_content
from kliko_async.cache.store import Cache
from kliko_async.display.jsonl import JsonLinesDisplay
from kliko_async.display.plain import PlainDisplay
from kliko_async.engine.bus import EventBus
from kliko_async.events import (
    Event,
    LogLine,
    LogLinesSkipped,
    RunFinished,
    StepFinished,
    StepStarted,
    log_line,
)
from kliko_async.model.chain import Chain, parse_chain
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

pytestmark = pytest.mark.anyio

KLIKO_YML = """\
schema_version: 3
io: split
sections:
  - name: main
    fields:
      - {name: lines, type: int, initial: 3}
      - {name: delay, type: float, initial: 0.0}
"""


async def chatty(container: FakeContainer) -> int:
    """Log ``lines`` numbered lines, sleep ``delay`` s, write the count to /output/count.txt."""
    params = json.loads(container.path("/parameters.json").read_text())
    for i in range(params["lines"]):
        container.log(f"line {i}")
    await anyio.sleep(params["delay"])
    (container.path("/output") / "count.txt").write_text(str(params["lines"]))
    return 0


@pytest.fixture
def fake() -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.add_image("example/chatty", KLIKO_YML, chatty)
    return runtime


def two_steps(tmp_path: Path, lines: int = 3) -> Chain:
    steps = {
        "first": {"image": "example/chatty", "params": {"lines": lines}},
        "second": {"image": "example/chatty", "params": {"lines": 2}, "inputs": ["first"]},
    }
    return parse_chain({"steps": steps}, source=str(tmp_path / "c.yml"), base_dir=tmp_path)


def saved_log(cache_dir: Path, key: str) -> list[str]:
    entry = Cache(cache_dir).lookup(key)
    assert entry is not None
    return log_content(entry.log_path).decode().splitlines()


async def test_a_consumer_that_raises_ends_alone_and_the_run_is_unchanged(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    seen: list[Event] = []
    failures: list[BaseException] = []

    def broken(event: Event) -> None:
        if isinstance(event, LogLine):
            raise BrokenPipeError(32, "Broken pipe")

    async with api.open_run(
        two_steps(tmp_path),
        runtime=fake,
        cache_dir=tmp_path / "cache",
        on_event=broken,
        on_event_error=failures.append,
    ) as run:
        async for event in run.events():
            seen.append(event)

    assert run.result.ok, "the consumer's error is not the run's"
    assert [s.state for s in run.result.steps.values()] == ["done", "done"]
    assert len(failures) == 1 and isinstance(failures[0], BrokenPipeError)
    assert run.feed is not None and run.feed.error is failures[0]
    assert isinstance(seen[-1], RunFinished) and seen[-1].ok, "other consumers get everything"
    key = run.result.steps["first"].key
    assert saved_log(tmp_path / "cache", key) == ["line 0", "line 1", "line 2"]


async def test_a_consumer_that_raises_gets_no_more_events_and_is_closed(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    class Failing:
        def __init__(self) -> None:
            self.events: list[str] = []
            self.closed = 0

        def __call__(self, event: Event) -> None:
            self.events.append(event.kind)
            if event.kind == "step_started":
                raise ValueError("a bug in the consumer")

        def close(self) -> None:
            self.closed += 1

    consumer = Failing()
    result = await api.run(
        two_steps(tmp_path), runtime=fake, cache_dir=tmp_path / "cache", on_event=consumer
    )

    assert result.ok
    assert consumer.events[-1] == "step_started"
    assert consumer.events.count("step_started") == 1, "nothing after its failure"
    assert consumer.closed == 1


async def test_a_consumer_that_raises_without_on_event_error_is_said_in_the_log(
    tmp_path: Path, fake: FakeRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    """usage.md's 'await kliko_async.run("chain.yaml", on_event=...)' with a callback that
    raised: the run went on, the callback got nothing more, and nothing said so anywhere."""

    def broken(event: Event) -> None:
        raise ValueError("my consumer is broken")

    with caplog.at_level(logging.ERROR, logger="kliko_async"):
        result = await api.run(
            two_steps(tmp_path), runtime=fake, cache_dir=tmp_path / "cache", on_event=broken
        )

    assert result.ok, "the consumer's error is not the run's"
    (record,) = caplog.records
    assert "failed and gets no more events" in record.getMessage()
    assert "on_event_error" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == "my consumer is broken"


async def test_a_consumer_that_blocks_for_seconds_never_holds_up_the_run(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    """A paused pipe: the consumer blocks its thread; timers, steps and the end of the run go
    on, and once it is free again it still gets every state event, in order."""
    release = threading.Event()
    kinds: list[str] = []
    skipped: list[int] = []
    handled_before_the_end: list[int] = []

    def paused(event: Event) -> None:
        release.wait(30)  # blocks this thread, as a write to a full pipe does (30 s: a guard)
        kinds.append(event.kind)
        if isinstance(event, LogLinesSkipped):
            skipped.append(event.count)

    chain = two_steps(tmp_path, lines=20_000)
    async with api.open_run(
        chain, runtime=fake, cache_dir=tmp_path / "cache", on_event=paused
    ) as run:
        async for event in run.events(max_log_lines=100_000):
            if isinstance(event, RunFinished):
                handled_before_the_end.append(len(kinds))
                release.set()

    assert handled_before_the_end == [0], "the run ended while the consumer was still blocked"
    assert run.result.ok
    state = [k for k in kinds if k not in ("log_line", "log_lines_skipped")]
    assert state[0] == "run_started" and state[-1] == "run_finished"
    assert state.count("step_finished") == 2, "state events are never dropped"
    assert kinds.count("log_line") < 20_002, "log lines beyond its queue were dropped"
    assert run.feed is not None and run.feed.dropped_log_lines > 0
    assert kinds.count("log_line") + run.feed.dropped_log_lines == 20_002
    assert sum(skipped) == run.feed.dropped_log_lines, "it is told how many it missed"
    key = run.result.steps["first"].key
    assert len(saved_log(tmp_path / "cache", key)) == 20_000, "the saved log has every line"


async def test_a_blocked_consumer_does_not_delay_a_step_timeout(tmp_path: Path) -> None:
    """Timers fire while a consumer blocks: a step with a 0.5 s timeout is stopped in time."""
    fake = FakeRuntime()
    fake.add_image("example/chatty", KLIKO_YML, chatty)
    release = threading.Event()
    returned: list[Event] = []

    def blocked(event: Event) -> None:
        release.wait(30)  # a guard: the run is expected to end long before
        returned.append(event)

    chain = parse_chain(
        {"steps": {"slow": {"image": "example/chatty", "params": {"delay": 30}, "timeout": 0.5}}},
        source=str(tmp_path / "c.yml"),
        base_dir=tmp_path,
    )
    returned_before_the_end: list[int] = []
    async with api.open_run(
        chain, runtime=fake, cache_dir=tmp_path / "cache", on_event=blocked
    ) as run:
        async for event in run.events():
            if isinstance(event, RunFinished):
                returned_before_the_end.append(len(returned))
                release.set()

    assert returned_before_the_end == [0], "the timeout fired while the consumer still blocked"
    assert run.result.steps["slow"].state == "failed"
    assert "timed out" in (run.result.steps["slow"].reason or "")


async def test_consumers_get_every_event_before_the_run_returns(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    slow: list[Event] = []

    def lagging(event: Event) -> None:
        time.sleep(0.001)
        slow.append(event)

    result = await api.run(
        two_steps(tmp_path), runtime=fake, cache_dir=tmp_path / "cache", on_event=lagging
    )

    assert result.ok
    assert isinstance(slow[-1], RunFinished)
    assert [e.step for e in slow if isinstance(e, StepFinished)] == ["first", "second"]
    assert [e.text for e in slow if isinstance(e, LogLine)][:3] == ["line 0", "line 1", "line 2"]


async def test_a_consumer_stuck_forever_delays_a_cancelled_run_only_by_the_grace() -> None:
    """A cancelled host stops waiting for a consumer that never returns after ``grace_s``."""
    bus = EventBus(grace_s=0.3)
    stuck = threading.Event()
    returned: list[Event] = []

    def never_returns(event: Event) -> None:
        stuck.wait(30)  # a guard: the bus is expected to give up on it long before
        returned.append(event)

    bus.on_event(never_returns)
    with anyio.move_on_after(0.2):
        async with bus.delivering():
            bus.emit(
                RunFinished(
                    run_id="r",
                    ran=0,
                    cached=0,
                    failed=0,
                    skipped=0,
                    cancelled=0,
                    wall_s=0,
                    saved_s=0,
                    ok=True,
                )
            )
            await anyio.sleep(5)
    assert returned == [], "it stopped waiting while the consumer was still stuck"
    stuck.set()


@pytest.mark.parametrize("display", ["plain", "json"])
async def test_the_last_log_lines_before_a_quiet_spell_reach_a_pipe_at_once(display: str) -> None:
    """A step says two lines and then works on silently: whoever reads the pipe (``| tee``, a
    test waiting for a line) sees both lines now, not when some later event comes. The plain
    display used to flush only when a line came 0.1 s after the last flush, so the second of two
    quick lines waited in the buffer for as long as the step ran on (a CI run hung on it)."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    stream = os.fdopen(write_end, "w", buffering=65536)  # a pipe: never blocks here
    consumer = PlainDisplay(stream) if display == "plain" else JsonLinesDisplay(stream)
    bus = EventBus()
    bus.on_event(consumer)
    seen = b""
    try:
        async with bus.delivering():
            bus.emit(StepStarted(step="held", key="k", container_id="c", attempt=1))
            bus.emit(log_line("held", "stdout", "first line"))
            bus.emit(log_line("held", "stdout", "working quietly now"))
            with anyio.move_on_after(10):
                while b"quietly" not in seen:
                    await anyio.sleep(0.01)
                    with contextlib.suppress(BlockingIOError):
                        seen += os.read(read_end, 65536)
            assert b"first line" in seen and b"quietly" in seen, seen  # the run still goes on
    finally:
        stream.close()
        os.close(read_end)
