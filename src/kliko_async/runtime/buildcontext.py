"""The context of a ``build:`` folder: what ``docker build`` would send, sent as a stream.

What is sent: every file, folder and link of the folder that its ``.dockerignore`` does not
exclude (:mod:`kliko_async.runtime.dockerignore`), walked as moby's ``archive.TarWithOptions``
walks it, with the Dockerfile and ``.dockerignore`` always. The engine's build digest label is
made from the same list, so a file that ``.dockerignore`` lists changes neither the image nor
any step's key. The tar is made while it is read, a piece at a time: memory stays small
whatever the folder holds, and an excluded file is never opened.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kliko_async.errors import ImageError, UnusableBuildFolder
from kliko_async.runtime.dockerignore import IGNORE_FILE, IgnorePatternError, IgnoreRules

DOCKERFILE = "Dockerfile"
CONTEXT_ENCODING = "identity"
"""The build request's Content-Encoding: a plain tar, as ``docker build`` sends by default
(the engine finds compression by itself; compressing a local upload only costs time)."""

_IGNORE_FILE_LIMIT = 1 << 20
_PIECE = 1 << 16


@dataclass(frozen=True, slots=True)
class ContextMember:
    """One entry of a build context: its relative '/'-separated path and what the tar says."""

    path: str
    kind: Literal["file", "dir", "link"]
    mode: int
    mtime: int
    size: int = 0
    target: str = ""
    """A link's text (links are sent as links, never followed)."""


def read_ignore_rules(context: Path) -> IgnoreRules:
    """The rules of ``context``'s ``.dockerignore`` (none if it has none), with the Dockerfile
    and the ignore file itself excepted, as ``docker build`` does."""
    where = f"build '{context}'"
    path = context / IGNORE_FILE
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{IGNORE_FILE} is not a regular file", where=where)
        if info.st_size > _IGNORE_FILE_LIMIT:
            raise ImageError(
                f"{IGNORE_FILE} holds {info.st_size} bytes; at most {_IGNORE_FILE_LIMIT} are read",
                where=where,
            )
        data = path.read_bytes()[:_IGNORE_FILE_LIMIT]
    except FileNotFoundError:
        return IgnoreRules(())
    except OSError as exc:
        raise ImageError(f"cannot read {IGNORE_FILE}: {exc.strerror}", where=where) from None
    try:
        rules = IgnoreRules.from_text(data.decode("utf-8", "surrogateescape"))
    except IgnorePatternError as exc:
        raise ImageError(
            f"{IGNORE_FILE}: {exc}", where=where, hint="Docker refuses it too; correct the line."
        ) from None
    return rules.with_exceptions([IGNORE_FILE, DOCKERFILE])


def context_members(context: Path) -> list[ContextMember]:
    """Everything a build of ``context`` sends, folders before what they hold, by name.

    Every file sent is opened once to check that it can be read, as ``docker build`` does, so
    that an unreadable file is an error now rather than a broken upload. Raises ImageError.
    """
    rules = read_ignore_rules(context)
    members: list[ContextMember] = []
    try:
        _walk(context, "", rules, None, members)
    except _Unreadable as problem:
        raise ImageError(problem.message, where=f"build '{context}'", hint=problem.hint) from None
    return members


