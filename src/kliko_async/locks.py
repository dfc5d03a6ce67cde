"""Per-key locks of a cache folder: ``flock`` on ``locks/<key>.lock``.

``flock`` locks belong to open file descriptions and every hold opens the lock file anew, so two
tasks of one process exclude each other just as two processes do. Exclusive while computing a
key; shared while reading its entry as an input, which keeps ``gc`` (and a forced re-run
elsewhere) from removing it meanwhile. Lock files are never deleted while a run may wait on
them: deleting one while another process waits on it would let two holders in.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio

from kliko_async.errors import CacheError, cache_hint, os_error_text

__all__ = ["KeyLocks"]


class KeyLocks:
    """The lock files of one cache folder."""

    def __init__(self, folder: Path, cache_root: Path) -> None:
        self.folder = folder
        self._root = cache_root

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.lock"

    @asynccontextmanager
    async def hold(
        self, key: str, *, shared: bool = False, poll: float = 0.05
    ) -> AsyncIterator[None]:
        """Hold the lock of ``key``; waiting polls with ``anyio.sleep`` and can be cancelled."""
        fd = self._open(key)
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await anyio.sleep(poll)
                except OSError as err:
                    raise CacheError(
                        f"could not lock the lock file ({os_error_text(err)})",
                        where=str(self.path(key)),
                        hint="Put the cache on a local filesystem that supports flock.",
                    ) from err
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextmanager
    def try_exclusive(self, key: str) -> Iterator[bool]:
        """Hold the lock of ``key`` exclusively if nobody holds it; whether that worked."""
        fd = self._open(key)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _open(self, key: str) -> int:
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise CacheError(
                f"could not open the lock file ({os_error_text(err)})",
                where=str(path),
                hint=cache_hint(err, self._root),
            ) from err
