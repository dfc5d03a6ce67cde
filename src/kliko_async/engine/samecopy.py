"""Whether a copy of a folder is still what was copied, told from ``lstat`` alone.

An export under ``--out`` is a copy of a cache entry's output, made with each file's modification
time kept (:func:`~kliko_async.engine.workspace.copy_tree_writable` with ``keep_times``). A
cached re-run used to delete and copy every export again: 2,000 small ones were two thirds of a
4 s re-run, and a sweep of 100 MB images rewrote all of them each time (and touched every file a
``make`` downstream reads). When the export still has the entry's names, types, sizes,
modification times, modes and link targets, it is left as it is; any change to it (a file
written, added, removed, renamed or chmod-ed) shows in one of those, and the copy is made again,
as ``rsync`` decides without reading the files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from kliko_async.cache.filecopy import COPY_FILE_BITS, COPY_FOLDER_BITS


def same_copy(
    source: str | os.PathLike[str],
    copy: str | os.PathLike[str],
    *,
    besides: str,
    between_files: Callable[[], None] | None = None,
) -> tuple[int, int] | None:
    """The number of files and bytes in ``copy`` if it matches ``source`` as copied (its
    top folder may hold ``besides`` too, which ``source`` does not); None if anything differs or
    cannot be looked at. Links are compared, never followed. ``between_files`` is called before
    each name is looked at (it may raise, to stop a long walk)."""
    try:
        return _compare(os.fspath(source), os.fspath(copy), besides, between_files)
    except OSError:
        return None


def _compare(
    source: str, copy: str, besides: str, between_files: Callable[[], None] | None
) -> tuple[int, int] | None:
    if not _same_folder_mode(os.lstat(source), os.lstat(copy)):
        return None
    files = size = 0
    pending = [(source, copy, besides)]
    while pending:  # a stack, not recursion: a deep tree of folders cannot overflow it
        here, there, extra = pending.pop()
        names = os.listdir(here)  # names only: a folder of 100,000 files is a few MB of them
        theirs = set(os.listdir(there))
        theirs.discard(extra)
        if len(names) != len(theirs) or not theirs.issuperset(names):
            return None
        del theirs
        for name in names:
            if between_files is not None:
                between_files()
            mine, copied = os.path.join(here, name), os.path.join(there, name)
            was, now = os.lstat(mine), os.lstat(copied)
            if stat.S_IFMT(was.st_mode) != stat.S_IFMT(now.st_mode):
                return None
            if stat.S_ISREG(was.st_mode):
                if (
                    was.st_size != now.st_size
                    or was.st_mtime_ns != now.st_mtime_ns
                    or stat.S_IMODE(was.st_mode) | COPY_FILE_BITS != stat.S_IMODE(now.st_mode)
                ):
                    return None
                files, size = files + 1, size + was.st_size
            elif stat.S_ISDIR(was.st_mode):
                if not _same_folder_mode(was, now):
                    return None
                pending.append((mine, copied, ""))
            elif stat.S_ISLNK(was.st_mode):
                if os.readlink(mine) != os.readlink(copied):
                    return None
            else:  # nothing else is ever copied
                return None
    return files, size


def _same_folder_mode(was: os.stat_result, now: os.stat_result) -> bool:
    """Whether ``now`` is a folder copied from the folder ``was`` (the owner may do anything
    in its copy)."""
    return (
        stat.S_ISDIR(was.st_mode)
        and stat.S_ISDIR(now.st_mode)
        and stat.S_IMODE(was.st_mode) | COPY_FOLDER_BITS == stat.S_IMODE(now.st_mode)
    )
