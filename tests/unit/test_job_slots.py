"""The scheduler's job slots: granted in the order asked, never lost to a cancelled waiter."""

from __future__ import annotations

import anyio
import pytest

from kliko_async.engine.resources import JobSlots

pytestmark = pytest.mark.anyio


async def holder(slots: JobSlots, name: str, got: list[str], release: anyio.Event) -> None:
    async with slots:
        got.append(name)
        await release.wait()


async def test_waiting_steps_get_the_slot_in_the_order_they_asked() -> None:
    slots, got = JobSlots(1), []
    releases = {name: anyio.Event() for name in "abcd"}
    async with anyio.create_task_group() as tg:
        for name in "abcd":
            tg.start_soon(holder, slots, name, got, releases[name])
            await anyio.wait_all_tasks_blocked()
        assert got == ["a"]
        for name in "abc":
            releases[name].set()
            await anyio.wait_all_tasks_blocked()
        assert got == ["a", "b", "c", "d"]
        releases["d"].set()


async def test_a_waiter_cancelled_before_its_turn_leaves_the_line() -> None:
    slots, got = JobSlots(1), []
    first, second = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(holder, slots, "first", got, first)
        await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as gone:
            gone.cancel()
            async with slots:  # cancelled while it waits
                got.append("never")
        tg.start_soon(holder, slots, "second", got, second)
        await anyio.wait_all_tasks_blocked()
        first.set()
        await anyio.wait_all_tasks_blocked()
        assert got == ["first", "second"]
        second.set()
    with anyio.fail_after(1):  # the one slot is free again, not lost
        async with slots:
            pass


async def test_a_slot_given_to_a_waiter_being_cancelled_goes_to_the_next_one() -> None:
    slots, got = JobSlots(1), []
    later = anyio.Event()
    async with anyio.create_task_group() as tg:
        await slots.__aenter__()  # held here
        scope = anyio.CancelScope()

        async def cancelled_waiter() -> None:
            with scope:
                async with slots:
                    got.append("cancelled one")

        tg.start_soon(cancelled_waiter)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(holder, slots, "next", got, later)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()  # the first waiter is being cancelled ...
        await slots.__aexit__(None, None, None)  # ... as the slot goes to it
        await anyio.wait_all_tasks_blocked()
        assert got == ["next"]
        later.set()
    with anyio.fail_after(1):
        async with slots:
            pass
