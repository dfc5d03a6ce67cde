"""How long steps took before: a small index, ``durations.json``, for a run's ETA.

One JSON object ``{step: {image: seconds}}``: the latest duration of each step name and image
reference that finished in this cache folder. Runs add theirs at their end (read, merge, replace
under ``durations.lock``); a run reads it once at its start, so the ETA costs the same with ten
entries in the cache or a hundred thousand. A cache folder made before the index existed gets
it built once from its manifests. It is a hint: a lost update only costs an ETA.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from kliko_async.cache.store import Cache

__all__ = [
    "DURATIONS",
    "StepImage",
    "forget_durations_but",
    "past_durations_of",
    "record_durations",
]

DURATIONS = "durations.json"
_LOCK = "durations.lock"

StepImage = tuple[str, str]
"""A step's name and its image reference, as the ETA matches earlier runs."""


def past_durations_of(cache: Cache, wanted: Iterable[StepImage]) -> dict[StepImage, float]:
    """The latest known duration of each of ``wanted`` that ran in ``cache`` before. Blocking."""
    wanted = set(wanted)
    if not wanted:
        return {}
    index = _read(cache.root)
    if index is None:  # a cache folder from before the index: built once from the manifests
        index = {}
        latest: dict[StepImage, tuple[str, float]] = {}
        for entry in cache.entries():
            m = entry.manifest
            pair, finished = (m.step, m.image), m.finished_at.isoformat()
            if pair not in latest or finished > latest[pair][0]:
                latest[pair] = (finished, m.duration_s)
        for (step, image), (_, seconds) in latest.items():
            index.setdefault(step, {})[image] = seconds
        with contextlib.suppress(OSError):  # what a run recorded meanwhile is newer: kept
            flat = {(s, i): d for s, by in index.items() for i, d in by.items()}
            _merge(cache.root, flat, newer=False)
    found: dict[StepImage, float] = {}
    for step, image in wanted:
        known = index.get(step, {}).get(image)
        if known is not None:
            found[(step, image)] = known
    return found


def record_durations(cache: Cache, durations: Mapping[StepImage, float]) -> None:
    """Add the durations of the steps a run finished to the index. Blocking; never raises."""
    if durations:
        with contextlib.suppress(OSError):
            _merge(cache.root, durations)


def forget_durations_but(cache: Cache, keep: Iterable[StepImage]) -> int:
    """Drop from the index every step and image not in ``keep`` (those of the entries ``cache
    gc`` left); how many went. Every run reads and rewrites the whole index, which otherwise
    grows by every step name ever run (a sweep named by date: a megabyte a day). Blocking."""
    keep = set(keep)
    index = _read(cache.root)
    if not index:
        return 0
    gone = sum(1 for step, by in index.items() for image in by if (step, image) not in keep)
    if gone:
        with contextlib.suppress(OSError):
            _merge(cache.root, {}, keep=keep)
    return gone


def _read(root: Path) -> dict[str, dict[str, float]] | None:
    try:
        data = json.loads((root / DURATIONS).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # damaged: no ETA this time; the next run's merge writes a sound one
    if not isinstance(data, dict):
        return {}
    return {
        step: {i: float(d) for i, d in by.items() if isinstance(d, int | float)}
        for step, by in data.items()
        if isinstance(by, dict)
    }


def _merge(
    root: Path,
    durations: Mapping[StepImage, float],
    *,
    newer: bool = True,
    keep: set[StepImage] | None = None,
) -> None:
    """Add ``durations`` to the index (replacing what it held only if ``newer``), keeping only
    the steps and images in ``keep`` of what it held, if given."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        index = _read(root) or {}
        if keep is not None:
            index = {
                step: kept
                for step, by in index.items()
                if (kept := {i: d for i, d in by.items() if (step, i) in keep})
            }
        for (step, image), seconds in durations.items():
            by_image = index.setdefault(step, {})
            if newer or image not in by_image:
                by_image[image] = seconds
        fresh = root / f".{DURATIONS}.{os.getpid()}"
        fresh.write_text(json.dumps(index, separators=(",", ":")))
        os.replace(fresh, root / DURATIONS)
    finally:
        os.close(fd)
