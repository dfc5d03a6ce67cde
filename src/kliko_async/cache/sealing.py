"""Sealing a staging folder before it is published: its files settled and hashed, its manifest
written, all of it durable at a barrier (:class:`~kliko_async.cache.durable.Barrier`), so that
the rename into ``entries/`` (:class:`~kliko_async.cache.store.Cache`) publishes a whole entry.

A small staging folder (``SMALL_FILES``, ``SMALL_BYTES``) is sealed where it is published, in
the event loop (:meth:`~kliko_async.cache.store.Cache.seal_small`); a big one in the group
commit's worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import NamedTuple

from kliko_async.cache.durable import (
    DIR_MODE,
    EXEC_FILE_MODE,
    FILE_MODE,
    Barrier,
    seal_one,
    seal_tree,
    small_tree,
    special_kind,
    write_sealed,
)
from kliko_async.cache.entry import LOG, MANIFEST, OUTPUT, CacheEntry, Manifest, Staging
from kliko_async.cache.hashing import sha256_file
from kliko_async.errors import UnpublishableOutput

SMALL_FILES = 64
SMALL_BYTES = 1 << 20
"""A staging folder whose output holds at most this many files and folders, and whose output
and log hold at most this many bytes, is small: sealing it takes a millisecond at most."""


class Sealed(NamedTuple):
    """A staging folder sealed ahead of its group (:meth:`Cache.seal_small`): its entry as it
    will be once renamed, and the paths its group's barrier makes durable."""

    staging: Staging
    entry: CacheEntry
    paths: list[str]


class SealingFailed(Exception):
    """An OSError (its ``__cause__``) while ``action`` ("hashing the output", ...)."""

    def __init__(self, action: str) -> None:
        super().__init__(action)
        self.action = action


def is_small(staging: Staging) -> bool:
    """Whether ``staging`` is small; False when its log or output cannot be looked at (the
    thread, which seals it then, says what is wrong, as for any other staging folder)."""
    try:
        try:
            log_bytes = os.stat(staging.path / LOG).st_size
        except FileNotFoundError:
            log_bytes = 0
        return log_bytes <= SMALL_BYTES and small_tree(
            staging.output_dir, max_entries=SMALL_FILES, max_bytes=SMALL_BYTES - log_bytes
        )
    except OSError:  # an output its container made unreadable, say: the thread tells what
        return False


def seal_staging_files(staging: Staging, manifest: Manifest, barrier: Barrier) -> Manifest:
    """Seal ``staging``'s output, hash it and its log, write the manifest and seal the rest
    (durable at ``barrier``); the manifest written. An OSError is raised as
    :class:`SealingFailed` from it; an output holding a named pipe, socket or device as
    :class:`UnpublishableOutput`."""
    action = "sealing the output"
    try:
        outputs, special = seal_and_hash(staging.output_dir, barrier)
        if special:
            raise UnpublishableOutput(
                "its output holds "
                + ", ".join(f"{kind} ({OUTPUT}/{rel})" for rel, kind in special)
                + ", which the cache cannot keep and --out cannot copy, so nothing of the "
                "step was published",
                where=f"step '{manifest.step}'",
                hint="Let the step write only files, folders and links to its output",
            )
        action = "hashing the log"
        try:
            log_sha256: str | None = sha256_file(os.fspath(staging.log_path))
        except FileNotFoundError:
            log_sha256 = None
        manifest = manifest.model_copy(update={"outputs": outputs, "log_sha256": log_sha256})
        action = "writing manifest.json"
        # No temporary file needed: nobody reads a staging folder before its rename.
        write_sealed(staging.path / MANIFEST, manifest.model_dump_json().encode(), barrier)
        action = "sealing the entry"
        for child in staging.path.iterdir():
            if child.name not in (OUTPUT, MANIFEST):
                seal_tree(child, barrier)
        barrier.add(str(staging.path))
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG and action == "sealing the output":
            raise UnpublishableOutput(
                "its output holds folders nested so deep that their path is longer than this "
                f"system allows ({err.strerror}), which the cache cannot keep, so nothing of the "
                "step was published",
                where=f"step '{manifest.step}'",
                hint="Let the step write a shallower tree to its output",
            ) from err
        raise SealingFailed(action) from err
    return manifest


