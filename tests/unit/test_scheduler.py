"""The scheduler, driven through the library API against the fake runtime.

Each test builds a small chain of fake Kliko images whose programs record when they start and
end, runs it with ``kliko_async.api.run`` (or the ``Scheduler`` itself, where a resource pool is
needed) and checks what ran, in which order, what the cache holds and which events were seen.
Nothing here needs Docker; timings are only used to make steps overlap, never asserted.
"""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import pytest

from kliko_async import api
from kliko_async.cache import filecopy
from kliko_async.cache.logfiles import log_content
from kliko_async.cache.store import Cache
from kliko_async.cache.upkeep import gc, verify
from kliko_async.engine.images import ImageResolver
from kliko_async.engine.plan import plan_chain
from kliko_async.engine.resources import ResourcePool
from kliko_async.engine.scheduler import Scheduler
from kliko_async.errors import ChainError, ContainerError, ImageError, ParameterError, SpecError
from kliko_async.events import (
    Event,
    LogLine,
    RunFinished,
    RunStarted,
    StepCached,
    StepCancelled,
    StepFailed,
    StepFinished,
    StepQueued,
    StepRetried,
    StepSkipped,
    StepStarted,
    StepWaitingForLock,
)
from kliko_async.model.chain import Chain, chain_from_pairs, parse_chain
from kliko_async.results import RunResult
from kliko_async.runtime.base import LABEL_PREFIX
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

pytestmark = pytest.mark.anyio

E = TypeVar("E")

PARAMETERS = """\
sections:
  - name: behaviour
    fields:
      - {name: n, type: int, initial: 0}
      - {name: delay, type: float, initial: 0.0}
      - {name: exit, type: int, initial: 0}
"""
SPLIT_YML = "schema_version: 3\nio: split\n" + PARAMETERS
JOIN_YML = "schema_version: 3\nio: join\n" + PARAMETERS


def step_of(container: FakeContainer) -> str:
    return container.job.labels[f"{LABEL_PREFIX}.step"]


def params_of(container: FakeContainer) -> dict[str, Any]:
    values: dict[str, Any] = json.loads(container.path("/parameters.json").read_text())
    return values


