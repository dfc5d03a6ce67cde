"""Walking and deleting trees of any depth: a step's output is untrusted, and a container can
leave folders thousands deep (``mkdir -p`` of a long path), where ``os.walk`` and
``shutil.rmtree`` of Python 3.11 recurse once a folder and raise RecursionError at about a
thousand: the run ended in a traceback, at sealing, copying into ``/work``, exporting with
``--out`` or ``cache gc``.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator

Walked = tuple[str, list[str], list[str]]


def walk(top: str | os.PathLike[str], *, topdown: bool = True) -> Iterator[Walked]:
    """``os.walk(top, topdown)`` without recursion (as Python 3.12's is): the same folders in the
    same order, folder names that a top-down caller removes or sorts in place steer it the same
    way, links are listed (a link to a folder among the folders) and never entered, and a
    folder that cannot be listed is left out."""
    stack: list[str | Walked | tuple[str]] = [os.fspath(top)]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):
            if len(item) == 3:  # bottom up: a folder, after everything under it
                yield item
                continue
            (folder,) = item  # top down: looked at when its turn comes, as os.walk does (a
            if os.path.islink(folder):  # folder swapped for a link meanwhile is not entered)
                continue
        else:
            folder = item
        folders: list[str] = []
        others: list[str] = []
        entered: list[str] = []  # bottom up: the folders to go into (not links)
        try:
            listing = os.scandir(folder)
        except OSError:
            continue
        with listing:
            try:
                for entry in listing:
                    try:
                        is_folder = entry.is_dir()
                    except OSError:
                        is_folder = False
                    (folders if is_folder else others).append(entry.name)
                    if is_folder and not topdown and not _is_link(entry):
                        entered.append(entry.path)
            except OSError:  # as os.walk: a folder that fails while listed is left out
                continue
        if topdown:
            yield folder, folders, others
            stack.extend((os.path.join(folder, name),) for name in reversed(folders))
        else:
            stack.append((folder, folders, others))
            stack.extend(reversed(entered))


def _is_link(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def remove_deep(path: str | os.PathLike[str]) -> None:
    """``shutil.rmtree(path)``, which deletes through folder descriptors, safe from links
    swapped in meanwhile; where it cannot go on (a tree deeper than its recursion goes, or a
    folder that is not writable or not searchable: a sealed entry's, for anyone but root), the
    rest is deleted the same way without recursion (:func:`_remove_by_descriptors`), opening up
    each folder as it goes, as deep as it is, even past the longest path the system takes.
    Raises the OSError of what could not be deleted."""
    try:
        shutil.rmtree(path)
    except (RecursionError, PermissionError):
        _remove_by_descriptors(os.fspath(path))


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


def _remove_by_descriptors(path: str) -> None:
    """Delete the folder ``path`` and everything under it with one folder open at a time:
    down by name (links never followed), back up by ``..``, checked to be the very folder it
    came down from (one moved meanwhile raises, rather than deleting in its new place). The
    trees deleted here are ones that no container writes any more (a staging folder, an
    entry, an export's old copy)."""
    try:
        fd = os.open(path, _FOLDER)
    except PermissionError:  # not searchable, not even to list it
        os.chmod(path, 0o700)
        fd = os.open(path, _FOLDER)
    try:
        below: list[list[str]] = [_clear(fd)]  # each level's folders not deleted yet
        above: list[tuple[str, tuple[int, int]]] = []  # each folder's name, and its parent's
        while below:
            if below[-1]:
                name = below[-1].pop()
                child = _open_folder(name, fd)
                above.append((name, _identity(fd)))
                os.close(fd)
                fd = child
                below.append(_clear(fd))
                continue
            below.pop()
            if not above:
                break
            name, parent_was = above.pop()
            parent = os.open("..", _FOLDER, dir_fd=fd)
            os.close(fd)
            fd = parent
            if _identity(fd) != parent_was:
                raise OSError(errno.ESTALE, "a folder was moved while it was being deleted", path)
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _open_folder(name: str, parent: int) -> int:
    """The folder ``name`` in ``parent``, opened; made searchable first if it was not."""
    try:
        return os.open(name, _FOLDER, dir_fd=parent)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=parent)  # a folder (scandir said so): no link followed
        return os.open(name, _FOLDER, dir_fd=parent)


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _clear(fd: int) -> list[str]:
    """Delete what is not a folder in the open folder ``fd`` (made writable first: a sealed
    entry's folders are not, for anyone but root); the names of its folders."""
    os.fchmod(fd, 0o700)
    folders: list[str] = []
    with os.scandir(fd) as listing:
        for entry in listing:
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    return folders
