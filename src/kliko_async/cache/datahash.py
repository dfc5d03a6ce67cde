"""The key of a data input (a host file or folder a chain starts from): a digest of every entry's
relative path, kind, executable bit and content, each file by its own SHA-256.

A file is read only when it is new or its stat changed: the stat cache (``data-hashes.json`` in
the cache folder) keeps each file's digest with its size, ``mtime_ns``, inode and ``ctime_ns``.
An unchanged 20 GB folder costs a walk of ``stat`` calls; one changed file costs reading that
file; a ``touch`` reads it again and changes no key. A file modified in the last two seconds
is not remembered (a write in the same clock tick as the hash could go unseen, as git's "racy
clean" entries), so it is read again next time. Files are hashed in worker threads.

What a container could not be given safely is refused, naming it: a link that leads outside
the data (or is absolute), a named pipe, socket or device, a file or folder that cannot be read.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kliko_async.cache.durable import special_kind
from kliko_async.cache.hashing import sha256_file

DATA_FORMAT = "kliko-data-1"
"""Named in every data digest: a change of what is hashed changes every data key."""
DATA_KEY_PREFIX = "data:"
"""How a consumer's key names a data input: this and the data's digest (never a cache key)."""
STAT_CACHE = "data-hashes.json"
RECENT_NS = 2_000_000_000
"""Files changed this recently (ns) are hashed but not remembered."""
_THREADS = 4


class DataError(ValueError):
    """A data input that cannot be used as it is; the text names the path and why."""


@dataclass(frozen=True)
class DataDigest:
    """A data input's digest, and what it took."""

    root: Path
    """The file or folder itself, links to it resolved: what a container is given."""
    digest: str
    files: int
    size: int
    hashed_files: int
    hashed_bytes: int


@dataclass(frozen=True)
class _Entry:
    rel: str
    kind: str  # "file", "dir" or "link"
    path: str
    info: os.stat_result | None = None
    target: str = ""


