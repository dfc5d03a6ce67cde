"""What live runs hold: the entries a run made, found cached or read, until the run has ended.

A run keeps the entries of its finished and cached steps until it has exported them, so that
``cache gc`` run meanwhile leaves them alone. Each live run has a file ``runs/<run-id>.<pid>``
that it holds an exclusive ``flock`` on for its whole life and appends one key per line to. A
file whose lock nobody holds belongs to a run that has ended (or died): gc deletes it.

Why this is safe without one common lock: a run notes a key while holding that key's lock
(shared or exclusive) and only then trusts the entry; gc removes an entry only under the key's
exclusive lock, after reading the live runs' files anew. So either gc sees the key, or the run
sees that the entry has gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from kliko_async.errors import CacheError, cache_hint, os_error_text

__all__ = ["RUNS", "HeldKeys", "RunHold"]

RUNS = "runs"
"""``runs/<run-id>.<pid>``: the keys each live run holds."""


class RunHold:
    """The keys one live run holds in a cache folder; :meth:`close` lets them go."""

    def __init__(self, cache_root: Path, run_id: str) -> None:
        self.path = cache_root / RUNS / f"{run_id}.{os.getpid()}"
        self._noted: set[str] = set()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = self._open_locked()
        except OSError as err:
            raise CacheError(
                f"could not note what this run uses ({os_error_text(err)})",
                where=str(self.path),
                hint=cache_hint(err, cache_root),
            ) from err

    def _open_locked(self) -> int:
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a gc looks at the new file
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # gc took it for an ended run's file and deleted it: make it again

    def note(self, key: str) -> None:
        """Hold ``key`` until the run ends. Call it while holding the key's lock."""
        if key in self._noted or self._fd is None:
            return
        os.write(self._fd, f"{key}\n".encode())  # one short append: other processes see it
        self._noted.add(key)

    def close(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


class HeldKeys:
    """The keys that live runs hold, as ``gc`` reads them: :meth:`refresh` re-reads only what
    the runs appended since, and deletes the files of runs that have ended."""

    def __init__(self, cache_root: Path) -> None:
        self.folder = cache_root / RUNS
        self.keys: set[str] = set()
        self.run_ids: set[str] = set()
        self._read: dict[str, int] = {}  # file name -> bytes read so far

    def refresh(self) -> set[str]:
        try:
            names = os.listdir(self.folder)
        except (FileNotFoundError, NotADirectoryError):
            return self.keys
        for name in names:
            path = self.folder / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue  # gone meanwhile (the run ended), or not a run's file
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    self._read_new(fd, name)
                    continue
                with contextlib.suppress(OSError):  # an ended run's: tidy it away
                    path.unlink()
            finally:
                os.close(fd)
        return self.keys

    def _read_new(self, fd: int, name: str) -> None:
        offset = self._read.get(name, 0)
        data = os.pread(fd, os.fstat(fd).st_size - offset, offset)
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self.keys.update(complete.decode("ascii", "replace").split())
        self._read[name] = offset + len(complete)
        self.run_ids.add(name.rsplit(".", 1)[0])
