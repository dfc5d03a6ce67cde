"""What the machine can give steps at once (CPUs, memory, GPUs), shared by the running steps."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel

from kliko_async.model.quantities import describe_size


def machine_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 1 << 62  # unknown: do not limit


def machine_gpus() -> int:
    """NVIDIA GPUs visible on this host (their /dev/nvidiaN devices); 0 when there are none."""
    return sum(1 for d in Path("/dev").glob("nvidia[0-9]*") if d.name[6:].isdigit())


class ResourcePool:
    """Steps claim CPUs, memory and GPUs; a claim waits until enough is free, in line.

    A claim larger than the whole pool could never be granted: :meth:`beyond` says so, and
    planning refuses such a step before anything runs (see ``plan.check_resources``).
    """

    def __init__(
        self, cpus: float | None = None, memory: int | None = None, gpus: int | None = None
    ) -> None:
        self.cpus_total = float(cpus if cpus is not None else machine_cpus())
        self.memory_total = memory if memory is not None else machine_memory()
        self.gpus_total = gpus if gpus is not None else machine_gpus()
        self._cpus_free = self.cpus_total
        self._memory_free = self.memory_total
        self._gpus_free = self.gpus_total
        self._waiting: list[Claim] = []  # in the order the claims were made

    def beyond(self, cpus: float | None, memory: int | None) -> str | None:
        """Why a claim of ``cpus`` and ``memory`` can never be granted here; None if it can."""
        problems = []
        if cpus is not None and cpus > self.cpus_total:
            problems.append(f"{cpus:g} CPUs, but this machine has {self.cpus_total:g}")
        if memory is not None and memory > self.memory_total:
            problems.append(
                f"{describe_size(memory)} of memory, but this machine has "
                f"{describe_size(self.memory_total)}"
            )
        return ", and for ".join(problems) or None

    def claim(
        self, cpus: float | None, memory: int | None, gpus: int | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold ``cpus``, ``memory`` and ``gpus`` while the block runs; waits until they are free.

        Claims are granted in the order they were made, with backfilling: a later claim may go
        first only with what the earlier waiting claims do not need, so a large claim is never
        starved by a stream of small ones (what it needs is reserved as it comes free).
        """
        return self._held(cpus, memory, gpus)

    async def take(
        self, cpus: float | None, memory: int | None, gpus: int | None = None
    ) -> Claim | None:
        """Claim ``cpus``, ``memory`` and ``gpus`` as :meth:`claim` does, until :meth:`give`
        (which may come before the end of a block: a step gives its resources back when its
        container has ended, before its output is published). A step that asks for nothing
        (most do) gets None at once, without waiting or yielding."""
        want = (
            min(cpus or 0.0, self.cpus_total),
            min(memory or 0, self.memory_total),
            min(gpus or 0, self.gpus_total),  # none here: the engine will say so
        )
        if not any(want):
            return None
        waiter = Claim(*want)
        self._waiting.append(waiter)
        self._grant()
        try:
            await waiter.granted.wait()
        except BaseException:
            if waiter.granted.is_set():
                self.give(waiter)
            else:
                self._waiting.remove(waiter)
                self._grant()  # those behind it may fit now
            raise
        return waiter

    def give(self, claim: Claim | None) -> None:
        """Give back what :meth:`take` granted."""
        if claim is not None:
            self._release(claim)

    @asynccontextmanager
    async def _held(
        self, cpus: float | None, memory: int | None, gpus: int | None
    ) -> AsyncIterator[None]:
        claim = await self.take(cpus, memory, gpus)
        try:
            yield
        finally:
            self.give(claim)

    def _grant(self) -> None:
        """Grant the waiting claims in order; each one that does not fit reserves what it
        needs, so that only claims which leave it that much may pass it."""
        cpus, memory, gpus = self._cpus_free, self._memory_free, self._gpus_free
        for waiter in list(self._waiting):
            fits = waiter.cpus <= cpus and waiter.memory <= memory and waiter.gpus <= gpus
            cpus, memory, gpus = cpus - waiter.cpus, memory - waiter.memory, gpus - waiter.gpus
            if fits:
                self._waiting.remove(waiter)
                self._cpus_free -= waiter.cpus
                self._memory_free -= waiter.memory
                self._gpus_free -= waiter.gpus
                waiter.granted.set()

    def _release(self, claim: Claim) -> None:
        self._cpus_free += claim.cpus
        self._memory_free += claim.memory
        self._gpus_free += claim.gpus
        self._grant()


@dataclass(eq=False)
class Claim:
    """A claim waiting in line, or granted once ``granted`` is set."""

    cpus: float
    memory: int
    gpus: int
    granted: anyio.Event = field(default_factory=anyio.Event)


class JobSlots:
    """At most ``total`` steps' containers at once (``--jobs``), granted in the order asked.

    As anyio's ``CapacityLimiter`` does, but for a tenth of its cost (no borrower set, no
    current task looked up, one pass through the loop).
    """

    __slots__ = ("_waiting", "free")

    def __init__(self, total: int) -> None:
        self.free = total
        self._waiting: deque[anyio.Event] = deque()

    async def take(self) -> None:
        """Take a slot, waiting in line for one; cancellable while it waits."""
        if self.free > 0 and not self._waiting:
            self.free -= 1
            try:
                # Once through the loop with it: the other ready steps find the slots taken
                # and wait for one, out of the loop's way. Without it, every ready step of a
                # wide DAG stays ready, and each pass of the loop runs a step of every one of
                # them (half a second, at 2,500) before the events are delivered again.
                await anyio.lowlevel.checkpoint()
            except BaseException:
                self.give()
                raise
            return
        handed = anyio.Event()
        self._waiting.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():  # handed over as it was cancelled: on to the next in line
                self.give()
            else:
                self._waiting.remove(handed)
            raise

    def give(self) -> None:
        """Give a taken slot back: to the first in line, if any."""
        if self._waiting:
            self._waiting.popleft().set()
        else:
            self.free += 1
