"""A key's lock file, reopened when `cache gc` deleted it meanwhile: every descriptor is
closed exactly once, also when reopening fails (a second close could close another thread's
file that got the same number)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import anyio
import pytest

from kliko_async.cache import locks
from kliko_async.cache.locks import KeyLocks
from kliko_async.errors import CacheError

KEY = "a" * 64


@pytest.fixture
def failing_reopen(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """The lock file is always found replaced, and opening it a second time fails; the closes
    of the descriptors it opened, counted."""
    opened: list[int] = []
    closed: Counter[int] = Counter()
    real_open, real_close = KeyLocks._open, os.close

    def open_once(self: KeyLocks, path: Path) -> int:
        if opened:
            raise CacheError("could not open the lock file (test)")
        opened.append(real_open(self, path))
        return opened[-1]

    def close(fd: int) -> None:
        if fd in opened:
            closed[fd] += 1
        real_close(fd)

    monkeypatch.setattr(KeyLocks, "_open", open_once)
    monkeypatch.setattr(locks, "_same_file", lambda fd, path: False)
    monkeypatch.setattr(locks.os, "close", close)
    return closed


def test_a_failed_reopen_while_holding_closes_the_old_file_once(
    tmp_path: Path, failing_reopen: Counter[int]
) -> None:
    async def hold() -> None:
        async with KeyLocks(tmp_path, tmp_path).hold(KEY):
            pass

    with pytest.raises(CacheError):
        anyio.run(hold)
    assert list(failing_reopen.values()) == [1]


def test_a_failed_reopen_in_try_exclusive_closes_the_old_file_once(
    tmp_path: Path, failing_reopen: Counter[int]
) -> None:
    with pytest.raises(CacheError), KeyLocks(tmp_path, tmp_path).try_exclusive(KEY):
        pass
    assert list(failing_reopen.values()) == [1]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_wait_for_a_lock_cancelled_leaves_no_file_open(tmp_path: Path) -> None:
    """Cancelled while it polls for a lock another holder has: its lock file is closed."""
    keys = KeyLocks(tmp_path / "locks", tmp_path)

    async def main() -> int:
        async with keys.hold("k"):
            before = open_fds()
            with anyio.move_on_after(0.2) as scope:
                async with keys.hold("k", poll=0.01):
                    raise AssertionError("the lock is held: never got")
            assert scope.cancelled_caught
            return open_fds() - before

    assert anyio.run(main) == 0
