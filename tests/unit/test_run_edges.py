"""Edges of a run that people read about: how an interrupted run is summed up, and how two
steps of one run that share a key are reported."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from rich.console import Console
from test_scheduler import Lab, of_type, plan_and_schedule, states

from kliko_async.display.runview import summary_lines
from kliko_async.display.wording import run_message, step_message
from kliko_async.engine.images import ImageResolver
from kliko_async.engine.plan import plan_chain
from kliko_async.engine.resources import ResourcePool
from kliko_async.engine.scheduler import Scheduler
from kliko_async.events import Event, RunFinished, StepCached, StepWaitingForLock
from kliko_async.runtime.fake import FakeContainer

pytestmark = pytest.mark.anyio


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


async def test_an_interrupted_run_is_summed_up_as_interrupted_not_failed(lab: Lab) -> None:
    interrupt = anyio.CancelScope()

    async def ctrl_c(container: FakeContainer) -> int:
        interrupt.cancel()  # as Ctrl-C, or a host application cancelling the run
        await anyio.sleep_forever()
        return 0

    lab.program("ctrl-c", ctrl_c)
    cache = lab.cache
    cache.ensure_writable()
    steps = {"a": {"image": "ctrl-c"}, "b": {"image": "work", "inputs": ["a"]}}
    plan = await plan_chain(lab.chain(steps), resolver=ImageResolver(lab.fake, None), cache=cache)
    events: list[Event] = []
    with interrupt:
        await Scheduler(
            plan, runtime=lab.fake, cache=cache, emit=events.append, run_id="r", jobs=2
        ).run()

    (finished,) = of_type(events, RunFinished)
    line = run_message(finished) or ""
    assert line.startswith("run r interrupted: 0 ran"), line
    console = Console(width=100, record=True)
    console.print(*summary_lines(finished, []))
    summary = console.export_text()
    assert "interrupted" in summary and "FAILED" not in summary, summary


async def test_two_steps_of_one_run_sharing_a_key_are_not_made_by_another_run(lab: Lab) -> None:
    same = {"image": "work", "params": {"n": 1, "delay": 0.4}}  # longer than the lock patience
    result, events = await plan_and_schedule(
        lab, {"one": same, "two": same}, jobs=2, pool=ResourcePool(cpus=2)
    )

    assert sorted(states(result).values()) == ["cached", "done"]
    assert len(lab.started()) == 1, "made once"
    assert of_type(events, StepWaitingForLock) == [], "no other run was waited for"
    (cached,) = of_type(events, StepCached)
    assert cached.waited_s == 0
    assert "another run" not in step_message(cached)[1]
