"""The container's stdout and stderr files of a Slurm job, followed from the submitting host."""

from __future__ import annotations

from pathlib import Path

from kliko_async.runtime.base import LineSplitter, LogSink, Stream


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
        """Deliver what was written since the last call; whether anything was."""
        got = False
        for stream, (path, splitter) in self._files.items():
            try:
                with path.open("rb") as handle:
                    handle.seek(self._offsets[stream])
                    chunk = handle.read()
            except FileNotFoundError:
                continue
            if chunk:
                got = True
                self._offsets[stream] += len(chunk)
                for line in splitter.feed(chunk):
                    self._on_log(stream, line)
        return got

    def flush(self) -> None:
        for stream, (_, splitter) in self._files.items():
            for line in splitter.flush():
                self._on_log(stream, line)
