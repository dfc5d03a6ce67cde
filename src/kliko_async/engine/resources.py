"""What the machine can give steps at once (CPUs, memory, GPUs), shared by the running steps."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

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
    """Steps claim CPUs and memory; a claim waits until enough is free.

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
        self._changed = anyio.Condition()

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

    @asynccontextmanager
    async def claim(
        self, cpus: float | None, memory: int | None, gpus: int | None = None
    ) -> AsyncIterator[None]:
        want_cpus = min(cpus or 0.0, self.cpus_total)
        want_memory = min(memory or 0, self.memory_total)
        want_gpus = min(gpus or 0, self.gpus_total)  # none here: the engine will say so
        if not want_cpus and not want_memory and not want_gpus:
            yield
            return
        async with self._changed:
            while (
                self._cpus_free < want_cpus
                or self._memory_free < want_memory
                or self._gpus_free < want_gpus
            ):
                await self._changed.wait()
            self._cpus_free -= want_cpus
            self._memory_free -= want_memory
            self._gpus_free -= want_gpus
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._changed:
                    self._cpus_free += want_cpus
                    self._memory_free += want_memory
                    self._gpus_free += want_gpus
                    self._changed.notify_all()
