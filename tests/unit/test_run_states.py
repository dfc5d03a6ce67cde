"""The states a step passes through besides running, as events on the fake runtime: copying join
inputs, waiting for another run's lock; and a run whose outputs cannot be exported is not ok."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

from kliko_async import api
from kliko_async.cache.store import Cache
from kliko_async.engine import attempts, scheduler
from kliko_async.errors import KlikoError
from kliko_async.events import (
    Event,
    RunFinished,
    RunStarted,
    StepFinished,
    StepPreparing,
    StepStarted,
    StepWaitingForLock,
)
from kliko_async.model.chain import Chain, parse_chain
from kliko_async.runtime.base import LABEL_PREFIX
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

pytestmark = pytest.mark.anyio


def kliko_yml(io: str) -> str:
    return (
        f"schema_version: 3\nio: {io}\nsections:\n  - name: main\n    fields:\n"
        "      - {name: delay, type: float, initial: 0.0}\n"
    )


async def write_and_wait(container: FakeContainer) -> int:
    params = json.loads(container.path("/parameters.json").read_text())
    folder = "/output" if any(m.target == "/output" for m in container.job.mounts) else "/work"
    (container.path(folder) / "data.txt").write_text("data\n")
    await anyio.sleep(params["delay"])
    return 0


@pytest.fixture
def fake() -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.add_image("split", kliko_yml("split"), write_and_wait)
    runtime.add_image("join", kliko_yml("join"), write_and_wait)
    return runtime


HOUR = 3600.0


class SkippingClock:
    """The engine's ``time.monotonic``, which a test moves on by an hour at a moment it chooses:
    durations are then told apart by an hour, not by how fast this machine is."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.skipped

    def skip_an_hour(self) -> None:
        self.skipped += HOUR


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SkippingClock:
    skipping = SkippingClock()
    for module in (scheduler, attempts):
        monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=skipping.monotonic))
    return skipping


def chain_of(tmp_path: Path, steps: dict[str, object]) -> Chain:
    return parse_chain({"steps": steps}, source=str(tmp_path / "c.yml"), base_dir=tmp_path)


async def test_a_join_step_says_it_is_preparing_while_its_inputs_are_copied(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    chain = chain_of(
        tmp_path,
        {
            "a": {"image": "split"},
            "b": {"image": "split", "params": {"delay": 0.01}},
            "merge": {"image": "join", "inputs": ["a", "b"]},
        },
    )
    events: list[Event] = []
    await api.run(chain, runtime=fake, cache_dir=tmp_path / "c", on_event=events.append)

    merge = [e for e in events if getattr(e, "step", None) == "merge"]
    kinds = [e.kind for e in merge]
    assert kinds.index("step_preparing") < kinds.index("step_started")
    (preparing,) = [e for e in merge if isinstance(e, StepPreparing)]
    assert preparing.inputs == ["a", "b"]
    assert not any(isinstance(e, StepPreparing) and e.step != "merge" for e in events)


async def test_a_step_waiting_for_another_runs_lock_says_so_and_reports_its_own_time(
    tmp_path: Path, fake: FakeRuntime, clock: SkippingClock
) -> None:
    chain = chain_of(tmp_path, {"a": {"image": "split", "params": {"delay": 0.1}}})
    plan = await api.dry_run(chain, runtime=fake, cache_dir=tmp_path / "c")
    key = plan.steps["a"].key
    events: list[Event] = []
    holding, told = anyio.Event(), threading.Event()

    def on_event(event: Event) -> None:
        events.append(event)
        if isinstance(event, StepWaitingForLock):
            told.set()

    async def other_run() -> None:
        async with Cache(tmp_path / "c").lock(key):
            holding.set()
            await anyio.to_thread.run_sync(told.wait)  # until the step says it waits
            clock.skip_an_hour()  # an hour passes while it waits

    async with anyio.create_task_group() as group:
        group.start_soon(other_run)
        await holding.wait()
        await api.run(chain, runtime=fake, cache_dir=tmp_path / "c", on_event=on_event)

    kinds = [e.kind for e in events if getattr(e, "step", None) == "a"]
    assert kinds[:3] == ["step_queued", "step_waiting_for_lock", "step_started"]
    (done,) = [e for e in events if isinstance(e, StepFinished)]
    assert done.waited_s >= HOUR
    assert done.duration_s < HOUR, "the step's own time does not count the wait"
    assert isinstance(next(e for e in events if isinstance(e, StepStarted)), StepStarted)
    assert not [e for e in events if isinstance(e, StepWaitingForLock) and e.step != "a"]


async def test_past_durations_of_the_steps_to_run_come_with_the_run_start(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    steps: dict[str, object] = {"a": {"image": "split", "params": {"delay": 0.2}}}
    first: list[Event] = []
    await api.run(
        chain_of(tmp_path, steps), runtime=fake, cache_dir=tmp_path / "c", on_event=first.append
    )
    (done,) = [e for e in first if isinstance(e, StepFinished)]
    entry = Cache(tmp_path / "c").lookup(done.key)
    assert entry is not None
    events: list[Event] = []
    await api.run(
        chain_of(tmp_path, steps),
        runtime=fake,
        cache_dir=tmp_path / "c",
        no_cache=True,
        on_event=events.append,
    )
    (start,) = [e for e in events if isinstance(e, RunStarted)]
    assert start.expected_s == {"a": entry.manifest.duration_s}, "what the first run took"
    assert start.expected_s["a"] >= 0.2


async def test_a_run_whose_outputs_cannot_be_exported_does_not_end_ok(
    tmp_path: Path, fake: FakeRuntime
) -> None:
    chain = chain_of(tmp_path, {"a": {"image": "split"}})
    events: list[Event] = []
    with pytest.raises(KlikoError, match="could not copy the output of step 'a'"):
        await api.run(
            chain,
            runtime=fake,
            cache_dir=tmp_path / "c",
            out="/proc/kliko-async-cannot-be-here",  # even root cannot make a folder in /proc
            on_event=events.append,
        )
    assert events[-1].kind == "run_finished"  # announced after the export, once
    (end,) = [e for e in events if isinstance(e, RunFinished)]
    assert not end.ok and not end.outputs_copied


async def test_a_steps_time_does_not_count_queueing_for_a_job_slot(
    tmp_path: Path, clock: SkippingClock
) -> None:
    ran: list[str] = []

    async def first_takes_an_hour(container: FakeContainer) -> int:
        ran.append(container.job.labels.get(f"{LABEL_PREFIX}.step", "?"))
        if len(ran) == 1:
            clock.skip_an_hour()  # while the other step queues for the one job slot
        return await write_and_wait(container)

    fake = FakeRuntime()
    fake.add_image("split", kliko_yml("split"), first_takes_an_hour)
    steps = {n: {"image": "split", "params": {"delay": i / 100}} for i, n in enumerate("ab")}
    events: list[Event] = []
    await api.run(
        chain_of(tmp_path, steps),
        runtime=fake,
        cache_dir=tmp_path / "c",
        jobs=1,
        on_event=events.append,
    )
    times = {e.step: e.duration_s for e in events if isinstance(e, StepFinished)}
    first, second = ran
    assert times[first] >= HOUR
    assert times[second] < HOUR, "the second queued for the slot for an hour: not its own time"
