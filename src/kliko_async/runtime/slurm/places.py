"""The run's places in Slurm's queue (``--slurm-max-jobs``), handed on in batches.

At most ``total`` of a run's jobs are pending or running at once. A place that frees up while
expansions of a matrix step wait for one is not handed on at once: it is held until a batch
of places is free (half of ``total``) or ``hold_s`` has passed, and then the places go on
together: at most one array a second, sooner when half the queue is free. (A job that can
share no array takes a free place at once, held or not.) Jobs that take their places
together reach the submitter together, where the expansions of one matrix step go in as one
job array (``arrays.py``): a 40-way matrix under a limit of 8 went in as up to 22 ``sbatch``
calls when each place was handed on alone as it freed up (the jobs end one by one). A job
lasts minutes where a place is held a second: the queue stays nearly full, and the site is
asked for far fewer submissions.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator

import anyio

HOLD_SECONDS = 1.0
"""The longest a freed place is held for others to free up beside it."""


class Places:
    """``async with places.take(gathers):`` holds one of ``total`` places while its job is in
    the queue; ``gathers``: the job may share an array with others waiting (a matrix step's
    expansion), so it waits with them for a batch of freed places."""

    def __init__(self, total: int, *, hold_s: float = HOLD_SECONDS) -> None:
        self.total = total
        self.batch = max(1, math.ceil(total / 2))
        """How many freed places are handed on together without waiting out ``hold_s``."""
        self._hold_s = hold_s
        self._free = total
        self._gatherers = 0
        """How many expansions wait for a place: only for them are freed places held."""
        self._held_since: float | None = None
        """When the places free now began to be held (None: free ones may be taken)."""
        self._changed = anyio.Event()

    @property
    def in_use(self) -> int:
        return self.total - self._free

    @contextlib.asynccontextmanager
    async def take(self, gathers: bool = True) -> AsyncIterator[None]:
        await self.acquire(gathers)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, gathers: bool = True) -> None:
        """Take a place (give it back with :meth:`release`)."""
        self._gatherers += gathers
        try:
            while not self._may_take(gathers):
                changed = self._changed
                if self._held_since is None or not gathers:
                    await changed.wait()
                else:
                    with anyio.move_on_after(self._held_since + self._hold_s - self._now()):
                        await changed.wait()
        finally:
            self._gatherers -= gathers
        self._free -= 1
        if not self._free:
            self._held_since = None

    def release(self) -> None:
        self._free += 1
        if self._free == 1 and self._gatherers:  # the first to free up while expansions wait
            self._held_since = self._now()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _may_take(self, gathers: bool) -> bool:
        if self._free == 0:
            return False
        if self._held_since is not None and gathers:
            if self._free < self.batch and self._now() < self._held_since + self._hold_s:
                return False
            self._held_since = None  # hand on every free place, to whoever waits now
            self._wake()
        return True

    @staticmethod
    def _now() -> float:
        return anyio.current_time()
