"""Per-key locks of a cache folder: ``flock`` on ``locks/<key>.lock``.

``flock`` locks belong to open file descriptions and every hold opens the lock file anew, so two
tasks of one process exclude each other just as two processes do. Exclusive while computing a
key; shared while reading its entry as an input, which keeps ``gc`` (and a forced re-run
elsewhere) from removing it meanwhile.

``cache gc`` deletes lock files that nobody holds (:meth:`KeyLocks.remove_unheld`), under an
exclusive lock. A run that opened the file before it was deleted may still get that lock on the
deleted file, while another run locks a new file of the same name: so every holder checks, once
locked, that its file is still the one at the path, and starts again if not.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from kliko_async.errors import CacheError, cache_os_error, os_error_text

__all__ = ["KeyLocks"]


class KeyLocks:
    """The lock files of one cache folder."""

    def __init__(self, folder: Path, cache_root: Path) -> None:
        self.folder = folder
        self._root = cache_root

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.lock"

    def hold(
        self,
        key: str,
        *,
        shared: bool = False,
        poll: float = 0.05,
        on_wait: Callable[[], None] | None = None,
        patience: float = 0.0,
    ) -> _Held:
        """Hold the lock of ``key``; waiting polls with ``anyio.sleep`` and can be cancelled.

        ``on_wait`` is called once, when the lock has been held by someone else for
        ``patience`` seconds (a lock free at once costs no timer)."""
        return _Held(self, key, shared, poll, on_wait, patience)

    @contextmanager
    def try_exclusive(self, key: str) -> Iterator[bool]:
        """Hold the lock of ``key`` exclusively if nobody holds it; whether that worked."""
        path = self.path(key)
        fd = self._open(path)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                if _same_file(fd, path):
                    break
                fd = self._reopen(fd, path)
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def remove_unheld(self) -> int:
        """Delete every lock file that no run holds; how many were deleted."""
        removed = 0
        try:
            names = sorted(os.listdir(self.folder))
        except (FileNotFoundError, NotADirectoryError):  # no cache there (yet)
            return 0
        for name in names:
            if not name.endswith(".lock"):
                continue
            path = self.folder / name
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise cache_os_error(
                    "could not open the lock file", err, where=str(path), root=self._root
                ) from err
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a run holds it
                if _same_file(fd, path):
                    path.unlink()
                    removed += 1
            finally:
                os.close(fd)  # releases the lock
        return removed

    def _reopen(self, fd: int, path: Path) -> int:
        """The file at ``path`` opened, then ``fd`` (an older file of that path) closed: if the
        open fails, ``fd`` is still open, for the caller to close once."""
        fresh = self._open(path)
        os.close(fd)
        return fresh

    def _open(self, path: Path) -> int:
        try:
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # the first lock, or removed by hand: make the folder
                path.parent.mkdir(parents=True, exist_ok=True)
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise cache_os_error(
                "could not open the lock file", err, where=str(path), root=self._root
            ) from err


class _Held:
    """One hold of a key's lock (:meth:`KeyLocks.hold`): an ``async with`` of its own, not a
    generator, since every step takes one or more (its key, and each input's, shared)."""

    __slots__ = ("_fd", "_key", "_locks", "_on_wait", "_patience", "_poll", "_shared")

    def __init__(
        self,
        locks: KeyLocks,
        key: str,
        shared: bool,
        poll: float,
        on_wait: Callable[[], None] | None,
        patience: float,
    ) -> None:
        self._locks = locks
        self._key = key
        self._shared = shared
        self._poll = poll
        self._on_wait = on_wait
        self._patience = patience
        self._fd = -1

    async def __aenter__(self) -> None:
        locks = self._locks
        path = locks.path(self._key)
        fd = locks._open(path)
        mode = fcntl.LOCK_SH if self._shared else fcntl.LOCK_EX
        on_wait = self._on_wait
        busy_since: float | None = None
        try:
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                except BlockingIOError:
                    if on_wait is not None:
                        now = time.monotonic()
                        busy_since = now if busy_since is None else busy_since
                        if now - busy_since >= self._patience:
                            on_wait()
                            on_wait = None
                    await anyio.sleep(self._poll)
                    continue
                except OSError as err:
                    raise CacheError(
                        f"could not lock the lock file ({os_error_text(err)})",
                        where=str(path),
                        hint="Put the cache on a local filesystem that supports flock.",
                    ) from err
                if _same_file(fd, path):
                    break
                fd = locks._reopen(fd, path)  # gc deleted the file meanwhile: lock the new one
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    async def __aexit__(self, *exc_info: object) -> None:
        fd, self._fd = self._fd, -1
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path`` (not deleted or replaced)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)
