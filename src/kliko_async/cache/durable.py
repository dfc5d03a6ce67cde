"""Durable, read-only trees on disk: fsync, seal (make read-only) and remove them.

A published cache entry must survive a crash whole and must not be changed afterwards; these are
the filesystem operations that promise it, apart from the cache's own bookkeeping.
"""

from __future__ import annotations

import os
import shutil
import stat
from contextlib import suppress
from pathlib import Path

FILE_MODE = 0o444
EXEC_FILE_MODE = 0o555
DIR_MODE = 0o555


def tree_size(root: Path) -> int:
    """Apparent size (sum of ``st_size``) of every file under ``root``."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def fsync_dir(path: Path) -> None:
    """Make the names in folder ``path`` durable (new files, renames)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_sealed(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file, fsync it and make it read-only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def seal_tree(root: Path) -> list[tuple[str, str]]:
    """fsync ``root`` and everything under it and make it read-only, bottom up.

    Files become 0444 (0555 if they were executable), folders 0555. Symbolic links are left as
    they are and never followed. Named pipes, sockets and devices are left alone too, and
    returned (path relative to ``root``, what it is): they cannot be kept or copied as data.
    """
    special: list[tuple[str, str]] = []
    if stat.S_ISDIR(os.lstat(root).st_mode):
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for name in [*filenames, *dirnames]:
                path = os.path.join(dirpath, name)
                mode = seal_one(path)
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                    special.append((os.path.relpath(path, root), special_kind(mode)))
    seal_one(str(root))
    return sorted(special)


def special_kind(mode: int) -> str:
    """'a named pipe', 'a socket' or 'a device', for the ``st_mode`` of a special file."""
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def seal_one(path: str) -> int:
    """Make one file or folder read-only and durable; its ``st_mode`` (links not followed).

    Only what ``lstat`` finds to be a file or folder has its mode changed: the trees sealed here
    are ones no container or other process writes any more, so nothing swaps a link in.
    """
    info = os.lstat(path)
    if stat.S_ISREG(info.st_mode):
        os.chmod(path, EXEC_FILE_MODE if info.st_mode & 0o111 else FILE_MODE)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    elif stat.S_ISDIR(info.st_mode):
        fsync_dir(Path(path))
        os.chmod(path, DIR_MODE)
    return info.st_mode


def remove_tree(path: Path) -> None:
    """Delete ``path`` recursively, first making its folders writable. Missing is fine."""
    if path.is_symlink() or not path.exists():
        with suppress(FileNotFoundError):
            path.unlink()
        return
    if not path.is_dir():
        path.unlink()
        return
    with suppress(FileNotFoundError):
        os.chmod(path, 0o700)
    for dirpath, dirnames, _filenames in os.walk(path):
        for name in dirnames:
            child = os.path.join(dirpath, name)
            if not os.path.islink(child):
                with suppress(FileNotFoundError):
                    os.chmod(child, 0o700)
    shutil.rmtree(path)
