"""The container's stdout and stderr files of a Slurm job, followed from the submitting host."""

from __future__ import annotations

from pathlib import Path

from kliko_async.runtime.base import LineSplitter, LogSink, Stream


class LogFiles:
    """Follows the container's stdout and stderr files, delivering complete lines."""

    def __init__(self, folder: Path, on_log: LogSink) -> None:
        self._on_log = on_log
        self._files: dict[Stream, tuple[Path, LineSplitter]] = {
            "stdout": (folder / "stdout", LineSplitter()),
            "stderr": (folder / "stderr", LineSplitter()),
        }
        self._offsets: dict[Stream, int] = {"stdout": 0, "stderr": 0}

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
