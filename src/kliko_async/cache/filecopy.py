"""Copying one regular file as it is: its holes kept, so a sparse file stays sparse.

``shutil.copyfile`` writes every hole out as zeros (a 100 GB sparse image of which 1 MB is
written becomes 100 GB on disk). Here only the data segments the file system reports
(``SEEK_DATA``/``SEEK_HOLE``) are copied, in the kernel where it can (``copy_file_range``,
which also clones on file systems that share extents), and the copy is cut to the source's
length, which leaves the holes as holes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

COPY_FILE_BITS = stat.S_IRUSR | stat.S_IWUSR
"""Mode bits a copy of a file gets besides its source's: its owner reads and writes it (a read-
only cache entry's files become a step's writable /work, or an export)."""

COPY_FOLDER_BITS = stat.S_IRWXU
"""Mode bits a copy of a folder gets besides its source's: its owner may do anything in it.
:mod:`kliko_async.engine.samecopy` knows an unchanged copy by these too."""

CHUNK = 1 << 20
"""Bytes per read and write where the kernel cannot copy between the files itself."""

KERNEL_PIECE = 1 << 30
"""Bytes per ``copy_file_range`` call when nothing is checked between the calls."""

CHECKED_PIECE = 64 << 20
"""Bytes per ``copy_file_range`` call when a check runs between the calls: a fraction of a
second even on a slow disk (where a whole :data:`KERNEL_PIECE` takes seconds), so that a
cancelled copy of a huge file stops soon."""

_NO_HOLES = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)
"""What ``lseek`` says where the file system cannot tell data from holes."""

_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM)
"""What ``copy_file_range`` says where it cannot copy between these two files."""


def copy_file(
    source: Path | str,
    target: Path | str,
    *,
    between_chunks: Callable[[], None] | None = None,
) -> int:
    """Copy the regular file ``source`` (never through a link) to a new ``target``, holes kept;
    the number of bytes of data copied.

    ``between_chunks`` is called between two pieces of the copy; it may raise to stop it (a
    cancelled run), which leaves ``target`` half-written for the caller to remove."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            size = os.fstat(src).st_size
            copied = sum(
                _copy_range(src, dst, start, end, between_chunks) for start, end in _data(src, size)
            )
            os.ftruncate(dst, size)
            return copied
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _data(fd: int, size: int) -> list[tuple[int, int]]:
    """The (start, end) of each data segment of the open file ``fd`` of length ``size``."""
    segments = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        except OSError as error:
            if error.errno == errno.ENXIO:  # only a hole is left
                break
            if error.errno in _NO_HOLES:
                return [(0, size)]
            raise
        segments.append((start, end))
        offset = end
    return segments


def _copy_range(
    src: int,
    dst: int,
    start: int,
    end: int,
    between_chunks: Callable[[], None] | None = None,
) -> int:
    """Copy bytes ``start`` to ``end`` of ``src`` to the same place in ``dst``, calling
    ``between_chunks`` (if any) between two pieces."""
    offset = start
    kernel = hasattr(os, "copy_file_range")
    piece = KERNEL_PIECE if between_chunks is None else CHECKED_PIECE
    while offset < end:
        if between_chunks is not None and offset > start:
            between_chunks()
        if kernel:
            try:
                done = os.copy_file_range(src, dst, min(end - offset, piece), offset, offset)
            except OSError as error:
                if error.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
                continue
        else:
            block = os.pread(src, min(end - offset, CHUNK), offset)
            done = os.pwrite(dst, block, offset) if block else 0
        if done == 0:  # the source shrank while it was copied
            break
        offset += done
    return offset - start
