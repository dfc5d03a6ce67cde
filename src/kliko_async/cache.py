"""The content-addressed cache of finished Kliko steps.

Kliko 0.8 trusted a folder's existence, so changing a first step's parameters still served stale
later steps. Here an entry is found by a key that hashes everything that determines a step's output
(image id, io mode, parameters, parameter file contents, the keys of its inputs, environment,
command), so a change anywhere upstream changes every key downstream.

Layout under the root folder::

    entries/<key[:2]>/<key>/{output/, log.txt, manifest.json}   published, read-only
    tmp/<key>.<pid>.<random>/                                   staging (same filesystem)
    locks/<key>.lock                                            per-key flock files
    specs/                                                      reserved for others; ignored here

A step is run into a staging folder under ``tmp/`` and published with one ``os.rename`` into
``entries/``; as ``manifest.json`` is written before that rename, a folder without a readable
manifest is never a finished entry, and a half-written entry can never be found.

Entries are removed by first renaming them back under ``tmp/`` (as ``<key>.<pid>.<random>``) and
deleting them there, so ``entries/`` never shows a partly deleted entry either, and a removal
interrupted by a crash is finished later by :meth:`Cache.clean_stale_staging`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kliko_async.durable import (
    DIR_MODE,
    fsync_dir,
    remove_tree,
    seal_tree,
    tree_size,
    write_sealed,
)
from kliko_async.errors import CacheError
from kliko_async.hashing import hash_tree
from kliko_async.processes import pid_alive

__all__ = [
    "CACHE_FORMAT_VERSION",
    "Cache",
    "CacheEntry",
    "KeyIngredients",
    "Manifest",
    "Staging",
    "VerifyProblem",
    "cache_key",
    "default_cache_dir",
]

CACHE_FORMAT_VERSION = 1
"""Part of every key and every manifest; bump it when the meaning of an entry changes."""

_ENTRIES = "entries"
_TMP = "tmp"
_LOCKS = "locks"
_MANIFEST = "manifest.json"
_OUTPUT = "output"
_LOG = "log.txt"

# Keys name folders and files, so they may not contain separators or dots (a staging folder is
# named ``<key>.<pid>.<random>``). Real keys are 64 lowercase hex digits; anything this pattern
# allows is accepted so that tests and tools may use short readable keys.
_KEY_RE = re.compile(r"[A-Za-z0-9_-]{2,128}")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kliko-async``, or ``~/.cache/kliko-async`` when that is unset.

    As the XDG base directory spec asks, a relative ``$XDG_CACHE_HOME`` is ignored.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "kliko-async"


class KeyIngredients(BaseModel):
    """Everything that determines a step's output; :func:`cache_key` hashes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_id: str
    io: Literal["split", "join"]
    parameters: dict[str, Any]
    file_hashes: dict[str, str]
    inputs: dict[str, str]
    """Input step name -> that step's cache key."""
    env: dict[str, str] = Field(default_factory=dict)
    command: list[str] | None = None


