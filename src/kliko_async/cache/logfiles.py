"""Saved step logs, found again (in a cache entry by its key, or in the log folder of the run where
the step failed) and read back: the bytes the container wrote, with or without time stamps.
:mod:`kliko_async.engine.steplogs` writes them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from kliko_async.cache.store import RUN_LOGS, Cache
from kliko_async.errors import ParameterError


def run_log_dir(cache: Cache, run_id: str) -> Path:
    """Where a run keeps the logs of its failed steps."""
    return cache.root / RUN_LOGS / run_id


def log_by_key(cache: Cache, key: str) -> Path:
    matches = [e for e in cache.entries() if e.key.startswith(key)]
    if len(matches) != 1:
        found = "no entry" if not matches else f"{len(matches)} entries"
        raise ParameterError(f"{found} with a key starting '{key}'", where=str(cache.root))
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