class StatCache:
    """File digests by absolute path, with the stat they were made from (``data-hashes.json``)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._known: dict[str, list[Any]] = {}
        self._changed = False
        if path is not None:
            try:
                loaded = json.loads(path.read_text())
            except (OSError, ValueError):
                loaded = {}
            if isinstance(loaded, dict) and loaded.get("format") == DATA_FORMAT:
                files = loaded.get("files")
                self._known = files if isinstance(files, dict) else {}

    def get(self, path: str, info: os.stat_result) -> str | None:
        known = self._known.get(path)
        if isinstance(known, list) and known[:4] == _stamp(info):
            return str(known[4])
        return None

    def put(self, path: str, info: os.stat_result, digest: str) -> None:
        if time.time_ns() - info.st_mtime_ns < RECENT_NS:
            self._known.pop(path, None)
        else:
            self._known[path] = [*_stamp(info), digest]
        self._changed = True

    def forget_stale(self) -> int:
        """Drop the digests of files that are gone or changed since (they would be read again
        anyway); how many went. The file otherwise keeps every data file ever keyed, and each
        run with data reads and rewrites all of it. Then saved. Blocking: a stat a file."""
        stale = []
        for path, known in self._known.items():
            try:
                if not isinstance(known, list) or known[:4] != _stamp(os.lstat(path)):
                    stale.append(path)
            except OSError:
                stale.append(path)
        for path in stale:
            del self._known[path]
        self._changed = self._changed or bool(stale)
        self.save()
        return len(stale)

    def save(self) -> None:
        """Write the cache (atomically) if anything changed; a failure only costs speed."""
        if self.path is None or not self._changed:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps({"format": DATA_FORMAT, "files": self._known}))
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
        self._changed = False


def _stamp(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]


def digest_data(path: Path, stats: StatCache) -> DataDigest:
    """The digest of the file or folder at ``path`` (blocking: run it in a worker thread)."""
    root = Path(os.path.realpath(path))
    try:
        info = os.stat(root)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except OSError as error:
        raise DataError(f"{path} cannot be looked at: {error.strerror or error}") from None
    if stat.S_ISREG(info.st_mode):
        entries = [_Entry(rel=root.name, kind="file", path=str(root), info=info)]
    elif stat.S_ISDIR(info.st_mode):
        entries = _walk(root, path)
    else:
        raise DataError(f"{path} is {special_kind(info.st_mode)}, not a file or folder")
    digests = _file_digests([e for e in entries if e.kind == "file"], stats, path)
    total = hashlib.sha256(f"{DATA_FORMAT}\n".encode())
    size = 0
    for entry in entries:
        if entry.kind == "file":
            assert entry.info is not None
            size += entry.info.st_size
            executable = "x" if entry.info.st_mode & stat.S_IXUSR else "-"
            line = f"file\0{entry.rel}\0{executable}\0{digests[entry.path][0]}\n"
        elif entry.kind == "link":
            line = f"link\0{entry.rel}\0{entry.target}\n"
        else:
            line = f"dir\0{entry.rel}\n"
        total.update(line.encode("utf-8", "surrogateescape"))
    hashed = [d for d in digests.values() if d[1]]
    return DataDigest(
        root=root,
        digest=total.hexdigest(),
        files=len(digests),
        size=size,
        hashed_files=len(hashed),
        hashed_bytes=sum(d[2] for d in hashed),
    )


def _walk(root: Path, given: Path) -> list[_Entry]:
    """Every entry under ``root``, sorted by path, checked; links are never followed."""
    entries: list[_Entry] = []
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            children = list(os.scandir(folder))
        except OSError as error:
            raise DataError(
                f"{given}: the folder {folder} cannot be read: {error.strerror or error}"
            ) from None
        for child in children:
            rel = os.path.relpath(child.path, root)
            info = child.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(child.path)
                _check_link(root, Path(child.path), target, given)
                entries.append(_Entry(rel=rel, kind="link", path=child.path, target=target))
            elif stat.S_ISDIR(info.st_mode):
                entries.append(_Entry(rel=rel, kind="dir", path=child.path))
                folders.append(Path(child.path))
            elif stat.S_ISREG(info.st_mode):
                if not os.access(child.path, os.R_OK):
                    raise DataError(f"{given}: {child.path} cannot be read (permission denied)")
                entries.append(_Entry(rel=rel, kind="file", path=child.path, info=info))
            else:
                raise DataError(
                    f"{given}: {child.path} is {special_kind(info.st_mode)}; data may hold "
                    "only files, folders and links within it"
                )
    entries.sort(key=lambda e: e.rel)
    return entries


def _check_link(root: Path, link: Path, target: str, given: Path) -> None:
    """Refuse a link that is absolute or leads outside ``root``: the container would not see
    what it points at (or would see its own file system there)."""
    if os.path.isabs(target):
        raise DataError(
            f"{given}: {link} is a link to the absolute path {target}, which a container "
            "would not find; make it relative, or copy what it points at into the data"
        )
    resolved = os.path.normpath(os.path.join(link.parent, target))
    if os.path.commonpath([resolved, str(root)]) != str(root):
        raise DataError(
            f"{given}: {link} is a link leading outside the data (to {target}); copy what it "
            "points at into the data"
        )


def _file_digests(
    files: list[_Entry], stats: StatCache, given: Path
) -> dict[str, tuple[str, bool, int]]:
    """Digest, whether it was read now, and size, by path; unchanged files from ``stats``."""
    found: dict[str, tuple[str, bool, int]] = {}
    to_hash: list[_Entry] = []
    for entry in files:
        assert entry.info is not None
        known = stats.get(entry.path, entry.info)
        if known is not None:
            found[entry.path] = (known, False, entry.info.st_size)
        else:
            to_hash.append(entry)

    def read(entry: _Entry) -> tuple[_Entry, str]:
        try:
            return entry, sha256_file(Path(entry.path))
        except OSError as error:
            raise DataError(
                f"{given}: {entry.path} cannot be read: {error.strerror or error}"
            ) from None

    with concurrent.futures.ThreadPoolExecutor(_THREADS, "kliko-data-hash") as pool:
        for entry, digest in pool.map(read, to_hash):
            assert entry.info is not None
            found[entry.path] = (digest, True, entry.info.st_size)
            stats.put(entry.path, entry.info, digest)
    return found
