"""A log flood costs next to nothing when every consumer shows only so many lines a second.

The lines past a consumer's ``log_lines_per_second`` are counted at the source (one
``LogLinesSkipped``) instead of each becoming an event; the saved log keeps every line.
"""

from __future__ import annotations

import io
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from kliko_async import api
from kliko_async.cache.logfiles import log_content
from kliko_async.display.live import LINES_PER_SECOND, LiveDisplay
from kliko_async.display.plain import PlainDisplay
from kliko_async.engine import attempts
from kliko_async.engine.attempts import LineBudget
from kliko_async.engine.bus import EventBus
from kliko_async.events import Event, LogLine, LogLinesSkipped
from kliko_async.model.chain import parse_chain
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

FLOOD = 20_000
KLIKO_YML = "schema_version: 3\nio: split\nsections: []\n"


def test_a_budget_makes_so_many_lines_a_second_into_events_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(attempts.time, "monotonic", lambda: now[0])
    made: list[Event] = []
    budget = LineBudget("s", made.append, 50)
    for i in range(1_000):
        budget.take("stdout", f"line {i}")
    assert [e.text for e in made if isinstance(e, LogLine)] == [f"line {i}" for i in range(50)]
    now[0] += 1.0  # the next second: lines again, the count of those skipped first
    budget.take("stdout", "line 1000")
    count, line = made[50:]
    assert isinstance(count, LogLinesSkipped) and (count.step, count.count) == ("s", 950)
    assert isinstance(line, LogLine) and line.text == "line 1000"
    budget.flush()
    assert len(made) == 52  # nothing skipped since: no count
    for i in range(60):
        budget.take("stderr", f"late {i}")
    budget.flush()
    assert isinstance(made[-1], LogLinesSkipped) and made[-1].count == 11


class Counting:
    def __init__(self, per_second: float | None) -> None:
        if per_second is not None:
            self.log_lines_per_second = per_second
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def test_the_bus_budget_is_the_highest_of_its_consumers_or_none_if_one_takes_all() -> None:
    async def main() -> None:  # an EventBus belongs to an event loop
        bus = EventBus()
        assert bus.log_lines_per_second is None  # no consumer: nothing asks for a budget
        bus.on_event(Counting(50))
        bus.on_event(Counting(0))
        assert bus.log_lines_per_second == 50
        bus.on_event(Counting(None))  # a consumer of every line (a host application's, say)
        assert bus.log_lines_per_second is None
        subscribed = EventBus()
        subscribed.on_event(Counting(50))
        subscribed.subscribe()  # ChainRun.events(): every line
        assert subscribed.log_lines_per_second is None

    anyio.run(main)


def test_the_displays_say_what_they_show() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    assert LiveDisplay(console).log_lines_per_second == LINES_PER_SECOND
    assert LiveDisplay(console, logs="failed").log_lines_per_second == 0
    assert PlainDisplay(io.StringIO()).log_lines_per_second is None  # it prints every line
    assert PlainDisplay(io.StringIO(), logs="none").log_lines_per_second == 0
    assert PlainDisplay(io.StringIO(), quiet=True).log_lines_per_second == 0


async def flood(container: FakeContainer) -> int:
    for i in range(FLOOD):
        container.log(f"line {i}")
    return 0


@pytest.mark.parametrize("per_second", [LINES_PER_SECOND, None])
def test_a_flood_reaches_a_budgeted_consumer_as_a_few_lines_and_a_count(
    tmp_path: Path, per_second: float | None
) -> None:
    runtime = FakeRuntime()
    runtime.add_image("x/flood", KLIKO_YML, flood)
    chain = parse_chain({"steps": {"f": {"image": "x/flood"}}}, source="c", base_dir=tmp_path)
    consumer = Counting(per_second)
    result = anyio.run(
        lambda: api.run(chain, runtime=runtime, cache_dir=tmp_path / "cache", on_event=consumer)
    )
    assert result.ok
    lines = [e for e in consumer.events if isinstance(e, LogLine)]
    skipped = sum(e.count for e in consumer.events if isinstance(e, LogLinesSkipped))
    assert len(lines) + skipped == FLOOD
    if per_second is None:  # every line an event (those past the bus's queue of 10,000 counted)
        assert len(lines) >= 10_000
    else:
        assert len(lines) < FLOOD // 10  # the fake floods 20,000 lines in well under 40 s
        kinds = [e.kind for e in consumer.events]
        assert kinds.index("log_lines_skipped") < kinds.index("step_finished")
    saved = log_content(result.steps["f"].log_path or Path("-"))
    assert saved == b"".join(b"line %d\n" % i for i in range(FLOOD))  # every line saved