class _Unreadable(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message, self.hint = message, hint


def _walk(
    folder: Path,
    prefix: str,
    rules: IgnoreRules,
    parent: tuple[bool, ...] | None,
    members: list[ContextMember],
) -> None:
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as exc:
        name = f"the folder {prefix.rstrip('/')}" if prefix else "the build folder"
        raise _Unreadable(f"cannot read {name}: {exc.strerror}") from None
    for entry in entries:
        path = prefix + entry.name
        excluded, matched = rules.match(path, parent) if rules else (False, ())
        is_dir = entry.is_dir(follow_symlinks=False)
        if excluded:
            # An excluded folder is still walked when an exception may bring back part of it;
            # the folder itself is not sent (the engine makes it for what it holds).
            if is_dir and rules.has_exceptions and rules.may_include_below(path):
                _walk(Path(entry.path), path + "/", rules, matched, members)
            continue
        member = _member(entry, path)
        if member is None:
            continue
        members.append(member)
        if member.kind == "dir":
            _walk(Path(entry.path), path + "/", rules, matched, members)


def _member(entry: os.DirEntry[str], path: str) -> ContextMember | None:
    """The member for ``entry``; None for what a context cannot hold (sockets, FIFOs)."""
    try:
        info = entry.stat(follow_symlinks=False)
        mode, mtime = stat.S_IMODE(info.st_mode), int(info.st_mtime)
        if stat.S_ISLNK(info.st_mode):
            return ContextMember(path, "link", mode, mtime, target=os.readlink(entry.path))
        if stat.S_ISDIR(info.st_mode):
            return ContextMember(path, "dir", mode, mtime)
        if stat.S_ISREG(info.st_mode):
            os.close(os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK))
            return ContextMember(path, "file", mode, mtime, size=info.st_size)
    except OSError as exc:
        raise _Unreadable(
            f"cannot read {path}: {exc.strerror}",
            hint=f"Make it readable, or list it in {IGNORE_FILE}.",
        ) from None
    return None


class ContextArchive(io.RawIOBase):
    """A tar of ``members`` of ``root``, made as it is read (for the engine's build call).

    Headers carry uid and gid 0, as ``docker build`` sends them. A file that changed after it
    was listed is sent at its listed size (cut, or filled with zero bytes), so the tar stays
    whole; :func:`context_members` is called just before sending.
    """

    def __init__(self, root: Path, members: list[ContextMember]) -> None:
        super().__init__()
        self._pieces = _tar_pieces(root, members)
        self._piece = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._piece:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._piece = memoryview(piece)
        size = min(len(buffer), len(self._piece))
        buffer[:size] = self._piece[:size]
        self._piece = self._piece[size:]
        return size

    def close(self) -> None:
        self._pieces.close()  # closes a file left half sent
        super().close()


def open_context_archive(context: Path) -> ContextArchive:
    """The build context of ``context`` as a tar stream (listing it now; blocking: call it in
    a worker thread). Raises ImageError for a bad ``.dockerignore`` or an unreadable file, and
    UnusableBuildFolder (bad input) for a folder without a Dockerfile."""
    if not (context / "Dockerfile").is_file():
        raise UnusableBuildFolder(
            "no Dockerfile in the build folder",
            where=f"build '{context}'",
            hint="Give the step's build: a folder holding a Dockerfile.",
        )
    return ContextArchive(context, context_members(context))


_TAR_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "link": tarfile.SYMTYPE}


def _tar_pieces(root: Path, members: list[ContextMember]) -> Generator[bytes, None, None]:
    for member in members:
        info = tarfile.TarInfo(member.path)
        info.type = _TAR_TYPES[member.kind]
        info.mode, info.mtime, info.uid, info.gid = member.mode, member.mtime, 0, 0
        info.size, info.linkname = member.size, member.target
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if member.kind == "file":
            yield from _file_blocks(root / member.path, member.size)
    yield bytes(2 * tarfile.BLOCKSIZE)


def _file_blocks(path: Path, size: int) -> Iterator[bytes]:
    """``size`` bytes of ``path`` then the padding to a whole tar block."""
    left = size
    with (
        contextlib.suppress(OSError),
        open(
            os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb", buffering=0
        ) as handle,
    ):
        while left > 0:
            piece = handle.read(min(left, _PIECE))
            if not piece:
                break
            left -= len(piece)
            yield piece
    while left > 0:  # the file shrank or vanished since it was listed
        piece = bytes(min(left, _PIECE))
        left -= len(piece)
        yield piece
    if size % tarfile.BLOCKSIZE:
        yield bytes(tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)
