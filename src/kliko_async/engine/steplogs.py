"""A step's saved log as it is written: one record per line, ``<time stamp> <stream> <bytes>``,
kept after a failure. Reading and finding saved logs is :mod:`kliko_async.cache.logfiles`."""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kliko_async.cache.durable import write_all


class StepLog:
    """A step's saved log file: one record per line, ``<time stamp> <stream> <bytes>``.

    Records are in the order the engine gave them, stdout and stderr together, each with the
    engine's time stamp (the time it arrived when the runtime gives none); the bytes are exactly
    what the container wrote (see :class:`~kliko_async.runtime.base.LogSink`);
    :func:`kliko_async.engine.steplogs.log_content` reads the bytes back. Writing never raises into
    the runtime's log stream: the first error (a full disk) is kept in ``error`` and reported
    through ``on_error``, and the attempt fails, since an entry's log must be complete."""

    BUFFER = 1 << 16
    """Records are written in pieces of about this many bytes (and at :meth:`close`)."""

    __slots__ = ("_buffer", "_fd", "error", "on_error")

    def __init__(self, path: Path) -> None:
        # A bare file descriptor and a buffer of our own: records are encoded here already,
        # and Python's file objects cost three more system calls (and more than the write of a
        # one-line log) for each step.
        self._fd: int | None = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666
        )
        self._buffer = bytearray()
        self.error: OSError | None = None
        self.on_error: Callable[[], None] | None = None

    def write_line(self, stream: str, text: str, at: str | None = None) -> None:
        if self.error is not None:
            return
        if at is None:
            at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        try:
            try:
                record = f"{at} {stream} {text}\n".encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a surrogate not from decoding bytes (a library caller)
                record = _record_replacing(stream, text, at)
            if len(record) >= self.BUFFER:  # a huge line: written as it is, never copied
                self._flush()
                self._write(record)
                return
            self._buffer += record
            if len(self._buffer) >= self.BUFFER:
                self._flush()
        except OSError as error:
            self._failed(error)

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            if self.error is None:
                self._flush()
        except OSError as error:
            self._failed(error)
        finally:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as error:
                self._failed(error)

    def _flush(self) -> None:
        if self._buffer:
            self._write(self._buffer)
            self._buffer.clear()

    def _write(self, data: bytes | bytearray) -> None:
        assert self._fd is not None  # only close() closes it
        write_all(self._fd, data)

    def _failed(self, error: OSError) -> None:
        if self.error is None:
            self.error = error
            if self.on_error is not None:
                self.on_error()


def _escaped_or_replaced(error: UnicodeError) -> tuple[bytes, int]:
    """An encoding error handler: a surrogate that escapes a byte (``surrogateescape``) is that
    byte again, any other is ``?``."""
    assert isinstance(error, UnicodeEncodeError)
    bad = error.object[error.start : error.end]
    kept = bytes(ord(c) - 0xDC00 if 0xDC80 <= ord(c) <= 0xDCFF else 0x3F for c in bad)
    return kept, error.end


_REPLACING = "kliko-async-escaped-or-replaced"
codecs.register_error(_REPLACING, _escaped_or_replaced)


def _record_replacing(stream: str, text: str, at: str) -> bytes:
    """A record whose time stamp, stream or text holds a surrogate that is no escaped byte: the
    escaped bytes as they were, any other surrogate as ``?``."""
    return f"{at} {stream} {text}\n".encode("utf-8", _REPLACING)


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
