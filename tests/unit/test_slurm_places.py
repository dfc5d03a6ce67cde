"""The run's places in Slurm's queue (``--slurm-max-jobs``): never more than the limit, and
places that free up while jobs wait go on together (so their expansions make one array)."""

from __future__ import annotations

import random

import anyio

from kliko_async.runtime.slurm.places import Places


async def filled(total: int, hold_s: float) -> Places:
    """Places of which every one is taken."""
    places = Places(total, hold_s=hold_s)
    for _ in range(total):
        await places.acquire()
    return places


async def take_one(places: Places, took: list[float], gathers: bool = True) -> None:
    """Wait for a place; note when it came."""
    await places.acquire(gathers)
    took.append(anyio.current_time())


def test_the_first_jobs_take_their_places_at_once_and_no_more_than_the_limit() -> None:
    async def main() -> None:
        places = Places(4, hold_s=10)
        took: list[int] = []

        async def job(n: int) -> None:
            async with places.take():
                took.append(n)
                await anyio.sleep(60)

        with anyio.move_on_after(0.2):
            async with anyio.create_task_group() as tg:
                for n in range(6):
                    tg.start_soon(job, n)
        assert took == [0, 1, 2, 3], "four places: four jobs, the first to ask"

    anyio.run(main)


def test_a_place_that_frees_up_while_jobs_wait_is_held_until_a_batch_is_free() -> None:
    async def main() -> None:
        places = await filled(8, hold_s=10)
        assert places.batch == 4  # half the limit
        took: list[float] = []
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(take_one, places, took)
            await anyio.sleep(0.05)
            start = anyio.current_time()
            for _ in range(3):
                places.release()
                await anyio.sleep(0.1)
            assert took == [], "places went on before a batch was free"
            places.release()  # a batch: all four go on together, at once
            await anyio.sleep(0.05)
            assert len(took) == 4 and all(t - start < 0.5 for t in took)
            assert places.in_use == 8
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_a_held_place_goes_on_alone_after_the_hold() -> None:
    async def main() -> None:
        places = await filled(8, hold_s=0.3)
        took: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(take_one, places, took)
            await anyio.sleep(0.05)
            freed = anyio.current_time()
            places.release()
        (at,) = took
        assert 0.25 <= at - freed < 1.0, f"handed on after {at - freed:.2f} s"

    anyio.run(main)


def test_a_place_that_frees_up_with_no_one_waiting_is_taken_at_once_later() -> None:
    async def main() -> None:
        places = Places(2, hold_s=10)
        async with places.take():
            pass
        with anyio.fail_after(1):
            async with places.take(), places.take():
                assert places.in_use == 2

    anyio.run(main)


def test_many_jobs_of_random_lengths_never_hold_more_places_than_the_limit_and_all_run() -> None:
    rng = random.Random(7)
    lengths = [rng.uniform(0, 0.05) for _ in range(60)]

    async def main() -> None:
        places = Places(8, hold_s=0.05)
        most = [0]
        ran: list[int] = []

        async def job(n: int) -> None:
            async with places.take():
                most[0] = max(most[0], places.in_use)
                await anyio.sleep(lengths[n])
                ran.append(n)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for n in range(60):
                    tg.start_soon(job, n)
        assert sorted(ran) == list(range(60)) and most[0] == 8 and places.in_use == 0

    anyio.run(main)


def test_a_waiter_cancelled_while_places_are_held_takes_none() -> None:
    async def main() -> None:
        places = await filled(4, hold_s=10)
        with anyio.move_on_after(0.1):
            await places.acquire()
        places.release()
        assert places.in_use == 3

    anyio.run(main)


def test_a_job_that_shares_no_array_takes_a_held_place_at_once() -> None:
    async def main() -> None:
        places = await filled(8, hold_s=0.5)
        expansion: list[float] = []
        lone: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(take_one, places, expansion)
            await anyio.sleep(0.05)
            places.release()  # held for the expansion, which waits for more to free up
            await anyio.sleep(0.05)
            tg.start_soon(take_one, places, lone, False)
            await anyio.sleep(0.05)
            assert lone and not expansion, "the lone step waited on a place held for an array"
            places.release()
        assert len(expansion) == 1 and lone[0] < expansion[0]

    anyio.run(main)
