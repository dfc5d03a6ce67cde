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
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation (CPython's default: 700);
the older generations follow it at their own (unchanged) ratios."""

_lock = threading.Lock()  # YAML is read in worker threads too
_tuned = 0
_saved: tuple[int, int, int] | None = None
_paused = 0
_was_enabled = True


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect at most every :data:`YOUNG_THRESHOLD` allocations while in this block."""
    global _tuned, _saved
    with _lock:
        if _tuned == 0:
            _saved = gc.get_threshold()
            young, *older = _saved
            gc.set_threshold(max(young, YOUNG_THRESHOLD), *older)
        _tuned += 1
    try:
        yield
    finally:
        with _lock:
            _tuned -= 1
            if _tuned == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection while in this block (one bulk load of acyclic objects)."""
    global _paused, _was_enabled
    with _lock:
        if _paused == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _lock:
            _paused -= 1
            if _paused == 0 and _was_enabled:
                gc.enable()
