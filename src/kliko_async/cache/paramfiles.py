"""File parameters as the container sees them: private copies, hashed as they are copied.

A file parameter is part of a step's cache key by its content. Hashing the user's file at
planning and copying it later would let an edit in between publish new content under the old
key; so a run copies every file parameter once, at planning, into a private read-only folder laid
out as ``/param_files``, hashing the bytes as it copies them. The container is given exactly that
folder, so the key always describes what it saw. A dry run, which starts no container, hashes the
user's files in place instead (same bytes, same key).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from kliko_async.cache.durable import remove_tree
from kliko_async.cache.hashing import sha256_file
from kliko_async.cache.treewalk import walk
from kliko_async.errors import CacheError, ParameterError, cache_hint, os_error_text
from kliko_async.model.parameters import PARAM_FILES_DIR, FileParameter, ValidatedParameters

__all__ = ["FileSnapshots", "hash_files"]

_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
_FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def hash_files(params: ValidatedParameters, *, where: str) -> ValidatedParameters:
    """``params`` with the SHA-256 of every file parameter, read where the files are."""
    hashed = [
        _with_hash(item, functools.partial(sha256_file, item.host_path), "read", where)
        for item in params.files
    ]
    return params.model_copy(update={"files": tuple(hashed)})


class FileSnapshots:
    """The private copies of one run's file parameters, under one folder it owns.

    The same host file given to several steps is copied once and hard-linked after that.
    """

    def __init__(self, folder: Path, cache_root: Path) -> None:
        self.folder = folder
        self._cache_root = cache_root
        self._steps = 0
        self._copies: dict[Path, tuple[Path, str]] = {}

    def take(self, params: ValidatedParameters, *, where: str) -> ValidatedParameters:
        """``params`` pointing at fresh read-only copies of its files, with their hashes."""
        if not params.files:
            return params
        self._steps += 1
        root = self.folder / str(self._steps)
        taken = []
        for item in params.files:
            target = root / Path(item.container_path).relative_to(PARAM_FILES_DIR)
            copy = functools.partial(self._copy, item.host_path, target)
            try:
                taken.append(_with_hash(item, copy, "copied into the cache folder", where))
            except ParameterError as error:
                cause = error.__cause__
                if isinstance(cause, OSError) and cause.errno in _FULL_OR_READ_ONLY:
                    # The cache's disk is at fault, not the parameter: a cache error (status 1,
                    # not the 2 of an input that cannot be used), saying what to do about it.
                    raise CacheError(
                        error.message, where=where, hint=cache_hint(cause, self._cache_root)
                    ) from cause
                raise
        for folder, _dirnames, _files in walk(root):  # never enters a link
            os.chmod(folder, 0o555)
        return params.model_copy(update={"files": tuple(taken), "files_root": root})

    def discard(self) -> None:
        """Delete every copy (the run is over); a folder that was never made is fine."""
        with suppress(OSError):
            remove_tree(self.folder)

    def _copy(self, source: Path, target: Path) -> str:
        target.parent.mkdir(parents=True, exist_ok=True)
        known = self._copies.get(source)
        if known is not None:
            os.link(known[0], target)
            return known[1]
        digest = hashlib.sha256()
        with source.open("rb") as reader, target.open("xb") as writer:
            while chunk := reader.read(_CHUNK):
                digest.update(chunk)
                if chunk == _ZEROS[: len(chunk)]:  # a hole, or zeros: kept as a hole
                    writer.seek(len(chunk), os.SEEK_CUR)
                else:
                    writer.write(chunk)
            writer.truncate()  # the length, with any hole at the end
            writer.flush()
        target.chmod(0o444)
        self._copies[source] = (target, digest.hexdigest())
        return digest.hexdigest()


def _with_hash(
    item: FileParameter, hasher: Callable[[], str], action: str, where: str
) -> FileParameter:
    try:
        digest = hasher()
    except OSError as error:
        raise ParameterError(
            f"file parameter {item.name!r} ({item.host_path}) could not be {action}: "
            f"{os_error_text(error)}",
            where=where,
        ) from error
    return item.model_copy(update={"sha256": digest})
