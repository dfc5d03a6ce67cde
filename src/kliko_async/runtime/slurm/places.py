"""The run's places in Slurm's queue (``--slurm-max-jobs``), handed on in batches.

At most ``total`` of a run's jobs are pending or running at once. A place that frees up while
other jobs wait for one is not handed on at once: it is held until a batch of places is free
(a quarter of ``total``) or ``hold_s`` has passed, and then the places go on together. Jobs
that take their places together reach the submitter together, where the expansions of one
matrix step go in as one job array (``arrays.py``): a 40-way matrix under a limit of 8 went
in as 22 ``sbatch`` calls when each place was handed on alone as it freed up (the jobs end one
by one), against about 10 this way. A job lasts minutes where a place is held a second: the
queue stays nearly full, and the site is asked for far fewer submissions.
"""

from __future__ import annotations

import math
from types import TracebackType

import anyio

HOLD_SECONDS = 1.0
"""The longest a freed place is held for others to free up beside it."""


class Places:
    """``async with places:`` holds one of ``total`` places while its job is in the queue."""

    def __init__(self, total: int, *, hold_s: float = HOLD_SECONDS) -> None:
        self.total = total
        self.batch = max(1, math.ceil(total / 4))
        """How many freed places are handed on together without waiting out ``hold_s``."""
        self._hold_s = hold_s
        self._free = total
        self._waiting = 0
        self._held_since: float | None = None
        """When the places free now began to be held (None: free ones may be taken)."""
        self._changed = anyio.Event()

    @property
    def in_use(self) -> int:
        return self.total - self._free

    async def __aenter__(self) -> None:
        self._waiting += 1
        try:
            while not self._may_take():
                changed = self._changed
                if self._held_since is None:
                    await changed.wait()
                else:
                    with anyio.move_on_after(self._held_since + self._hold_s - self._now()):
                        await changed.wait()
        finally:
            self._waiting -= 1
        self._free -= 1

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        self._free += 1
        if self._free == 1 and self._waiting:  # the first to free up while others wait
            self._held_since = self._now()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _may_take(self) -> bool:
        if self._free == 0:
            return False
        if self._held_since is not None:
            if self._free < self.batch and self._now() < self._held_since + self._hold_s:
                return False
            self._held_since = None  # hand on every free place, to whoever waits now
            self._wake()
        return True

    @staticmethod
    def _now() -> float:
        return anyio.current_time()
