"""How often Python's cyclic garbage collector runs while a chain is read, planned and run.

A big chain is millions of long-lived objects (YAML nodes, models, the plan, results). With
CPython's default thresholds the collector goes over all of them again each time they grew by
a quarter: 10,000 steps run on the fake runtime spent 1.7 of 5.4 s in it, a 100,000-step dry
run 14 of 25 s, and Ctrl-C waited for a full collection under way (up to 2 s) before it was
answered. Almost nothing here is cyclic garbage (the peak memory was the same without the
collector), so it runs less often while kliko-async works, and not at all while a YAML
document is composed. Both are process-wide settings: they are put back as they were when the
outermost user is done (nesting and concurrent runs in one process count).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Generic, TypeVar

T = TypeVar("T")

YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation (CPython's default: 700);
the older generations follow it at their own (unchanged) ratios."""


class _Setting(Generic[T]):
    """A process-wide setting changed while anyone uses it: ``change`` when the first user
    comes (it returns what to put back), ``restore`` with that when the last one leaves."""

    def __init__(self, change: Callable[[], T], restore: Callable[[T], None]) -> None:
        self._change = change
        self._restore = restore
        self._lock = threading.Lock()  # YAML is read in worker threads too
        self._users = 0
        self._saved: Any = None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = self._change()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._restore(self._saved)


def _raise_young_threshold() -> tuple[int, int, int]:
    saved = gc.get_threshold()
    young, *older = saved
    gc.set_threshold(max(young, YOUNG_THRESHOLD), *older)
    return saved


def _disable() -> bool:
    was_enabled = gc.isenabled()
    gc.disable()
    return was_enabled


def _enable_if(was_enabled: bool) -> None:
    if was_enabled:
        gc.enable()


_fewer = _Setting(_raise_young_threshold, lambda saved: gc.set_threshold(*saved))
_paused = _Setting(_disable, _enable_if)


def fewer_collections() -> AbstractContextManager[None]:
    """Collect at most every :data:`YOUNG_THRESHOLD` allocations while in this block."""
    return _fewer.held()


def collector_paused() -> AbstractContextManager[None]:
    """No automatic collection while in this block (one bulk load of acyclic objects)."""
    return _paused.held()
