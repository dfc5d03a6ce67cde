"""A step's saved log: written as it runs (one record per line, ``<time stamp> <stream>
<bytes>``), kept after a failure, found again later (in its cache entry, or in the log folder of
the run where it failed) and read back: the bytes the container wrote, with or without time
stamps."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from kliko_async.cache.store import RUN_LOGS, Cache
from kliko_async.engine.plan import Plan
from kliko_async.errors import CacheError, ParameterError


class StepLog:
    """A step's saved log file: one record per line, ``<time stamp> <stream> <bytes>``.

    Records are in the order the engine gave them, stdout and stderr together, each with the
    engine's time stamp (the time it arrived when the runtime gives none); the bytes are exactly
    what the container wrote (see :class:`~kliko_async.runtime.base.LogSink`);
    :func:`kliko_async.engine.steplogs.log_content` reads the bytes back. Writing never raises into
    the runtime's log stream: the first error (a full disk) is kept in ``error`` and reported
    through ``on_error``, and the attempt fails, since an entry's log must be complete."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("w", encoding="utf-8", errors="surrogateescape", buffering=1 << 16)
        self.error: OSError | None = None
        self.on_error: Callable[[], None] | None = None

    def write_line(self, stream: str, text: str, at: str | None = None) -> None:
        if self.error is not None:
            return
        if at is None:
            at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        try:
            self._file.write(f"{at} {stream} {text}\n")
        except OSError as error:
            self._failed(error)
        except UnicodeEncodeError:  # a surrogate not from decoding bytes (a library caller)
            self.write_line(stream, text.encode("utf-8", "replace").decode("utf-8"), at)

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
    return cache.root / RUN_LOGS / run_id


def find_step_log(cache: Cache, plan: Plan, step: str) -> Path:
    """The cached log of ``step`` as the chain is now, else its latest failed attempt's log."""
    if step not in plan.steps:
        raise ParameterError(
            f"no step named '{step}'", where=plan.source, hint=f"Steps: {', '.join(plan.order)}."
        )
    if step in plan.unbuilt:
        raise CacheError(
            f"no saved log for step '{step}': {plan.unbuilt[step]}, so it has not run as it is",
            where=plan.source,
            hint="Run the chain first.",
        )
    entry = plan.steps[step].cached or cache.lookup(plan.steps[step].key)
    if entry is not None:
        return entry.log_path
    failed = sorted(
        (cache.root / RUN_LOGS).glob(f"*/{glob.escape(step)}.log"), key=lambda p: p.stat().st_mtime
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


_RECORD = re.compile(rb"(\S+) (stdout|stderr) (.*)", re.DOTALL)


def log_records(path: Path) -> Iterator[tuple[bytes, str, bytes]]:
    """``(time stamp, stream, bytes of the line)`` of every line of a saved log, in order.

    A line that is not a record (a log saved by an older version) is given with an empty
    time stamp, as stdout.
    """
    with path.open("rb") as handle:
        for raw in handle:
            line = raw[:-1] if raw.endswith(b"\n") else raw
            match = _RECORD.fullmatch(line)
            if match is None:
                yield b"", "stdout", line
            else:
                yield match[1], match[2].decode(), match[3]


def log_content(path: Path) -> bytes:
    """What the container wrote, stdout and stderr in the engine's order, byte for byte."""
    return b"".join(text + b"\n" for _, _, text in log_records(path))