def seal_and_hash(root: Path, barrier: Barrier) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """:func:`~kliko_async.cache.durable.seal_tree` and
    :func:`~kliko_async.cache.hashing.hash_tree` of ``root`` in one look at each folder: every
    file and folder owner-writable only and added to ``barrier``, and the hashes in the order
    ``hash_tree`` gives them; with the special files (named pipes, sockets, devices) as
    ``seal_tree`` names them, which are not hashed.

    Two walks of the tree (each file looked at three times more) took a fifth of the time of a
    small step on a real cache. A folder is sealed before it is looked into, so one that its
    container made unreadable is read all the same; one that still cannot be read raises (it
    was skipped, and its files left out of the manifest). No recursion: a hostile tree's depth
    costs a list, not the stack. An OSError while hashing is raised as :class:`SealingFailed`
    ("hashing the output"). One difference in order, for anyone but root: a link to a folder
    inside a folder that was not searchable before it was sealed here is taken for a file (as
    ``os.walk`` takes a link it cannot follow), so its key comes among the files' keys; its
    value (``symlink:`` and its target) is the same.
    """
    top = os.fspath(root)
    if not stat.S_ISDIR(os.lstat(top).st_mode):  # as seal_tree and hash_tree take it
        seal_one(top, barrier)
        return {}, []
    outputs: dict[str, str] = {}
    special: list[tuple[str, str]] = []
    folders = [(top, "")]
    while folders:
        folder, prefix = folders.pop()
        os.chmod(folder, DIR_MODE)
        barrier.add(folder)
        with os.scandir(folder) as found:  # names and kinds only: a folder may hold a million
            listed = sorted((entry.name, _kind(entry)) for entry in found)
        for name, kind in listed:  # as hash_tree: files and links, then links to folders
            if kind == _OTHER:
                _seal_and_hash_one(folder, name, prefix, barrier, outputs, special)
        for name, kind in listed:
            if kind == _LINKED_FOLDER:
                outputs[prefix + name] = "symlink:" + os.readlink(os.path.join(folder, name))
        folders.extend(
            (os.path.join(folder, name), f"{prefix}{name}/")
            for name, kind in reversed(listed)
            if kind == _FOLDER
        )
    return outputs, sorted(special)


_FOLDER, _LINKED_FOLDER, _OTHER = 0, 1, 2
"""What a name in a folder is, as os.walk (and so hash_tree) sorts them: a folder (entered), a
link to a folder (listed among the folders, never entered), anything else."""


def _kind(entry: os.DirEntry[str]) -> int:
    if not entry.is_symlink():
        return _FOLDER if entry.is_dir(follow_symlinks=False) else _OTHER
    return _LINKED_FOLDER if _leads_to_a_folder(entry) else _OTHER


def _seal_and_hash_one(
    folder: str,
    name: str,
    prefix: str,
    barrier: Barrier,
    outputs: dict[str, str],
    special: list[tuple[str, str]],
) -> None:
    """A file sealed and hashed into ``outputs``, a link's target text noted, or a special
    file named in ``special``."""
    path, rel = os.path.join(folder, name), prefix + name
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        outputs[rel] = "symlink:" + os.readlink(path)
    elif not stat.S_ISREG(mode):
        special.append((rel, special_kind(mode)))
    else:
        os.chmod(path, EXEC_FILE_MODE if mode & 0o111 else FILE_MODE)
        barrier.add(path)
        try:
            outputs[rel] = sha256_file(path)
        except OSError as err:
            raise SealingFailed("hashing the output") from err


def _leads_to_a_folder(link: os.DirEntry[str]) -> bool:
    try:
        return link.is_dir()
    except OSError:  # as os.walk takes it
        return False