@dataclass
class Lab:
    """A fake engine with a ``work`` (split IO) and a ``join`` (join IO) image, a cache folder,
    and a timeline of ("start" | "end", step) entries the programs append to."""

    tmp_path: Path
    fake: FakeRuntime = field(default_factory=FakeRuntime)
    timeline: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fake.add_image("work", SPLIT_YML, self.work)
        self.fake.add_image("join", JOIN_YML, self.work)

    async def work(self, container: FakeContainer) -> int:
        """Sleep ``delay`` s, write ``data.txt`` = "<step> <n>", log one line, exit ``exit``."""
        step, params = step_of(container), params_of(container)
        self.timeline.append(("start", step))
        try:
            await anyio.sleep(params["delay"])
        finally:
            self.timeline.append(("end", step))
        out = container.path("/output" if "/output" in self.targets(container) else "/work")
        (out / "data.txt").write_text(f"{step} {params['n']}\n")
        container.log(f"{step} wrote n={params['n']}")
        code: int = params["exit"]
        return code

    @staticmethod
    def targets(container: FakeContainer) -> set[str]:
        return {mount.target for mount in container.job.mounts}

    def program(self, ref: str, program: Callable[[FakeContainer], Awaitable[int]]) -> None:
        self.fake.add_image(ref, SPLIT_YML, program)

    @property
    def cache_dir(self) -> Path:
        return self.tmp_path / "cache"

    @property
    def cache(self) -> Cache:
        return Cache(self.cache_dir)

    def chain(self, steps: dict[str, Any]) -> Chain:
        return parse_chain(
            {"steps": steps}, source=str(self.tmp_path / "chain.yml"), base_dir=self.tmp_path
        )

    async def run(
        self, steps: dict[str, Any] | Chain, **options: Any
    ) -> tuple[RunResult, list[Event]]:
        events: list[Event] = []
        chain = steps if isinstance(steps, Chain) else self.chain(steps)
        options.setdefault("jobs", 4)
        result = await api.run(
            chain, runtime=self.fake, cache_dir=self.cache_dir, on_event=events.append, **options
        )
        return result, events

    def index(self, what: str, step: str) -> int:
        return self.timeline.index((what, step))

    def started(self) -> list[str]:
        return [step for what, step in self.timeline if what == "start"]

    def overlapped(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` were both running at one moment."""
        start_a, end_a = self.index("start", a), self.index("end", a)
        start_b, end_b = self.index("start", b), self.index("end", b)
        return start_a < end_b and start_b < end_a


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def states(result: RunResult) -> dict[str, str]:
    return {name: step.state for name, step in result.steps.items()}


def of_type(events: list[Event], kind: type[E]) -> list[E]:
    return [event for event in events if isinstance(event, kind)]


def finished(events: list[Event]) -> RunFinished:
    (event,) = of_type(events, RunFinished)
    return event


def tree(folder: Path) -> dict[str, str]:
    """Relative path -> text of every file under ``folder``."""
    return {
        str(path.relative_to(folder)): path.read_text()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


DIAMOND: dict[str, dict[str, Any]] = {
    "gen": {"image": "work", "params": {"n": 1, "delay": 0.05}},
    "left": {"image": "work", "inputs": ["gen"], "params": {"n": 2, "delay": 0.2}},
    "right": {"image": "work", "inputs": ["gen"], "params": {"n": 3, "delay": 0.2}},
    "merge": {"image": "work", "inputs": ["left", "right"]},
}


# --------------------------------------------------------------------------------------------
# Ordering and concurrency
# --------------------------------------------------------------------------------------------


async def test_a_step_starts_only_after_all_its_inputs_finished(lab: Lab) -> None:
    result, _ = await lab.run(DIAMOND, jobs=4)

    assert states(result) == dict.fromkeys(DIAMOND, "done")
    for name, spec in DIAMOND.items():
        for source in spec.get("inputs", []):
            assert lab.index("end", source) < lab.index("start", name), (source, name)


async def test_the_branches_of_a_diamond_run_at_the_same_time(lab: Lab) -> None:
    await lab.run(DIAMOND, jobs=2)

    assert lab.overlapped("left", "right")
    assert lab.fake.max_running == 2


async def test_one_job_runs_the_branches_one_after_the_other(lab: Lab) -> None:
    await lab.run(DIAMOND, jobs=1)

    assert not lab.overlapped("left", "right")
    assert lab.fake.max_running == 1


async def test_jobs_limits_how_many_containers_run_at_once(lab: Lab) -> None:
    steps = {f"s{i}": {"image": "work", "params": {"n": i, "delay": 0.05}} for i in range(6)}

    result, _ = await lab.run(steps, jobs=2)

    assert result.count("done") == 6
    assert lab.fake.max_running == 2


async def plan_and_schedule(
    lab: Lab, steps: dict[str, Any], *, jobs: int, pool: ResourcePool, keep_going: bool = False
) -> tuple[RunResult, list[Event]]:
    """Run through the Scheduler itself, which (unlike api.run) accepts a resource pool."""
    cache = lab.cache
    cache.ensure_writable()
    plan = await plan_chain(lab.chain(steps), resolver=ImageResolver(lab.fake, None), cache=cache)
    events: list[Event] = []
    scheduler = Scheduler(
        plan,
        runtime=lab.fake,
        cache=cache,
        emit=events.append,
        run_id="test",
        jobs=jobs,
        keep_going=keep_going,
        pool=pool,
    )
    return await scheduler.run(), events


@pytest.mark.parametrize(("cpus_per_step", "expected_at_once"), [(1, 2), (2, 1), (0.5, 4)])
async def test_cpu_claims_limit_how_many_steps_run_at_once(
    lab: Lab, cpus_per_step: float, expected_at_once: int
) -> None:
    steps = {
        f"s{i}": {"image": "work", "params": {"n": i, "delay": 0.05}, "resources": {"cpus": c}}
        for i, c in enumerate([cpus_per_step] * 6)
    }

    result, _ = await plan_and_schedule(lab, steps, jobs=8, pool=ResourcePool(cpus=2))

    assert result.count("done") == 6
    assert lab.fake.max_running == expected_at_once


@pytest.mark.parametrize(
    ("resources", "said"),
    [
        ({"cpus": 64}, "asks for 64 CPUs, but this machine has 2"),
        ({"memory": "1p"}, "asks for 1 PiB of memory, but this machine has 4 GiB"),
    ],
)
async def test_a_claim_the_machine_can_never_give_is_refused_before_anything_runs(
    lab: Lab, resources: dict[str, Any], said: str
) -> None:
    steps = {
        "small": {"image": "work", "params": {"n": 2}, "resources": {"cpus": 1}},
        "huge": {"image": "work", "params": {"n": 1}, "inputs": ["small"], "resources": resources},
    }
    machine = ResourcePool(cpus=2, memory=4 << 30)

    with pytest.raises(ChainError, match=f"step 'huge' {said}"):
        await plan_chain(
            lab.chain(steps),
            resolver=ImageResolver(lab.fake, None),
            cache=lab.cache,
            machine=machine,
        )
    plan = await plan_chain(
        lab.chain(steps),
        resolver=ImageResolver(lab.fake, None),
        cache=None,
        machine=ResourcePool(cpus=64, memory=1 << 50),
    )
    with pytest.raises(ChainError, match=f"step 'huge' {said}"):
        await Scheduler(
            plan,
            runtime=lab.fake,
            cache=lab.cache,
            emit=lambda e: None,
            run_id="t",
            jobs=2,
            pool=machine,
        ).run()
    assert lab.started() == [], "not even the step that fits ran"


async def test_inputs_being_read_are_safe_from_gc_and_a_vanished_input_fails_clearly(
    lab: Lab,
) -> None:
    steps = {
        "up": {"image": "work", "params": {"n": 1}},
        "down": {"image": "reader", "inputs": ["up"]},
    }
    removed_while_reading: list[list[str]] = []

    async def reader(container: FakeContainer) -> int:
        removed = gc(lab.cache, max_size=0)  # a `cache gc` in another terminal, mid-run
        removed_while_reading.append([entry.manifest.step for entry in removed])
        source = container.path("/input") / "data.txt"
        (container.path("/output") / "copy.txt").write_text(source.read_text())
        return 0

    lab.program("reader", reader)
    first, _ = await lab.run(steps)
    assert states(first) == {"up": "done", "down": "done"}
    assert removed_while_reading == [[]]  # "up" was in use, so gc kept it

    # A cache hit removed between planning and the run is made again, and then read.
    cache = lab.cache
    plan = await plan_chain(
        lab.chain(steps | {"down": {"image": "work", "inputs": ["up"]}}),
        resolver=ImageResolver(lab.fake, None),
        cache=cache,
    )
    assert plan.steps["up"].cached is not None
    cache.remove(plan.steps["up"].key)
    events: list[Event] = []
    second = await Scheduler(
        plan, runtime=lab.fake, cache=cache, emit=events.append, run_id="t", jobs=2
    ).run()
    assert states(second) == {"up": "done", "down": "done"}
    assert [e.step for e in of_type(events, StepQueued)].count("up") == 1

    # An input removed by hand (not by gc) before its reader reads it fails the reader clearly.
    async def remover(container: FakeContainer) -> int:
        cache.remove(second.steps["up"].key)
        return 0

    lab.program("remover", remover)
    third, events = await lab.run(
        {
            "up": {"image": "work", "params": {"n": 1}},
            "mid": {"image": "remover"},
            "down": {"image": "work", "inputs": ["up", "mid"]},
        },
        keep_going=True,
    )
    assert states(third) == {"up": "cached", "mid": "done", "down": "failed"}
    assert "cache entry of input 'up' was removed" in (third.steps["down"].reason or "")
    assert any(isinstance(e, StepFailed) and e.step == "down" for e in events)


async def test_gpu_claims_are_respected_and_reach_the_container_job(lab: Lab) -> None:
    steps = {
        "train": {"image": "work", "params": {"n": 1, "delay": 0.05}, "resources": {"gpus": 1}},
        "tune": {"image": "work", "params": {"n": 2, "delay": 0.05}, "resources": {"gpus": 1}},
        "plot": {"image": "work", "params": {"n": 3, "delay": 0.05}},
    }

    result, _ = await plan_and_schedule(lab, steps, jobs=8, pool=ResourcePool(cpus=8, gpus=1))

    assert result.count("done") == 3
    assert not lab.overlapped("train", "tune")  # one GPU: one GPU step at a time
    assert lab.overlapped("train", "plot") or lab.overlapped("tune", "plot")
    assert sorted(job.gpus or 0 for job in lab.fake.jobs) == [0, 1, 1]


async def test_steps_waiting_for_a_gpu_hold_no_job_slot_a_ready_step_needs(lab: Lab) -> None:
    """Head-of-line: with 2 jobs and 1 GPU, one GPU step runs and two wait for the GPU; the
    CPU-only step, ready all along, runs while they wait, not after them."""
    gpu = {"delay": 0.3}
    steps = {
        "g1": {"image": "work", "params": {"n": 1, **gpu}, "resources": {"gpus": 1}},
        "g2": {"image": "work", "params": {"n": 2, **gpu}, "resources": {"gpus": 1}},
        "g3": {"image": "work", "params": {"n": 3, **gpu}, "resources": {"gpus": 1}},
        "cpu": {"image": "work", "params": {"n": 4}},
    }

    result, _ = await plan_and_schedule(lab, steps, jobs=2, pool=ResourcePool(cpus=8, gpus=1))

    assert result.count("done") == 4
    first_gpu_end = min(lab.index("end", g) for g in ("g1", "g2", "g3"))
    assert lab.index("end", "cpu") < first_gpu_end, "the ready step ran while GPU steps waited"


async def test_a_step_waiting_for_another_runs_lock_holds_no_job_slot(lab: Lab) -> None:
    """With one job, a step whose key another run is computing waits for its lock without the
    slot: the other ready step runs meanwhile (before, the run waited for the other run)."""
    steps = {"locked": {"image": "work", "params": {"n": 1}}, "free": {"image": "work"}}
    chain = lab.chain(steps)
    plan = await api.dry_run(chain, runtime=lab.fake, cache_dir=lab.cache_dir)
    other_run_done = anyio.Event()

    async def other_run(task_status: anyio.abc.TaskStatus[None]) -> None:
        async with lab.cache.lock(plan.steps["locked"].key):
            task_status.started()
            await other_run_done.wait()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            await group.start(other_run)
            async with api.open_run(
                chain, runtime=lab.fake, cache_dir=lab.cache_dir, jobs=1
            ) as run:
                async for event in run.events():
                    if isinstance(event, StepFinished) and event.step == "free":
                        other_run_done.set()

    assert states(run.result) == {"locked": "done", "free": "done"}
    assert lab.started() == ["free", "locked"]


async def test_a_step_goes_on_in_the_task_of_the_step_that_made_it_ready(lab: Lab) -> None:
    # Starting a task costs more than most of a step's own work: a chain of steps is one task,
    # and a fan-out starts a task only for each consumer after the first.
    tasks: dict[str, int] = {}

    async def where(container: FakeContainer) -> int:
        tasks[step_of(container)] = anyio.get_current_task().id
        return await lab.work(container)

    lab.program("where", where)
    chain = {"a": {"image": "where"}}
    for prev, name in zip("abcd", "bcde", strict=True):
        chain[name] = {"image": "where", "inputs": [prev]}
    chain |= {f"fan{i}": {"image": "where", "params": {"n": i}, "inputs": ["e"]} for i in range(3)}

    result, _ = await lab.run(chain)

    assert set(states(result).values()) == {"done"}
    assert len({tasks[name] for name in "abcde"}) == 1
    assert tasks["fan0"] == tasks["e"]
    assert len({tasks["e"], tasks["fan1"], tasks["fan2"]}) == 3


# --------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------

FAILING = {
    "bad": {"image": "work", "params": {"delay": 0.05, "exit": 3}},
    "slow": {"image": "work", "params": {"delay": 0.4}},
    "late": {"image": "work"},
    "after_bad": {"image": "work", "inputs": ["bad"]},
    "after_slow": {"image": "work", "inputs": ["slow"]},
}


async def test_after_a_failure_no_new_step_starts_but_running_ones_finish(lab: Lab) -> None:
    # Two jobs: "bad" and "slow" run; "late" waits for a slot that frees only when "bad" fails.
    result, events = await lab.run(FAILING, jobs=2)

    assert states(result) == {
        "bad": "failed",
        "slow": "done",
        "late": "skipped",
        "after_bad": "skipped",
        "after_slow": "skipped",
    }
    assert sorted(lab.started()) == ["bad", "slow"]  # both start at once, in either order
    assert result.steps["bad"].exit_code == 3
    assert result.steps["bad"].reason == "exited with code 3"
    assert "keep-going" in (result.steps["late"].reason or "")
    assert "'bad'" in (result.steps["after_bad"].reason or "")
    summary = finished(events)
    assert (summary.ran, summary.failed, summary.skipped, summary.cached) == (1, 1, 3, 0)
    assert not summary.ok
    assert not result.ok


async def test_keep_going_runs_every_branch_that_does_not_need_the_failure(lab: Lab) -> None:
    result, events = await lab.run(FAILING, jobs=2, keep_going=True)

    assert states(result) == {
        "bad": "failed",
        "slow": "done",
        "late": "done",
        "after_bad": "skipped",
        "after_slow": "done",
    }
    assert "after_bad" not in lab.started()
    (skipped,) = of_type(events, StepSkipped)
    assert skipped.step == "after_bad"
    assert "'bad'" in skipped.reason
    summary = finished(events)
    assert (summary.ran, summary.failed, summary.skipped) == (3, 1, 1)


async def test_a_step_waiting_for_cpus_does_not_start_after_a_failure(lab: Lab) -> None:
    # Both hold a job slot; "waiting" needs the CPUs "bad" holds and gets them when it fails.
    steps = {
        "bad": {"image": "work", "params": {"delay": 0.05, "exit": 1}, "resources": {"cpus": 2}},
        "waiting": {"image": "work", "resources": {"cpus": 2}},
    }

    result, _ = await plan_and_schedule(lab, steps, jobs=2, pool=ResourcePool(cpus=2))

    assert states(result) == {"bad": "failed", "waiting": "skipped"}
    assert lab.started() == ["bad"]


async def test_deleting_a_failed_staging_folder_or_a_forced_entry_runs_off_the_loop(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both may delete gigabytes: in a worker thread, never on the event loop's thread."""
    on_loop: dict[str, list[bool]] = {"discard": [], "remove": []}
    for name in on_loop:
        original = getattr(Cache, name)

        def spy(self: Cache, *args: Any, _name: str = name, _original: Any = original) -> Any:
            on_loop[_name].append(threading.current_thread() is threading.main_thread())
            return _original(self, *args)

        monkeypatch.setattr(Cache, name, spy)
    steps = {
        "ok": {"image": "work", "params": {"n": 1}},
        "bad": {"image": "work", "params": {"exit": 2}},
    }

    await lab.run(steps, keep_going=True)
    await lab.run({"ok": steps["ok"]}, force=["ok"])

    assert on_loop["discard"] == [False], "the failed step's staging folder, in a thread"
    assert on_loop["remove"] == [False], "the forced step's old entry, in a thread"


async def test_a_failing_step_is_retried_with_backoff_until_it_succeeds(lab: Lab) -> None:
    calls = 0

    async def flaky(container: FakeContainer) -> int:
        nonlocal calls
        calls += 1
        container.log(f"attempt {calls}")
        return 0 if calls == 3 else 1

    lab.program("flaky", flaky)

    result, events = await lab.run({"f": {"image": "flaky", "retries": 2, "retry_backoff": 0.01}})

    assert result.steps["f"].state == "done"
    assert len(lab.fake.jobs) == 3
    retried = of_type(events, StepRetried)
    assert [(e.attempt, e.delay_s) for e in retried] == [(2, 0.01), (3, 0.02)]
    assert all(e.reason == "exited with code 1" for e in retried)
    assert [e.attempt for e in of_type(events, StepStarted)] == [1, 2, 3]
    log_path = result.steps["f"].log_path
    assert log_path is not None
    assert log_content(log_path) == b"attempt 3\n"  # the published log is the successful attempt's


async def test_a_step_that_fails_every_retry_fails_naming_the_attempts(lab: Lab) -> None:
    result, events = await lab.run(
        {"bad": {"image": "work", "params": {"exit": 2}, "retries": 2, "retry_backoff": 0.01}}
    )

    failed = result.steps["bad"]
    assert failed.state == "failed"
    assert failed.reason == "exited with code 2 (after 3 attempts)"
    assert len(lab.fake.jobs) == 3
    assert len(of_type(events, StepRetried)) == 2
    (event,) = of_type(events, StepFailed)
    assert event.reason == failed.reason
    assert event.last_lines == ["bad wrote n=0"]
    assert failed.log_path is not None
    assert log_content(failed.log_path) == b"bad wrote n=0\n"


async def test_a_step_waiting_to_retry_holds_no_job_slot(lab: Lab) -> None:
    calls = 0

    async def flaky(container: FakeContainer) -> int:
        nonlocal calls
        calls += 1
        lab.timeline.append(("start", f"flaky{calls}"))
        lab.timeline.append(("end", f"flaky{calls}"))
        return 0 if calls == 2 else 1

    lab.program("flaky", flaky)
    steps = {
        "f": {"image": "flaky", "retries": 1, "retry_backoff": 0.5},
        "other": {"image": "work", "params": {"delay": 0.05}},
    }

    result, _ = await lab.run(steps, jobs=1)

    assert states(result) == {"f": "done", "other": "done"}
    # With one job slot, "other" ran while "f" waited to retry.
    assert lab.index("end", "flaky1") < lab.index("start", "other")
    assert lab.index("end", "other") < lab.index("start", "flaky2")


async def test_no_retry_starts_after_another_step_failed(lab: Lab) -> None:
    steps = {
        "flaky": {"image": "work", "params": {"exit": 1}, "retries": 3, "retry_backoff": 0.3},
        "bad": {"image": "work", "params": {"delay": 0.1, "exit": 2}},
    }

    result, _ = await lab.run(steps, jobs=2)

    assert states(result) == {"flaky": "failed", "bad": "failed"}
    assert lab.started().count("flaky") == 1  # its retry never started
    assert "not retried, since another step failed" in (result.steps["flaky"].reason or "")


async def test_a_step_that_runs_past_its_timeout_is_stopped_and_fails(lab: Lab) -> None:
    with anyio.fail_after(5):
        result, events = await lab.run(
            {"sleepy": {"image": "work", "params": {"delay": 10}, "timeout": 0.2}}
        )

    sleepy = result.steps["sleepy"]
    assert sleepy.state == "failed"
    assert sleepy.reason is not None
    assert "timed out after 0.2 s" in sleepy.reason
    assert len(lab.fake.cancelled) == 1
    assert lab.fake.running == 0
    assert lab.cache.lookup(sleepy.key) is None
    assert of_type(events, StepFailed)[0].reason == sleepy.reason


async def test_an_engine_failure_fails_the_step_with_the_engine_message(lab: Lab) -> None:
    async def lost(container: FakeContainer) -> int:
        raise ContainerError("the engine lost the container", where="container " + container.id)

    lab.program("lost", lost)

    result, events = await lab.run({"a": {"image": "lost"}, "b": {"image": "work"}}, jobs=1)

    assert states(result) == {"a": "failed", "b": "skipped"}
    assert result.steps["a"].reason == "container fake00000000: the engine lost the container"
    assert of_type(events, StepFailed)[0].exit_code is None
    assert list((lab.cache_dir / "tmp").iterdir()) == []


# --------------------------------------------------------------------------------------------
# Cancellation
# --------------------------------------------------------------------------------------------


async def test_cancelling_a_run_stops_running_containers_and_publishes_nothing(lab: Lab) -> None:
    steps = {
        "quick": {"image": "work"},
        "slow": {"image": "work", "params": {"delay": 10}},
        "after_slow": {"image": "work", "inputs": ["slow"]},
    }
    events: list[Event] = []

    with anyio.move_on_after(0.3) as scope:
        await api.run(
            lab.chain(steps),
            runtime=lab.fake,
            cache_dir=lab.cache_dir,
            jobs=4,
            on_event=events.append,
        )

    assert scope.cancelled_caught
    assert len(lab.fake.cancelled) == 1
    assert lab.fake.running == 0
    assert {e.step for e in of_type(events, StepCancelled)} == {"slow", "after_slow"}
    assert [e.step for e in of_type(events, StepFinished)] == ["quick"]
    assert list((lab.cache_dir / "tmp").iterdir()) == []
    keys = {e.step: e.key for e in of_type(events, StepQueued)}
    assert lab.cache.lookup(keys["quick"]) is not None
    assert lab.cache.lookup(keys["slow"]) is None
    summary = finished(events)
    assert (summary.ran, summary.cancelled, summary.ok) == (1, 2, False)


async def test_a_run_after_a_cancelled_one_runs_only_what_did_not_finish(lab: Lab) -> None:
    steps = {"quick": {"image": "work"}, "slow": {"image": "work", "params": {"delay": 0.5}}}
    with anyio.move_on_after(0.2):
        await lab.run(steps)

    result, _ = await lab.run(steps)

    assert states(result) == {"quick": "cached", "slow": "done"}


COPIES = {  # the sizes of the files a join step copies; the copy call cancelled during
    "many files": ([1024] * 20, 3),
    "its last file": ([1024] * 3, 3),
    "one big file": ([16 << 20], 1),
}


@pytest.mark.parametrize(("sizes", "cancel_at"), list(COPIES.values()), ids=list(COPIES))
async def test_cancelling_a_run_stops_copying_into_work_and_starts_no_container(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, sizes: list[int], cancel_at: int
) -> None:
    """Ctrl-C (or an application's move_on_after) while a join step's inputs are copied into
    /work: the copy stops at the next file, or the next piece of a big one, not at its end; the
    step's container never starts, even when the copy's last piece was under way."""

    async def writer(container: FakeContainer) -> int:
        for index, size in enumerate(sizes):
            (container.path("/output") / f"f{index:02d}").write_bytes(bytes(size))
        return 0

    lab.program("writer", writer)
    run = anyio.CancelScope()
    calls = 0
    real_copy_file_range = os.copy_file_range

    def copy_file_range(*args: int) -> int:
        nonlocal calls
        calls += 1
        if calls == cancel_at:
            anyio.from_thread.run_sync(run.cancel)  # Ctrl-C, while this piece is copied
        return real_copy_file_range(*args)

    monkeypatch.setattr(filecopy.os, "copy_file_range", copy_file_range)
    monkeypatch.setattr(filecopy, "CHECKED_PIECE", 1 << 20)
    events: list[Event] = []
    steps = {"big": {"image": "writer"}, "join": {"image": "join", "inputs": ["big"]}}

    with run:
        await api.run(
            lab.chain(steps), runtime=lab.fake, cache_dir=lab.cache_dir, on_event=events.append
        )

    assert run.cancelled_caught
    assert calls == cancel_at, "not one more file or piece was copied after the cancellation"
    assert lab.fake.started == 1, "only the writer's container: the join step's never started"
    assert list((lab.cache_dir / "tmp").iterdir()) == [], "its half-filled /work is removed"
    assert [e.step for e in of_type(events, StepCancelled)] == ["join"]


# --------------------------------------------------------------------------------------------
# The cache, seen from the scheduler
# --------------------------------------------------------------------------------------------


async def test_a_second_identical_run_is_all_cached_and_starts_no_container(lab: Lab) -> None:
    first, _ = await lab.run(DIAMOND)
    jobs_after_first = len(lab.fake.jobs)

    second, events = await lab.run(DIAMOND)

    assert states(second) == dict.fromkeys(DIAMOND, "cached")
    assert len(lab.fake.jobs) == jobs_after_first
    assert of_type(events, StepStarted) == []
    assert of_type(events, StepQueued) == []
    assert [e.step for e in of_type(events, StepCached)] == list(DIAMOND)
    for name in DIAMOND:
        assert second.steps[name].key == first.steps[name].key
        assert second.steps[name].output == first.steps[name].output
    summary = finished(events)
    assert (summary.ran, summary.cached) == (0, 4)
    assert summary.saved_s == pytest.approx(sum(s.duration_s for s in second.steps.values()))
    assert summary.saved_s >= 0.45  # gen + left + merge ran for at least 0.05 + 0.2 + 0.2 s


async def test_two_identical_steps_in_one_run_compute_their_key_once(lab: Lab) -> None:
    same = {"image": "work", "params": {"n": 9, "delay": 0.1}}

    result, events = await lab.run({"twin1": same, "twin2": same}, jobs=2)

    assert result.steps["twin1"].key == result.steps["twin2"].key
    assert states(result) == {"twin1": "done", "twin2": "cached"}
    assert lab.started() == ["twin1"]
    assert result.steps["twin2"].output == result.steps["twin1"].output
    assert [e.step for e in of_type(events, StepCached)] == ["twin2"]


async def test_a_twin_made_by_this_run_is_cached_at_once_while_a_step_reads_it(lab: Lab) -> None:
    """twin2 and twin3 wait for twin1 of this run; once it is made they are cached hits, even
    while `reader` holds the entry's shared lock reading it: no exclusive lock is waited for,
    nor said to be another run's."""
    same = {"image": "work", "params": {"n": 9, "delay": 0.1}}
    reader = {"image": "work", "inputs": ["twin1"], "params": {"delay": 0.5}}

    result, events = await lab.run(
        {"twin1": same, "twin2": same, "twin3": same, "reader": reader}, jobs=4
    )

    assert states(result) == {
        "twin1": "done",
        "twin2": "cached",
        "twin3": "cached",
        "reader": "done",
    }
    assert of_type(events, StepWaitingForLock) == []
    assert [e.waited_s for e in of_type(events, StepCached)] == [0.0, 0.0]
    assert lab.index("end", "reader") > len(lab.timeline) - 2  # ended last: cached ones went first


class QueueingRuntime(FakeRuntime):
    """A fake engine whose containers wait ``queue_s`` for a place (as in a Slurm queue)
    before they start."""

    queue_s = 0.4

    async def run(self, job: Any, *, on_log: Any, on_start: Any = None) -> Any:
        await anyio.sleep(self.queue_s)
        return await super().run(job, on_log=on_log, on_start=on_start)


async def test_a_steps_time_counts_from_its_containers_start_not_its_wait_in_a_queue(
    tmp_path: Path,
) -> None:
    lab = Lab(tmp_path, fake=QueueingRuntime())
    steps = {"a": {"image": "work", "params": {"delay": 0.1}}}

    result, events = await lab.run(steps)

    (done,) = of_type(events, StepFinished)
    entry = lab.cache.lookup(result.steps["a"].key)
    assert entry is not None
    assert result.steps["a"].duration_s == done.duration_s
    for seconds in (done.duration_s, entry.manifest.duration_s):
        assert 0.1 <= seconds < QueueingRuntime.queue_s, "the queue's 0.4 s are not the step's"
    manifest = entry.manifest
    assert manifest.finished_at - manifest.started_at == pytest.approx(
        timedelta(seconds=manifest.duration_s), abs=timedelta(milliseconds=1)
    )


CHAIN_WITH_SIDE = {
    "first": {"image": "work", "params": {"n": 1}},
    "middle": {"image": "work", "inputs": ["first"]},
    "last": {"image": "work", "inputs": ["middle"]},
    "side": {"image": "work", "params": {"n": 7}},
}


async def test_changing_a_parameter_reruns_that_step_and_everything_below_it(lab: Lab) -> None:
    before, _ = await lab.run(CHAIN_WITH_SIDE)
    changed = {**CHAIN_WITH_SIDE, "first": {"image": "work", "params": {"n": 2}}}

    after, _ = await lab.run(changed)

    assert states(after) == {"first": "done", "middle": "done", "last": "done", "side": "cached"}
    for name in ("first", "middle", "last"):
        assert after.steps[name].key != before.steps[name].key
    assert lab.started()[-3:] == ["first", "middle", "last"]
    assert after.steps["side"].key == before.steps["side"].key


async def test_force_reruns_a_step_and_its_downstream_only(lab: Lab) -> None:
    before, _ = await lab.run(CHAIN_WITH_SIDE)
    lab.timeline.clear()

    after, _ = await lab.run(CHAIN_WITH_SIDE, force=["middle"])

    assert states(after) == {
        "first": "cached",
        "middle": "done",
        "last": "done",
        "side": "cached",
    }
    assert lab.started() == ["middle", "last"]
    for name in CHAIN_WITH_SIDE:
        assert after.steps[name].key == before.steps[name].key
    assert lab.cache.lookup(after.steps["middle"].key) is not None


async def test_force_with_an_unknown_step_is_an_error_before_running(lab: Lab) -> None:
    with pytest.raises(ChainError, match="nope"):
        await lab.run(CHAIN_WITH_SIDE, force=["nope"])
    assert lab.fake.jobs == []


async def test_no_cache_reruns_every_step(lab: Lab) -> None:
    await lab.run(CHAIN_WITH_SIDE)

    result, _ = await lab.run(CHAIN_WITH_SIDE, no_cache=True)

    assert states(result) == dict.fromkeys(CHAIN_WITH_SIDE, "done")
    assert len(lab.fake.jobs) == 2 * len(CHAIN_WITH_SIDE)
    third, _ = await lab.run(CHAIN_WITH_SIDE)  # the re-run results are stored again
    assert states(third) == dict.fromkeys(CHAIN_WITH_SIDE, "cached")


async def test_a_failed_step_leaves_nothing_in_the_cache(lab: Lab) -> None:
    steps = {"good": {"image": "work"}, "bad": {"image": "work", "params": {"exit": 1}}}
    first, _ = await lab.run(steps, keep_going=True)
    assert [entry.key for entry in lab.cache.entries()] == [first.steps["good"].key]
    assert list((lab.cache_dir / "tmp").iterdir()) == []

    second, _ = await lab.run(steps, keep_going=True)

    assert states(second) == {"good": "cached", "bad": "failed"}
    started = [job.labels[f"{LABEL_PREFIX}.step"] for job in lab.fake.jobs]
    assert sorted(started[:2]) == ["bad", "good"]  # the first run starts both, in either order
    assert started[2:] == ["bad"]  # the second runs only the failed step again


async def test_published_outputs_are_writable_by_their_owner_only(lab: Lab) -> None:
    result, _ = await lab.run({"a": {"image": "work"}})

    output = result.steps["a"].output
    assert output is not None
    assert output.is_relative_to(lab.cache_dir / "entries")
    for path in [output, *output.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0, path


async def test_a_join_step_gets_a_copy_of_each_input_in_a_subfolder_named_after_it(
    lab: Lab,
) -> None:
    seen: dict[str, str] = {}

    async def join(container: FakeContainer) -> int:
        work = container.path("/work")
        seen.update(tree(work))
        (work / "a" / "data.txt").write_text("changed by the join step\n")
        (work / "summary.txt").write_text("joined\n")
        return 0

    lab.fake.add_image("joiner", JOIN_YML, join)
    steps = {
        "a": {"image": "work", "params": {"n": 1}},
        "b": {"image": "work", "params": {"n": 2}},
        "both": {"image": "joiner", "inputs": ["a", "b"]},
    }
    await lab.run({"a": steps["a"]})  # "a" comes from the cache in the next run

    result, _ = await lab.run(steps)

    assert states(result) == {"a": "cached", "b": "done", "both": "done"}
    assert seen == {"a/data.txt": "a 1\n", "b/data.txt": "b 2\n"}
    a_output = result.steps["a"].output
    both_output = result.steps["both"].output
    assert a_output is not None
    assert both_output is not None
    assert tree(a_output) == {"data.txt": "a 1\n"}
    assert tree(both_output) == {
        "a/data.txt": "changed by the join step\n",
        "b/data.txt": "b 2\n",
        "summary.txt": "joined\n",
    }
    assert verify(lab.cache) == []


async def test_a_join_step_with_one_input_starts_from_a_flat_copy_of_it(lab: Lab) -> None:
    result, _ = await lab.run(
        {"a": {"image": "work", "params": {"n": 5}}, "j": {"image": "join", "inputs": ["a"]}}
    )

    a_output, j_output = result.steps["a"].output, result.steps["j"].output
    assert a_output is not None
    assert j_output is not None
    assert tree(a_output) == {"data.txt": "a 5\n"}
    assert tree(j_output) == {"data.txt": "j 0\n"}  # the join step overwrote its copy


async def test_a_split_step_sees_several_inputs_under_input_slash_name(lab: Lab) -> None:
    mounts: dict[str, tuple[str, bool]] = {}

    async def look(container: FakeContainer) -> int:
        for mount in container.job.mounts:
            if mount.target.startswith("/input"):
                mounts[mount.target] = (tree(mount.source)["data.txt"], mount.read_only)
        return 0

    lab.program("look", look)
    steps = {
        "a": {"image": "work", "params": {"n": 1}},
        "b": {"image": "work", "params": {"n": 2}},
        "c": {"image": "look", "inputs": ["a", "b"]},
    }

    await lab.run(steps)

    assert mounts == {"/input/a": ("a 1\n", True), "/input/b": ("b 2\n", True)}


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


async def test_the_events_of_a_two_step_chain(lab: Lab) -> None:
    result, events = await lab.run(
        {"one": {"image": "work"}, "two": {"image": "work", "inputs": ["one"]}}
    )

    assert [(e.kind, getattr(e, "step", None)) for e in events] == [
        ("run_started", None),
        ("step_queued", "one"),
        ("step_queued", "two"),
        ("step_started", "one"),
        ("log_line", "one"),
        ("step_publishing", "one"),
        ("step_finished", "one"),
        ("step_started", "two"),
        ("log_line", "two"),
        ("step_publishing", "two"),
        ("step_finished", "two"),
        ("run_finished", None),
    ]
    started = events[0]
    assert isinstance(started, RunStarted)
    assert started.steps == ["one", "two"]
    assert started.images == {"one": "work", "two": "work"}
    assert started.run_id == result.run_id == finished(events).run_id
    (line, _) = of_type(events, LogLine)
    assert (line.stream, line.text) == ("stdout", "one wrote n=0")
    assert [e.key for e in of_type(events, StepFinished)] == [
        result.steps["one"].key,
        result.steps["two"].key,
    ]
    assert [e.container_id for e in of_type(events, StepStarted)] == [
        f"fake{0:08d}",
        f"fake{1:08d}",
    ]


async def test_open_run_events_end_after_run_finished(lab: Lab) -> None:
    seen: list[Event] = []
    async with api.open_run(
        lab.chain(DIAMOND), runtime=lab.fake, cache_dir=lab.cache_dir, jobs=2
    ) as run:
        async for event in run.events():
            seen.append(event)

    assert isinstance(seen[0], RunStarted)
    assert isinstance(seen[-1], RunFinished)
    assert seen[-1].ok
    assert run.result.ok
    assert run.plan is not None
    assert run.plan.order == list(DIAMOND)


async def test_a_log_flood_is_saved_completely_while_the_screen_skips_lines(lab: Lab) -> None:
    async def chatty(container: FakeContainer) -> int:
        for number in range(5000):
            container.log(f"line {number}", "stderr" if number % 2 else "stdout")
        return 0

    lab.program("chatty", chatty)
    delivered = 0
    async with api.open_run(
        lab.chain({"flood": {"image": "chatty"}}), runtime=lab.fake, cache_dir=lab.cache_dir
    ) as run:
        subscription = run.events(max_log_lines=10)
        async for event in subscription:
            delivered += isinstance(event, LogLine)

    assert subscription.dropped_log_lines > 0
    assert delivered + subscription.dropped_log_lines == 5000
    log_path = run.result.steps["flood"].log_path
    assert log_path is not None
    assert log_content(log_path).decode().splitlines() == [f"line {n}" for n in range(5000)]


async def test_a_run_without_listeners_still_saves_logs(lab: Lab) -> None:
    result = await api.run(
        lab.chain({"a": {"image": "work"}}), runtime=lab.fake, cache_dir=lab.cache_dir
    )

    log_path = result.steps["a"].log_path
    assert log_path is not None
    assert log_content(log_path) == b"a wrote n=0\n"


# --------------------------------------------------------------------------------------------
# Errors found before any container starts
# --------------------------------------------------------------------------------------------


async def test_an_unknown_parameter_is_reported_before_anything_runs(lab: Lab) -> None:
    steps = {"ok": {"image": "work"}, "typo": {"image": "work", "params": {"dealy": 1}}}

    with pytest.raises(ParameterError) as info:
        await lab.run(steps)

    message = str(info.value)
    assert "step 'typo'" in message
    assert "'dealy'" in message
    assert "did you mean 'delay'" in message
    assert lab.fake.jobs == []


async def test_every_bad_step_is_reported_in_one_error(lab: Lab) -> None:
    steps = {
        "first": {"image": "work", "params": {"n": "three"}},
        "fine": {"image": "work"},
        "second": {"image": "work", "params": {"colour": "red"}},
    }

    with pytest.raises(ChainError) as info:
        await lab.run(steps)

    message = str(info.value)
    assert "2 problems" in message
    assert "step 'first'" in message
    assert "step 'second'" in message
    assert "'colour'" in message
    assert lab.fake.jobs == []


async def test_a_missing_image_is_an_image_error(lab: Lab) -> None:
    with pytest.raises(ImageError, match="example/absent"):
        await lab.run({"a": {"image": "example/absent"}})
    assert lab.fake.jobs == []


async def test_an_image_without_kliko_executable_is_a_spec_error(lab: Lab) -> None:
    lab.fake.add_image("not-kliko", SPLIT_YML, has_kliko=False)

    with pytest.raises(SpecError, match="/kliko executable"):
        await lab.run({"a": {"image": "not-kliko"}})
    assert lab.fake.jobs == []


async def test_run_chain_pairs_form_a_linear_chain(lab: Lab) -> None:
    chain = chain_from_pairs([("work", {"n": 4}), ("work", {"delay": 0.01})])

    result, _ = await lab.run(chain)

    assert list(result.steps) == ["work", "work-2"]
    assert lab.index("end", "work") < lab.index("start", "work-2")
    output = result.steps["work-2"].output
    assert output is not None
    assert (output / "data.txt").read_text() == "work-2 0\n"


# --------------------------------------------------------------------------------------------
# Leftovers of killed runs
# --------------------------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_containers_of_dead_kliko_async_processes_are_removed_at_start(lab: Lab) -> None:
    host = socket.gethostname()
    managed = {f"{LABEL_PREFIX}.managed": "1"}
    lab.fake.leftovers = {
        "dead": {**managed, f"{LABEL_PREFIX}.owner": f"{host}:{dead_pid()}"},
        "alive": {**managed, f"{LABEL_PREFIX}.owner": f"{host}:{os.getpid()}"},
        "other-host": {**managed, f"{LABEL_PREFIX}.owner": f"elsewhere.example:{dead_pid()}"},
        "not-ours": {f"{LABEL_PREFIX}.owner": f"{host}:{dead_pid()}"},
    }

    await lab.run({"a": {"image": "work"}})

    assert sorted(lab.fake.leftovers) == ["alive", "not-ours", "other-host"]


async def test_containers_carry_labels_that_find_them_later(lab: Lab) -> None:
    result, _ = await lab.run({"a": {"image": "work"}})

    (job,) = lab.fake.jobs
    assert job.labels[f"{LABEL_PREFIX}.run"] == result.run_id
    assert job.labels[f"{LABEL_PREFIX}.step"] == "a"
    assert job.labels[f"{LABEL_PREFIX}.key"] == result.steps["a"].key
    assert job.labels[f"{LABEL_PREFIX}.owner"] == f"{socket.gethostname()}:{os.getpid()}"
    assert job.user == f"{os.getuid()}:{os.getgid()}"


# --------------------------------------------------------------------------------------------
# A large DAG
# --------------------------------------------------------------------------------------------


async def test_a_random_dag_of_2000_steps_runs_in_dependency_order(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Durability is not under test here, and 14,000 fsyncs would dominate the run time.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    rng = random.Random(20240601)
    steps: dict[str, Any] = {}
    for number in range(2000):
        earlier = list(steps)
        inputs = rng.sample(earlier, k=min(len(earlier), rng.randint(0, 3)))
        steps[f"s{number:04d}"] = {"image": "work", "params": {"n": number}, "inputs": inputs}
    order = list(steps)
    rng.shuffle(order)  # the file order need not be a valid execution order
    chain = lab.chain({name: steps[name] for name in order})

    result, events = await lab.run(chain, jobs=16)

    assert result.count("done") == 2000
    assert len(lab.fake.jobs) == 2000
    assert finished(events).ok
    start = {step: i for i, (what, step) in enumerate(lab.timeline) if what == "start"}
    end = {step: i for i, (what, step) in enumerate(lab.timeline) if what == "end"}
    for name, spec in steps.items():
        for source in spec["inputs"]:
            assert end[source] < start[name], (source, name)


class QueuedRuntime(FakeRuntime):
    """Containers wait ``queued`` seconds before they start, as Slurm jobs wait for a node."""

    def __init__(self, queued: float) -> None:
        super().__init__()
        self.queued = queued

    async def run(self, job: Any, *, on_log: Any, on_start: Any = None) -> Any:
        await anyio.sleep(self.queued)  # pending: no container yet
        return await super().run(job, on_log=on_log, on_start=on_start)


@pytest.mark.parametrize(("delay", "timed_out"), [(0.05, False), (30, True)])
async def test_a_timeout_counts_from_the_start_not_the_wait_in_the_queue(
    tmp_path: Path, delay: float, timed_out: bool
) -> None:
    """A step with a 1 s timeout that waits 2 s for a node and then runs briefly succeeds (it
    was once stopped while pending); one that runs past 1 s after its start is stopped."""
    runtime = QueuedRuntime(queued=2.0)

    async def work(container: FakeContainer) -> int:
        await anyio.sleep(delay)
        return 0

    runtime.add_image("work", "schema_version: 3\nio: split\nsections: []\n", work)
    chain = parse_chain(
        {"steps": {"s": {"image": "work", "timeout": 1}}},
        source=str(tmp_path / "chain.yaml"),
        base_dir=tmp_path,
    )
    with anyio.fail_after(20):
        result = await api.run(chain, runtime=runtime, cache_dir=tmp_path / "cache")
    step = result.steps["s"]
    if timed_out:
        assert step.state == "failed" and "timed out after 1 s" in (step.reason or "")
    else:
        assert step.state == "done", step.reason