def cache_key(ingredients: KeyIngredients) -> str:
    """The hex SHA-256 of the canonical JSON of ``ingredients`` and :data:`CACHE_FORMAT_VERSION`.

    Canonical means sorted keys, no optional whitespace and ASCII only, so the order in which
    parameters or inputs were given never matters, while every name and value does.
    """
    payload = {
        "cache_format_version": CACHE_FORMAT_VERSION,
        "ingredients": ingredients.model_dump(mode="json"),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class Manifest(BaseModel):
    """What an entry holds and how it was made; ``manifest.json`` in the entry folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = CACHE_FORMAT_VERSION
    key: str
    step: str
    image: str
    image_id: str
    io: str
    parameters: dict[str, Any]
    inputs: dict[str, str]
    started_at: datetime
    finished_at: datetime
    duration_s: float
    exit_code: int
    outputs: dict[str, str] = Field(default_factory=dict)
    """Path relative to ``output/`` -> SHA-256, as :func:`kliko_async.hashing.hash_tree` gives."""


class _EntryFolder(BaseModel):
    """The layout shared by a staging folder and the entry it becomes: output/ and log.txt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    path: Path

    @property
    def output_dir(self) -> Path:
        return self.path / _OUTPUT

    @property
    def log_path(self) -> Path:
        return self.path / _LOG


class CacheEntry(_EntryFolder):
    """A published, complete and read-only entry."""

    manifest: Manifest

    def size_bytes(self) -> int:
        """Apparent size (sum of ``st_size``) of every file in the entry, manifest and log too."""
        return tree_size(self.path)


class Staging(_EntryFolder):
    """A private folder under ``tmp/`` that a step writes into before it is published.

    :meth:`Cache.stage` has created its ``output/``.
    """


class VerifyProblem(BaseModel):
    """One thing :meth:`Cache.verify` found wrong.

    ``path`` is relative to the entry folder (``output/a.txt``, ``manifest.json``) or ``None``
    when the problem concerns the whole entry. ``problem`` is one of: ``content changed``,
    ``missing``, ``unexpected file``, ``output folder missing``, ``manifest missing``,
    ``manifest unreadable``, ``manifest key mismatch``, ``misplaced entry``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    path: str | None
    problem: str

    def __str__(self) -> str:
        return (
            f"{self.key}: {self.path}: {self.problem}"
            if self.path
            else f"{self.key}: {self.problem}"
        )


class Cache:
    """The cache under one root folder. Creating it does not touch the disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- paths ---------------------------------------------------------------------------------

    @property
    def _entries_dir(self) -> Path:
        return self.root / _ENTRIES

    @property
    def _tmp_dir(self) -> Path:
        return self.root / _TMP

    @property
    def _locks_dir(self) -> Path:
        return self.root / _LOCKS

    def _entry_path(self, key: str) -> Path:
        return self._entries_dir / key[:2] / key

    @property
    def specs_dir(self) -> Path:
        """Where kliko.yml files read out of images are remembered, one per image ID."""
        return self.root / "specs"

    def entry_path(self, key: str) -> Path:
        """Where the entry of ``key`` is (or will be) published; it exists only once complete."""
        _check_key(key)
        return self._entry_path(key)

    def _new_tmp_path(self, key: str) -> Path:
        return self._tmp_dir / f"{key}.{os.getpid()}.{secrets.token_hex(6)}"

    # -- setup ---------------------------------------------------------------------------------

    def ensure_writable(self) -> None:
        """Create the cache folders and prove each can be written to by writing a probe file."""
        for folder in (self._entries_dir, self._tmp_dir, self._locks_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=folder) as probe:
                    probe.write(b"kliko-async write probe\n")
                    probe.flush()
                    os.fsync(probe.fileno())
            except OSError as err:
                raise CacheError(
                    f"cache folder {self.root} is not writable ({_describe(err)})",
                    where=str(folder),
                    hint=_hint_for(err, self.root),
                ) from err

    # -- lookup and publish --------------------------------------------------------------------

    def lookup(self, key: str) -> CacheEntry | None:
        """The published entry for ``key``, or ``None``.

        Only a folder with a readable manifest of this format whose key matches counts. This is
        one manifest read and one stat, with no hashing: use :meth:`verify` to check contents.
        """
        if not _KEY_RE.fullmatch(key):
            return None
        return self._load_entry(self._entry_path(key), key)

    def stage(self, key: str) -> Staging:
        """A fresh staging folder under ``tmp/`` with an empty ``output/`` inside."""
        _check_key(key)
        path = self._new_tmp_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()
            (path / _OUTPUT).mkdir()
        except OSError as err:
            with suppress(OSError):
                remove_tree(path)
            raise CacheError(
                f"could not create a staging folder: {_describe(err)}",
                where=str(path),
                hint=_hint_for(err, self.root),
            ) from err
        return Staging(key=key, path=path)

    def publish(self, staging: Staging, manifest_without_outputs: Manifest) -> CacheEntry:
        """Make ``staging`` the entry of its key, atomically.

        The output tree is fsynced and made read-only, hashed into ``manifest.outputs``, the
        manifest is written and fsynced, and the folder renamed into
        ``entries/``. If another process published the same key first, the staging folder is
        discarded and the existing entry returned. On any OS error the staging folder is
        discarded and :class:`CacheError` raised; ``entries/`` then holds nothing of it.
        """
        key = staging.key
        step = manifest_without_outputs.step
        if manifest_without_outputs.key != key:
            self._discard_quietly(staging)
            raise CacheError(
                f"manifest key {manifest_without_outputs.key} does not match staging key {key}",
                where=f"step '{step}'",
            )
        existing = self.lookup(key)
        if existing is not None:
            self._discard_quietly(staging)
            return existing

        final = self._entry_path(key)
        action = "making the output read-only"
        try:
            seal_tree(staging.output_dir)
            action = "hashing the output"
            outputs = hash_tree(staging.output_dir)
            manifest = manifest_without_outputs.model_copy(update={"outputs": outputs})
            action = "writing manifest.json"
            # No temporary file needed: nobody reads a staging folder before its rename.
            write_sealed(staging.path / _MANIFEST, manifest.model_dump_json(indent=2).encode())
            action = "making the entry read-only"
            for child in staging.path.iterdir():
                if child.name not in (_OUTPUT, _MANIFEST):
                    seal_tree(child)
            fsync_dir(staging.path)
            action = "creating the entry folder"
            final.parent.mkdir(parents=True, exist_ok=True)
            action = "moving the entry into place"
            winner = self._rename_into_place(staging, final)
        except OSError as err:
            self._discard_quietly(staging)
            raise CacheError(
                f"could not publish its cache entry: {action} failed ({_describe(err)})",
                where=f"step '{step}'",
                hint=_hint_for(err, self.root),
            ) from err
        if winner is not None:
            self._discard_quietly(staging)
            return winner
        # Published. What follows only makes it more durable and tidy; it cannot make it partial.
        with suppress(OSError):
            fsync_dir(final.parent)
        with suppress(OSError):
            os.chmod(final, DIR_MODE)
        return CacheEntry(key=key, path=final, manifest=manifest)

    def _rename_into_place(self, staging: Staging, final: Path) -> CacheEntry | None:
        """Rename ``staging`` to ``final``; the existing entry if another process won instead."""
        for _attempt in range(5):
            try:
                os.rename(staging.path, final)
                return None
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            existing = self.lookup(staging.key)
            if existing is not None:
                return existing
            # Something that is not a valid entry is in the way: move it aside and retry.
            self._move_aside(final)
        raise OSError(errno.EEXIST, "the entry folder kept being occupied", str(final))

    def discard(self, staging: Staging) -> None:
        """Delete a staging folder, read-only parts included. A missing folder is fine."""
        if staging.path.parent != self._tmp_dir:
            raise CacheError(
                "refusing to delete a folder that is not a staging folder of this cache",
                where=str(staging.path),
            )
        try:
            remove_tree(staging.path)
        except OSError as err:
            raise CacheError(
                f"could not delete the staging folder ({_describe(err)})",
                where=str(staging.path),
                hint=_hint_for(err, self.root),
            ) from err

    def _discard_quietly(self, staging: Staging) -> None:
        with suppress(CacheError):
            self.discard(staging)

    # -- locking -------------------------------------------------------------------------------

    @asynccontextmanager
    async def lock(
        self, key: str, *, shared: bool = False, poll: float = 0.05
    ) -> AsyncIterator[None]:
        """Hold the lock of ``key``, against other processes and other tasks alike.

        Exclusive (the default) while computing ``key``; ``shared`` while reading its entry as
        an input, which keeps ``gc`` (and a forced re-run elsewhere) from removing it meanwhile.
        ``flock`` locks belong to open file descriptions, and every call opens the lock file
        anew, so two tasks of one process exclude each other just as two processes do. Waiting
        polls with ``anyio.sleep`` and can be cancelled. Lock files are never deleted: deleting
        one while another process waits on it would let two holders in.
        """
        fd = self._open_lock(key)
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await anyio.sleep(poll)
                except OSError as err:
                    raise CacheError(
                        f"could not lock the lock file ({_describe(err)})",
                        where=str(self._lock_path(key)),
                        hint="Put the cache on a local filesystem that supports flock.",
                    ) from err
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _lock_path(self, key: str) -> Path:
        return self._locks_dir / f"{key}.lock"

    def _open_lock(self, key: str) -> int:
        _check_key(key)
        path = self._lock_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise CacheError(
                f"could not open the lock file ({_describe(err)})",
                where=str(path),
                hint=_hint_for(err, self.root),
            ) from err

    def _remove_unless_in_use(self, entry: CacheEntry) -> bool:
        """Remove ``entry`` unless a run holds its lock (computing it, or reading it as input)."""
        fd = self._open_lock(entry.key)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                self._remove_path(entry.path)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return True

    # -- listing and removal -------------------------------------------------------------------

    def _entry_dirs(self) -> Iterator[Path]:
        """Every folder at ``entries/<xx>/<name>``, valid or not, in sorted order."""
        for prefix in _sorted_subdirs(self._entries_dir):
            if len(prefix.name) == 2:
                yield from _sorted_subdirs(prefix)

    def _load_entry(self, path: Path, key: str) -> CacheEntry | None:
        manifest = _read_manifest(path)
        if (
            manifest is None
            or manifest.key != key
            or manifest.format_version != CACHE_FORMAT_VERSION
            or not (path / _OUTPUT).is_dir()
        ):
            return None
        return CacheEntry(key=key, path=path, manifest=manifest)

    def _load_dir(self, path: Path) -> CacheEntry | None:
        key = path.name
        if not _KEY_RE.fullmatch(key) or path.parent.name != key[:2]:
            return None
        return self._load_entry(path, key)

    def entries(self) -> Iterator[CacheEntry]:
        """Every valid published entry, sorted by key."""
        for path in self._entry_dirs():
            entry = self._load_dir(path)
            if entry is not None:
                yield entry

    def remove(self, key: str) -> bool:
        """Delete the entry folder of ``key`` (valid or not); whether there was one."""
        _check_key(key)
        path = self._entry_path(key)
        if not path.is_dir() or path.is_symlink():
            return False
        try:
            self._move_aside(path)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise CacheError(
                f"could not remove the cache entry ({_describe(err)})",
                where=str(path),
                hint=_hint_for(err, self.root),
            ) from err
        return True

    def _move_aside(self, path: Path) -> None:
        """Rename an entry folder out of ``entries/`` into ``tmp/``, then delete it there."""
        trash = self._new_tmp_path(path.name)
        trash.parent.mkdir(parents=True, exist_ok=True)
        # Moving a folder to another parent rewrites its "..", which needs write permission.
        os.chmod(path, 0o755)
        os.rename(path, trash)
        remove_tree(trash)

    def clean_stale_staging(self) -> int:
        """Delete staging folders whose process is gone; how many were deleted.

        A name that does not parse as ``<key>.<pid>.<random>`` is left alone.
        """
        removed = 0
        if not self._tmp_dir.is_dir():
            return 0
        for child in sorted(self._tmp_dir.iterdir()):
            parts = child.name.split(".", 2)
            if len(parts) != 3 or not parts[1].isdigit():
                continue
            if pid_alive(int(parts[1])):
                continue
            try:
                remove_tree(child)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise CacheError(
                    f"could not delete a stale staging folder ({_describe(err)})",
                    where=str(child),
                    hint=_hint_for(err, self.root),
                ) from err
            removed += 1
        return removed

    def gc(
        self,
        *,
        older_than: timedelta | None = None,
        max_size: int | None = None,
        now: datetime | None = None,
    ) -> list[CacheEntry]:
        """Tidy the cache; the valid entries removed, in order of removal.

        Always deletes stale staging folders (dead pids) and invalid entry folders (no or bad
        manifest; these are not in the returned list, having no manifest to report). Then
        removes entries whose ``finished_at`` is more than ``older_than`` before ``now``, and
        then, while the total size of entries exceeds ``max_size`` bytes, the entry with the
        oldest ``finished_at`` (ties by key). Age is the manifest's ``finished_at`` rather
        than an access time, because ``lookup`` stays read-only and atime is often disabled.
        An entry whose lock a run holds (being computed, or read as a step's input) is kept.
        """
        now = _aware(now) if now is not None else datetime.now(UTC)
        self.clean_stale_staging()
        kept: list[CacheEntry] = []
        for path in list(self._entry_dirs()):
            entry = self._load_dir(path)
            if entry is None:
                self._remove_path(path)
            else:
                kept.append(entry)

        removed: list[CacheEntry] = []
        if older_than is not None:
            young: list[CacheEntry] = []
            for entry in kept:
                old = now - _aware(entry.manifest.finished_at) > older_than
                if old and self._remove_unless_in_use(entry):
                    removed.append(entry)
                else:
                    young.append(entry)
            kept = young

        if max_size is not None:
            kept.sort(key=lambda e: (_aware(e.manifest.finished_at), e.key))
            sizes = [entry.size_bytes() for entry in kept]
            total = sum(sizes)
            for entry, size in zip(kept, sizes, strict=True):
                if total <= max_size:
                    break
                if self._remove_unless_in_use(entry):
                    removed.append(entry)
                    total -= size
        return removed

    def _remove_path(self, path: Path) -> None:
        try:
            self._move_aside(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise CacheError(
                f"could not remove the cache entry ({_describe(err)})",
                where=str(path),
                hint=_hint_for(err, self.root),
            ) from err

    def verify(self) -> list[VerifyProblem]:
        """Re-hash every entry's output against its manifest; every problem found."""
        problems: list[VerifyProblem] = []
        for path in self._entry_dirs():
            key = path.name
            if not _KEY_RE.fullmatch(key) or path.parent.name != key[:2]:
                problems.append(VerifyProblem(key=key, path=None, problem="misplaced entry"))
                continue
            if not (path / _MANIFEST).exists():
                problems.append(VerifyProblem(key=key, path=_MANIFEST, problem="manifest missing"))
                continue
            manifest = _read_manifest(path)
            if manifest is None or manifest.format_version != CACHE_FORMAT_VERSION:
                problems.append(
                    VerifyProblem(key=key, path=_MANIFEST, problem="manifest unreadable")
                )
                continue
            if manifest.key != key:
                problems.append(
                    VerifyProblem(key=key, path=_MANIFEST, problem="manifest key mismatch")
                )
                continue
            output = path / _OUTPUT
            if not output.is_dir():
                problems.append(
                    VerifyProblem(key=key, path=_OUTPUT, problem="output folder missing")
                )
                continue
            try:
                actual = hash_tree(output)
            except OSError as err:
                problems.append(
                    VerifyProblem(key=key, path=_OUTPUT, problem=f"unreadable ({_describe(err)})")
                )
                continue
            expected = manifest.outputs
            for rel in sorted(expected.keys() | actual.keys()):
                where = f"{_OUTPUT}/{rel}"
                if rel not in actual:
                    problems.append(VerifyProblem(key=key, path=where, problem="missing"))
                elif rel not in expected:
                    problems.append(VerifyProblem(key=key, path=where, problem="unexpected file"))
                elif actual[rel] != expected[rel]:
                    problems.append(VerifyProblem(key=key, path=where, problem="content changed"))
        return problems

    def total_size(self) -> int:
        """Apparent size in bytes of all valid entries (staging and locks not counted)."""
        return sum(entry.size_bytes() for entry in self.entries())


# -- filesystem --------------------------------------------------------------------------------


def _check_key(key: str) -> None:
    if not _KEY_RE.fullmatch(key):
        raise CacheError(
            f"'{key}' is not a cache key",
            hint="Keys are hex digests from cache_key().",
        )


def _read_manifest(entry_path: Path) -> Manifest | None:
    try:
        return Manifest.model_validate_json((entry_path / _MANIFEST).read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


def _aware(moment: datetime) -> datetime:
    """``moment`` with a time zone; a naive one is taken as local time, as Python does."""
    return moment if moment.tzinfo is not None else moment.astimezone()


def _sorted_subdirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as scan:
            return sorted(Path(item.path) for item in scan if item.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _describe(err: OSError) -> str:
    return err.strerror or str(err)


def _hint_for(err: OSError, root: Path) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"The disk holding {root} is full; free space, for example with "
            "'kliko-async cache gc --max-size 10G'."
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Check that {root} and everything in it belong to you and can be written."
    return f"Check the cache folder {root}."
