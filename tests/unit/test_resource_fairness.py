"""Resource claims are granted in line: a large claim is never starved by a stream of small
ones that keep overtaking it (what it needs is reserved as running steps free it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from test_scheduler import Lab, plan_and_schedule, states

from kliko_async.engine.resources import JobSlots, ResourcePool

pytestmark = pytest.mark.anyio


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def lane(name: str, length: int, first_n: int) -> dict[str, Any]:
    """``length`` steps one after the other, each claiming one CPU for a moment."""
    steps: dict[str, Any] = {}
    for i in range(1, length + 1):
        step: dict[str, Any] = {
            "image": "work",
            "params": {"n": first_n + i, "delay": 0.1},
            "resources": {"cpus": 1},
        }
        if i > 1:
            step["inputs"] = [f"{name}{i - 1}"]
        steps[f"{name}{i}"] = step
    return steps


async def test_a_large_claim_is_not_overtaken_forever_by_later_small_ones(lab: Lab) -> None:
    # Two lanes of one-CPU steps keep a two-CPU machine busy; "big" wants both CPUs and is
    # ready (after "ready") while the lanes' first steps run. Each lane step claims after it.
    steps = {
        **lane("a", 6, first_n=0),
        **lane("b", 6, first_n=10),
        "ready": {"image": "work", "params": {"n": 99}},
        "big": {
            "image": "work",
            "inputs": ["ready"],
            "params": {"n": 100, "delay": 0.1},
            "resources": {"cpus": 2},
        },
    }

    result, _ = await plan_and_schedule(lab, steps, jobs=8, pool=ResourcePool(cpus=2))

    assert set(states(result).values()) == {"done"}
    assert lab.index("start", "big") < lab.index("start", "a3")
    assert lab.index("start", "big") < lab.index("start", "b3")
    claimed, most = 0, 0  # CPUs held by running steps ("ready" claims none)
    for what, step in lab.timeline:
        cpus = {"big": 2, "ready": 0}.get(step, 1)
        claimed += cpus if what == "start" else -cpus
        most = max(most, claimed)
    assert most == 2, "and the machine's two CPUs are never overcommitted"


async def test_a_cancelled_waiting_claim_lets_those_behind_it_go() -> None:
    pool = ResourcePool(cpus=2)
    order: list[str] = []

    async def claim(
        name: str, cpus: float, hold: anyio.Event, scope: anyio.CancelScope | None = None
    ) -> None:
        with scope or anyio.CancelScope():
            async with pool.claim(cpus, None):
                order.append(name)
                await hold.wait()

    first_done, never = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(claim, "first", 1, first_done)
        await anyio.wait_all_tasks_blocked()
        big_scope = anyio.CancelScope()
        tg.start_soon(claim, "big", 2, never, big_scope)  # waits: one CPU is taken
        await anyio.wait_all_tasks_blocked()
        small_done = anyio.Event()
        tg.start_soon(claim, "small", 1, small_done)
        await anyio.wait_all_tasks_blocked()
        assert order == ["first"], "the small claim waits behind the large one"
        big_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert order == ["first", "small"], "once the large claim is gone, the small one goes"
        first_done.set()
        small_done.set()


async def test_job_slots_are_granted_in_order_and_a_cancelled_waiter_leaves_the_line() -> None:
    slots = JobSlots(2)
    order: list[str] = []
    release = anyio.Event()

    async def job(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await slots.take()
            try:
                order.append(name)
                await release.wait()
            finally:
                slots.give()

    scopes = {name: anyio.CancelScope() for name in ("a", "b", "c", "d", "e")}
    async with anyio.create_task_group() as tg:
        for name, scope in scopes.items():
            tg.start_soon(job, name, scope)
            await anyio.wait_all_tasks_blocked()
        assert order == ["a", "b"] and slots.free == 0, "two slots, taken in order"
        scopes["c"].cancel()  # c leaves the line
        await anyio.wait_all_tasks_blocked()
        scopes["a"].cancel()  # a gives its slot back: to d, the first still in line
        await anyio.wait_all_tasks_blocked()
        assert order == ["a", "b", "d"]
        release.set()
    assert order == ["a", "b", "d", "e"] and slots.free == 2, "every slot given back"
