"""Durable trees on disk: fsync, seal (settle their modes) and remove them.

A published cache entry must survive a crash whole and must not be changed afterwards; these are
the filesystem operations that promise the first, apart from the cache's own bookkeeping. Sealed
entries are writable by their owner only (0644/0755): Kliko's images copy ``/input`` with its
modes and write into the copy, which a read-only entry (0444/0555) made impossible for anyone but
root. What keeps entries unchanged is how containers see them (a read-only mount on Docker, a
copy in ``/work`` or, on Charliecloud, of each input), and ``cache verify`` checks them.

Durability comes in two ways: :func:`seal_tree` and :func:`write_sealed` either fsync each file
and folder as they go, or (``sync=False``) only collect what they wrote into a :class:`Barrier`,
whose one :meth:`Barrier.wait` later makes all of it durable at once (a group commit: one
``syncfs`` of the filesystem where the kernel reports its write errors, else an fsync of each
collected path).
"""

from __future__ import annotations

import functools
import os
import platform
import stat
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import anyio

from kliko_async.cache.treewalk import remove_deep, walk

FILE_MODE = 0o644
EXEC_FILE_MODE = 0o755
DIR_MODE = 0o755


def tree_size(root: Path) -> int:
    """Apparent size (sum of ``st_size``) of every file under ``root``."""
    total = 0
    for dirpath, _dirnames, filenames in walk(root):
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


class Barrier:
    """What has been written but not yet made durable; :meth:`wait` makes it durable.

    Paths are added as they are written (files and folders, never followed links). ``wait``
    makes every one of them durable, with their names in their folders: by one ``syncfs`` of
    the filesystem holding ``root`` where that reports write errors (Linux 5.8 and later), else
    by an fsync of each path. Then it starts empty again.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: list[str] = []

    def add(self, path: str) -> None:
        self.paths.append(path)

    def wait(self) -> None:
        if not self.paths:
            return
        if not _syncfs(self.root):
            for path in self.paths:
                if os.path.isdir(path):
                    fsync_dir(Path(path))
                else:
                    fsync_path(path)
        self.paths = []


def _syncfs_reports_errors() -> bool:
    """Whether ``syncfs`` returns write-back errors: Linux 5.8 and later (before, it never
    failed, so an I/O error would go unnoticed and an fsync of each file is the honest way)."""
    if platform.system() != "Linux":
        return False
    try:
        major, minor = (int(part) for part in platform.release().split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


@functools.cache
def _syncfs_call() -> Callable[[int], int] | None:
    """libc's ``syncfs``, when it reports write errors here; else None."""
    if not _syncfs_reports_errors():
        return None
    import ctypes  # only here: most commands never publish

    try:
        call: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    return call


def _syncfs(root: Path) -> bool:
    """``syncfs`` the filesystem holding ``root``; False when it is not available here."""
    syncfs = _syncfs_call()
    if syncfs is None:
        return False
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            import ctypes

            number = ctypes.get_errno()
            raise OSError(number, f"syncfs failed: {os.strerror(number)}", str(root))
    finally:
        os.close(fd)
    return True


def fsync_path(path: str) -> None:
    """fsync one file (opened read-only, links not followed)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write only part of it)."""
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])


def read_all(fd: int) -> bytes:
    """Read ``fd`` to its end."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def write_sealed(path: Path, data: bytes, barrier: Barrier | None = None) -> None:
    """Write ``data`` to a new file (``FILE_MODE``); fsync it, or leave that to ``barrier``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        write_all(fd, data)
        if barrier is None:
            os.fsync(fd)
    finally:
        os.close(fd)
    if barrier is not None:
        barrier.add(str(path))


def seal_tree(root: Path, barrier: Barrier | None = None) -> list[tuple[str, str]]:
    """Make ``root`` and everything under it owner-writable only and durable, bottom up.

    Each file and folder is fsynced as it is sealed, or, with ``barrier``, added to it (its ``wait``
    makes them durable later). Files become 0644 (0755 if they were executable), folders 0755:
    writable by the owner only. Symbolic links are left as they are and never followed. Named pipes,
    sockets and devices are left alone too, and returned (path relative to ``root``, what it is):
    they cannot be kept or copied as data.
    """
    special: list[tuple[str, str]] = []
    if stat.S_ISDIR(os.lstat(root).st_mode):
        for dirpath, dirnames, filenames in walk(root, topdown=False):
            for name in [*filenames, *dirnames]:
                path = os.path.join(dirpath, name)
                mode = seal_one(path, barrier)
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                    special.append((os.path.relpath(path, root), special_kind(mode)))
    seal_one(str(root), barrier)
    return sorted(special)


def small_tree(root: Path, *, max_entries: int, max_bytes: int) -> bool:
    """Whether the tree at ``root`` holds at most ``max_entries`` files, folders and links and
    at most ``max_bytes`` in its files (links never followed); it stops looking as soon as it
    does not, so a huge tree costs a few calls."""
    entries = size = 0
    folders = [root]
    while folders:
        with os.scandir(folders.pop()) as found:
            for entry in found:
                entries += 1
                if entries > max_entries:
                    return False
                if entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    size += entry.stat(follow_symlinks=False).st_size
                    if size > max_bytes:
                        return False
    return True


def special_kind(mode: int) -> str:
    """'a named pipe', 'a socket' or 'a device', for the ``st_mode`` of a special file."""
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def seal_one(path: str, barrier: Barrier | None = None) -> int:
    """Settle one file's or folder's mode (owner-writable) and make it durable (now, or at
    ``barrier``); its ``st_mode`` (links not followed).

    Only what ``lstat`` finds to be a file or folder has its mode changed: the trees sealed here
    are ones no container or other process writes any more, so nothing swaps a link in.
    """
    info = os.lstat(path)
    if stat.S_ISREG(info.st_mode):
        os.chmod(path, EXEC_FILE_MODE if info.st_mode & 0o111 else FILE_MODE)
        if barrier is None:
            fsync_path(path)
        else:
            barrier.add(path)
    elif stat.S_ISDIR(info.st_mode):
        if barrier is None:
            fsync_dir(Path(path))
        else:
            barrier.add(path)
        os.chmod(path, DIR_MODE)
    return info.st_mode


async def remove_tree_off_loop(path: Path) -> None:
    """:func:`remove_tree` in a worker thread (a tree may hold thousands of files, on a slow
    shared file system), shielded: it runs to its end even while the caller is cancelled."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(remove_tree, path)


def remove_small_tree(path: Path) -> None:
    """Delete a folder of a few files and empty folders (a step's ``scratch/``) in a few calls;
    anything else in it (a folder of file parameters, a file we may not delete) goes the long
    way, :func:`remove_tree`."""
    if not remove_if_small(path):
        remove_tree(path)


def remove_if_small(path: Path) -> bool:
    """Delete a folder that holds only files and empty folders, in a few calls; False when it
    holds anything else (a folder with files, a file we may not delete), which is left as it is
    found then (less what was deleted before). A missing folder is not there to delete: False."""
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    os.rmdir(entry.path)
                else:
                    os.unlink(entry.path)
        os.rmdir(path)
    except OSError:
        return False
    return True


def remove_tree(path: Path) -> None:
    """Delete ``path`` recursively, making its folders writable where one is not (a sealed
    entry, a folder a container made read-only). Missing is fine."""
    if path.is_symlink() or not path.exists():
        with suppress(FileNotFoundError):
            path.unlink()
        return
    if not path.is_dir():
        path.unlink()
        return
    remove_deep(path)  # a read-only folder is opened up as it comes, at any depth
