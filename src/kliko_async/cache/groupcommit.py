"""Group commits: the steps of a run publish their entries together, one durability barrier
for every group, in one worker thread, instead of fsyncs and a thread of their own each.

Whoever publishes while no group is being committed commits everything waiting (the leader);
the others wait for the group that holds theirs. While a group is committed, the next one
gathers, so the groups grow with the load and a lone step waits for nobody.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import anyio

from kliko_async.cache.durable import remove_small_tree
from kliko_async.cache.entry import CacheEntry, Manifest, Staging
from kliko_async.cache.sealing import Sealed
from kliko_async.cache.store import Cache
from kliko_async.errors import CacheError

COMMIT_HERE_S = 0.001
"""A group commit (its barrier and renames) that took less than this, three times in a row in
the worker thread, is cheaper than the round trip to that thread (about 70 µs of the loop's
time, and the GIL passed to and fro): the next groups are committed in the event loop, until
one takes longer (a slow disk's barrier), after which the rest of the run commits in the thread.
On a disk whose barrier waits for writes (most), commits stay in the thread. Only groups sealed
in the loop already (small outputs) are committed there: hashing a big output takes seconds."""

FAST_COMMITS = 3
"""How many fast commits in a row (each under ``COMMIT_HERE_S``) move the next into the loop."""

SEAL_HERE_S = 0.005
"""Sealing a small staging folder in the event loop takes a fraction of a millisecond on a local
disk; once three in a row take longer than this (a network file system, a Slurm cluster's
shared one), the rest of the run seals in the worker thread, so that the loop is not held for
long again."""


class _Request:
    __slots__ = ("manifest", "outcome", "scratch", "sealed", "staging")

    def __init__(self, staging: Staging, manifest: Manifest, scratch: Path | None) -> None:
        self.staging = staging
        self.manifest = manifest
        self.scratch = scratch
        self.sealed: Sealed | None = None
        self.outcome: CacheEntry | CacheError | None = None


class GroupCommit:
    """Publishes staging folders into ``cache`` in groups (:meth:`Cache.publish_many`).

    :meth:`publish` returns once its entry is durable and renamed into place, as
    :meth:`Cache.publish` does. The names renamed into ``entries/`` become durable with the
    next group's barrier; :meth:`close` (after the last publish) makes the last ones durable.
    """

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self._waiting: list[_Request] = []
        self._committing: list[_Request] | None = None
        self._committed = anyio.Event()
        self._unsynced = False
        self.seal_here = True
        """Whether small staging folders are sealed in the event loop (until three in a row
        took longer than ``SEAL_HERE_S``)."""
        self._slow_seals = 0
        self._fast_commits = 0  # in a row, each faster than COMMIT_HERE_S
        self._commit_here_ended = False  # one commit in the loop was slow: never again

    async def publish(
        self, staging: Staging, manifest: Manifest, *, scratch: Path | None = None
    ) -> CacheEntry:
        """Publish ``staging`` with ``manifest``; raises what :meth:`Cache.publish` raises.

        ``scratch``, a folder inside the staging folder that is not part of the entry, is
        deleted first (in the same worker thread). Without one, a small staging folder is
        sealed here, before the group (:meth:`Cache.seal_small`).

        Cancelled while its group is being committed, it waits for the group to end (the
        entry may well be published by then); cancelled before, its staging folder is left
        to the caller (sealed already, if it was small)."""
        request = _Request(staging, manifest, scratch)
        if scratch is None and self.seal_here:  # small ones here: no GIL match with the thread
            began = time.perf_counter()
            request.sealed = self.cache.seal_small(staging, manifest)
            # Three slow ones in a row: a slow (network) file system, not a pause of the
            # garbage collector; off the loop from now on.
            slow = time.perf_counter() - began > SEAL_HERE_S
            self._slow_seals = self._slow_seals + 1 if slow else 0
            self.seal_here = self._slow_seals < 3
        self._waiting.append(request)
        try:
            while request.outcome is None:
                if self._committing is None:
                    await self._commit_waiting()
                else:
                    await self._committed.wait()
        except BaseException:
            if request in self._waiting:
                self._waiting.remove(request)
            elif request.outcome is None:
                with anyio.CancelScope(shield=True):  # the thread is sealing or renaming it
                    while request.outcome is None and self._committing is not None:
                        await self._committed.wait()
            raise
        if isinstance(request.outcome, CacheError):
            raise request.outcome
        return request.outcome

    async def close(self) -> None:
        """Make the last published names durable; shielded from cancellation."""
        if self._unsynced:
            self._unsynced = False
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.cache.sync)

    async def _commit_waiting(self) -> None:
        group, self._waiting = self._waiting, []
        self._committing = group
        try:
            if self._fast_commits >= FAST_COMMITS and all(r.sealed is not None for r in group):
                if self._commit(group) > COMMIT_HERE_S:  # fast no more: in the thread from now
                    self._commit_here_ended = True
            else:
                # Not abandoned on cancellation: the thread runs to its end, and its outcomes
                # are stored in the requests by the thread itself, so every waiter gets its own.
                await anyio.to_thread.run_sync(self._commit, group)
        finally:
            for request in group:
                if request.outcome is None:  # the thread failed before it got to this one
                    request.outcome = CacheError("could not publish its cache entry")
            self._committing = None
            self._committed.set()
            self._committed = anyio.Event()

    def _commit(self, group: list[_Request]) -> float:
        """Commit ``group``; the seconds it took (counted towards committing in the loop)."""
        began = time.perf_counter()
        for request in group:
            if request.scratch is not None:
                with contextlib.suppress(OSError):
                    remove_small_tree(request.scratch)
        outcomes = self.cache.publish_many([r.sealed or (r.staging, r.manifest) for r in group])
        self._unsynced = True
        for request, outcome in zip(group, outcomes, strict=True):
            request.outcome = outcome
        took = time.perf_counter() - began
        fast = took < COMMIT_HERE_S and not self._commit_here_ended
        self._fast_commits = self._fast_commits + 1 if fast else 0
        return took
