"""The container's stdout and stderr files of a Slurm job, followed from the submitting host.

The files are on the shared file system, where a read may take a while: the runtime fetches
new bytes in a worker thread (:meth:`LogFiles.fetch`) and delivers the lines on the event loop
(:meth:`LogFiles.deliver`), where the sink is."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from kliko_async.runtime.base import ContainerJob, LineSplitter, LogSink, Stream

READ_LIMIT = 4 << 20
"""Bytes read from each file per poll: a step that wrote a gigabyte between two polls is
followed a few megabytes at a time, not read into memory at once."""


class LogFiles:
    """Follows the container's stdout and stderr files, delivering complete lines.

    Each attempt of a job (Slurm requeues it: ``restart``) writes files of its own, so a new
    attempt is followed from its first byte and never mixed with the lines of the last one.
    """

    def __init__(self, folder: Path, on_log: LogSink) -> None:
        self._folder = folder
        self._on_log = on_log
        self.attempt = 0
        self._files: dict[Stream, tuple[Path, LineSplitter]] = {}
        self._offsets: dict[Stream, int] = {}
        self._open(0)

    def _open(self, attempt: int) -> None:
        suffix = f".{attempt}" if attempt else ""
        self.attempt = attempt
        self._files = {
            "stdout": (self._folder / f"stdout{suffix}", LineSplitter()),
            "stderr": (self._folder / f"stderr{suffix}", LineSplitter()),
        }
        self._offsets = {"stdout": 0, "stderr": 0}

    def restart(self, attempt: int, note: str) -> None:
        """Finish the current attempt's files, say ``note`` (on stderr) and follow
        ``attempt``'s files from their start."""
        self.read()
        self.flush()
        self._on_log("stderr", note)
        self._open(attempt)

    def read(self) -> bool:
        """Deliver what was written since the last call; whether anything was. Blocking (file
        reads on a shared file system): :meth:`fetch` then :meth:`deliver` keep it off the loop."""
        return self.deliver(self.fetch())

    def fetch(self, sizes: Mapping[str, int] | None = None) -> list[tuple[Stream, bytes]]:
        """What each file gained since the last call, at most ``READ_LIMIT`` bytes each (the
        rest at the next call). Blocking: run it in a worker thread; deliver on the loop.
        ``sizes``: the folder's file sizes by name, as just listed: a file that is not there or
        has not grown is not opened (most looks at most jobs find nothing new)."""
        chunks: list[tuple[Stream, bytes]] = []
        for stream, (path, _) in self._files.items():
            if sizes is not None and sizes.get(path.name, -1) <= self._offsets[stream]:
                continue
            try:
                with path.open("rb") as handle:
                    handle.seek(self._offsets[stream])
                    chunk = handle.read(READ_LIMIT)
            except FileNotFoundError:
                continue
            if chunk:
                self._offsets[stream] += len(chunk)
                chunks.append((stream, chunk))
        return chunks

    def deliver(self, chunks: list[tuple[Stream, bytes]]) -> bool:
        """Split fetched chunks into lines for the sink; whether there were any bytes."""
        for stream, chunk in chunks:
            for line in self._files[stream][1].feed(chunk):
                self._on_log(stream, line)
        return bool(chunks)

    def flush(self) -> None:
        for stream, (_, splitter) in self._files.items():
            for line in splitter.flush():
                self._on_log(stream, line)


class JobFiles(NamedTuple):
    """What a job's folder showed at one look."""

    started: str
    """The ``started`` file: the node and the attempt ("" before the job started)."""
    chunks: list[tuple[Stream, bytes]]
    """New bytes of the container's stdout and stderr."""
    status: bool
    """Whether the ``status`` file, written when the container ended, is there."""


def look_at_job_files(folder: Path, logs: LogFiles) -> JobFiles:
    """One look at the job's folder: one listing, and a file opened only when it is there
    (and a log only when it grew). Blocking (a shared file system): run it in a thread."""
    sizes: dict[str, int] = {}
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.name.startswith(_LOGS):  # how far each log has grown
                    sizes[entry.name] = entry.stat().st_size
                elif entry.name in ("started", "status"):  # only whether they are there
                    sizes[entry.name] = 0
    except OSError:
        pass  # not there (yet, or any more): nothing to see
    started = ""
    if "started" in sizes:
        with contextlib.suppress(OSError):
            started = (folder / "started").read_text(errors="replace")
    return JobFiles(started, logs.fetch(sizes), "status" in sizes)


_LOGS = ("stdout", "stderr")

_STALE = (*_LOGS, "started", "status", "timed-out", "usage", "times.", "cid")
"""The files an earlier job left in a job's folder."""


def read_text(path: Path) -> str:
    """A job file's text; "" when it is not there (yet, or any more)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def job_folder(job: ContainerJob, jobs_root: Path) -> Path:
    """The job's folder, made ready: in the step's staging folder (next to its
    parameters.json), else a new one under ``jobs_root``; an earlier job's files there go.
    Blocking (a shared file system): run it in a thread."""
    parameters = next((m.source for m in job.mounts if m.target == "/parameters.json"), None)
    if parameters is not None:
        folder = parameters.parent / "slurm"
    else:  # a job without parameters (not one the scheduler makes)
        folder = jobs_root / secrets.token_hex(8)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*"):  # of an earlier job in this folder
        if stale.name.startswith(_STALE):
            stale.unlink(missing_ok=True)
    return folder
