"""Reading a file the user named (a chain file, a kliko.yml, a ``from-file:`` list, a parameter
file, the config file): a regular file of bounded size, or one clear error.

``/dev/zero`` would never end and a named pipe would block ``open()`` until a writer came, so
the file is opened without blocking, checked to be a regular file on the open descriptor (no
race with a swap), and read no further than its bound, even when it grows meanwhile. Callers
on an event loop run :func:`read_input_file` in a worker thread.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kliko_async.model.yamltext import MAX_YAML_BYTES

__all__ = ["InputFileError", "read_input_file"]

_CHUNK = 1 << 20


class InputFileError(Exception):
    """A file that cannot be read as input: ``message`` completes "<path> ...", ``hint`` says
    what to do; ``missing`` and ``folder`` say when there is no file or a folder instead, for
    callers with their own words for those. Callers wrap it in their own
    :class:`~kliko_async.errors.KlikoError`."""

    def __init__(
        self, message: str, hint: str, *, missing: bool = False, folder: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.missing = missing
        self.folder = folder


def read_input_file(
    path: Path, *, limit: int = MAX_YAML_BYTES, too_large_hint: str = "Give a smaller file."
) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them; else InputFileError
    (with ``too_large_hint`` when there are more)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputFileError(
            "does not exist", hint="Check the path and the current folder.", missing=True
        ) from None
    except OSError as error:
        raise _unreadable(error) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise _folder()
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError(
                "is not a regular file (a device, pipe or socket)",
                hint="Give the path of a file; to use generated text, write it to a file first.",
            )
        if info.st_size > limit:
            raise _too_large(info.st_size, limit, too_large_hint)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(_CHUNK, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew while being read
                raise _too_large(size, limit, too_large_hint)
        return b"".join(chunks)
    except IsADirectoryError:
        raise _folder() from None
    except OSError as error:
        raise _unreadable(error) from None
    finally:
        os.close(fd)


def _unreadable(error: OSError) -> InputFileError:
    if isinstance(error, PermissionError):
        return InputFileError(
            "cannot be read: permission denied", hint="Check the file's permissions."
        )
    return InputFileError(f"cannot be read: {error.strerror or error}", hint="Check the file.")


def _folder() -> InputFileError:
    return InputFileError("is a folder, not a file", hint="Give the path of the file.", folder=True)


def _too_large(size: int, limit: int, hint: str) -> InputFileError:
    return InputFileError(f"is {size:,} bytes, more than the {limit:,} bytes allowed", hint=hint)
