"""A step's saved log: written as it runs, kept after a failure, found again later (in its cache
entry, or in the log folder of the run where it failed)."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from kliko_async.cache import Cache
from kliko_async.errors import CacheError, ParameterError
from kliko_async.plan import Plan


class StepLog:
    """A step's saved log file. Writing never raises into the runtime's log stream: the first
    error (a full disk) is kept in ``error`` and reported through ``on_error``, and the attempt
    fails, since an entry's log must be complete."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("w", encoding="utf-8", buffering=1 << 16)
        self.error: OSError | None = None
        self.on_error: Callable[[], None] | None = None

    def write(self, text: str) -> None:
        if self.error is not None:
            return
        try:
            self._file.write(text)
        except OSError as error:
            self._failed(error)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as error:
            self._failed(error)

    def _failed(self, error: OSError) -> None:
        if self.error is None:
            self.error = error
            if self.on_error is not None:
                self.on_error()


def keep_log(source: Path, target: Path) -> Path | None:
    """Move a failed attempt's log to ``target`` (no copy: the disk may be full); its path."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            shutil.copyfile(source, target)  # the log folder is on another file system
    except OSError:
        with contextlib.suppress(OSError):
            target.unlink()
        return None
    return target


def run_log_dir(cache: Cache, run_id: str) -> Path:
    """Where a run keeps the logs of its failed steps."""
    return cache.root / "logs" / run_id


def find_step_log(cache: Cache, plan: Plan, step: str) -> Path:
    """The cached log of ``step`` as the chain is now, else its latest failed attempt's log."""
    if step not in plan.steps:
        raise ParameterError(
            f"no step named '{step}'", where=plan.source, hint=f"Steps: {', '.join(plan.order)}."
        )
    entry = plan.steps[step].cached or cache.lookup(plan.steps[step].key)
    if entry is not None:
        return entry.log_path
    failed = sorted(
        (cache.root / "logs").glob(f"*/{glob.escape(step)}.log"), key=lambda p: p.stat().st_mtime
    )
    if failed:
        return failed[-1]
    raise CacheError(
        f"no saved log for step '{step}': it has not run with its current inputs and parameters",
        where=plan.source,
        hint="Run the chain first.",
    )


def log_by_key(cache: Cache, key: str) -> Path:
    matches = [e for e in cache.entries() if e.key.startswith(key)]
    if len(matches) != 1:
        found = "no entry" if not matches else f"{len(matches)} entries"
        raise CacheError(f"{found} with a key starting '{key}'", where=str(cache.root))
    return matches[0].log_path
