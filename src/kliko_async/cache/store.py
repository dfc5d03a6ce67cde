"""The content-addressed store of finished Kliko steps: look up, stage, publish, remove.

An entry is found by its key (:mod:`kliko_async.cache.key`), which hashes everything that
determines a step's output. Layout under the root folder::

    entries/<key[:2]>/<key>/{output/, log.txt, manifest.json}   published, owner-writable only
    tmp/<key>.<pid>.<random>/                                   staging (same filesystem)
    locks/<key>.lock                                            per-key flock files (locks.py)
    runs/<run-id>.<pid>                                         keys live runs hold (holds.py)
    logs/<run-id>/<step>.log                                    logs of failed attempts
    specs/                                                      kliko.yml files read from images

A step is run into a staging folder under ``tmp/`` and published with one ``os.rename`` into
``entries/``; as ``manifest.json`` is written before that rename, a folder without a readable
manifest is never a finished entry, and a half-written entry can never be found.

Entries are removed by first renaming them back under ``tmp/`` (as ``<key>.<pid>.<random>``) and
deleting them there, so ``entries/`` never shows a partly deleted entry either, and a removal
interrupted by a crash is finished later by :func:`kliko_async.cache.upkeep.clean_stale_staging`.
Tidying and checking (``gc``, ``verify``) live in :mod:`kliko_async.cache.upkeep`.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, suppress
from pathlib import Path

from kliko_async.cache.durable import DIR_MODE, Barrier, remove_tree
from kliko_async.cache.entry import (
    OUTPUT,
    CacheEntry,
    Manifest,
    Staging,
    read_manifest,
)
from kliko_async.cache.key import CACHE_FORMAT_VERSION
from kliko_async.cache.locks import KeyLocks
from kliko_async.cache.processes import host_name
from kliko_async.cache.sealing import Sealed, SealingFailed, is_small, seal_staging_files
from kliko_async.errors import CacheError, UnusableCacheFolder, cache_os_error

__all__ = ["KEY_PATTERN", "RUN_LOGS", "RUN_RECORDS", "Cache", "default_cache_dir"]

_ENTRIES = "entries"
_TMP = "tmp"
_LOCKS = "locks"
RUN_LOGS = "logs"
"""``logs/<run-id>/<step>.log``: the logs of failed attempts, kept for people to read."""
RUN_RECORDS = "records"
"""``records/<run-id>.json``: what each run did, for ``kliko-async report`` (``runs/`` holds
live runs' keys)."""

KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{2,128}")
"""Keys name folders and files, so they may not contain separators or dots (a staging folder is
named ``<key>.<pid>.<random>``). Real keys are 64 lowercase hex digits; anything this pattern
allows is accepted so that tests and tools may use short readable keys."""


_TMP_RANDOM = secrets.token_hex(3)
_TMP_COUNT = itertools.count()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kliko-async``, or ``~/.cache/kliko-async`` when that is unset.

    As the XDG base directory spec asks, a relative ``$XDG_CACHE_HOME`` is ignored.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "kliko-async"


class Cache:
    """The cache under one root folder. Creating it does not touch the disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.locks = KeyLocks(self.root / _LOCKS, self.root)
        self._entries_dir = self.root / _ENTRIES
        self._tmp_dir = self.root / _TMP
        self._barrier = Barrier(self.root)
        self._publishing = threading.RLock()

    # -- paths ---------------------------------------------------------------------------------

    @property
    def tmp_dir(self) -> Path:
        return self._tmp_dir

    def _entry_path(self, key: str) -> Path:
        return Path(f"{self._entries_dir}/{key[:2]}/{key}")  # one Path, not three

    @property
    def specs_dir(self) -> Path:
        """Where kliko.yml files read out of images are remembered, one per image ID."""
        return self.root / "specs"

    def entry_path(self, key: str) -> Path:
        """Where the entry of ``key`` is (or will be) published; it exists only once complete."""
        _check_key(key)
        return self._entry_path(key)

    def private_path(self, label: str) -> Path:
        """A fresh path under ``tmp/`` for this process's own files (not created here).

        Like staging folders, it is deleted by ``clean_stale_staging`` once the process is gone.
        """
        _check_key(label)
        return self._new_tmp_path(label)

    def _new_tmp_path(self, key: str) -> Path:
        # <key>.<pid>.<random>.<host>: on a shared file system, only the host that made it can
        # tell whether its process is gone (see upkeep.clean_stale_staging).
        # The random part: this process's own random start and a count (no urandom a step).
        unique = f"{_TMP_RANDOM}{next(_TMP_COUNT):06x}"
        return self._tmp_dir / f"{key}.{os.getpid()}.{unique}.{host_name()}"

    # -- setup ---------------------------------------------------------------------------------

    def ensure_writable(self) -> None:
        """Create the cache folders and prove each can be written to by writing a probe file."""
        for folder in (self._entries_dir, self.tmp_dir, self.locks.folder):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=folder) as probe:
                    probe.write(b"kliko-async write probe\n")
                    probe.flush()
                    os.fsync(probe.fileno())
            except OSError as err:
                raise cache_os_error(
                    f"cache folder {self.root} is not writable",
                    err,
                    where=str(folder),
                    root=self.root,
                    kind=UnusableCacheFolder,
                ) from err

    # -- lookup and publish --------------------------------------------------------------------

    def lookup(self, key: str) -> CacheEntry | None:
        """The published entry for ``key``, or ``None``.

        Only a folder with a readable manifest of this format whose key matches counts. This is
        one manifest read and one stat, with no hashing: use :meth:`verify` to check contents.
        """
        if not KEY_PATTERN.fullmatch(key):
            return None
        return self._load_entry(self._entry_path(key), key)

    def stage(self, key: str) -> Staging:
        """A fresh staging folder under ``tmp/`` with an empty ``output/`` inside."""
        _check_key(key)
        path = self._new_tmp_path(key)
        try:
            try:
                path.mkdir()
            except FileNotFoundError:  # the first staging folder: make tmp/ first
                path.parent.mkdir(parents=True, exist_ok=True)
                path.mkdir()
            staging = Staging(key=key, path=path)
            staging.output_dir.mkdir()
        except OSError as err:
            with suppress(OSError):
                remove_tree(path)
            raise cache_os_error(
                "could not create a staging folder", err, where=str(path), root=self.root
            ) from err
        return staging

    def publish(self, staging: Staging, manifest_without_outputs: Manifest) -> CacheEntry:
        """Make ``staging`` the entry of its key, atomically and durably.

        The output tree is sealed (writable by its owner only), hashed into ``manifest.outputs``,
        the manifest is written, all of it is made durable, and only then is the folder renamed into
        ``entries/`` (and that name made durable too). If another process published the same key
        first, the staging folder is discarded and the existing entry returned. On any OS error
        :class:`CacheError` is raised and ``entries/`` holds nothing of it; an output holding a
        named pipe, socket or device raises :class:`UnpublishableOutput`. Either way the staging
        folder is left to the caller, who keeps the step's log and discards the rest.
        """
        (outcome,) = self.publish_many([(staging, manifest_without_outputs)])
        with suppress(OSError):
            self.sync()  # the new name; published already, so this only adds durability
        if isinstance(outcome, CacheError):
            raise outcome
        return outcome

    def seal_small(self, staging: Staging, manifest_without_outputs: Manifest) -> Sealed | None:
        """Seal, hash and give its manifest to ``staging`` now, when it is small
        (:func:`~kliko_async.cache.sealing.is_small`): the part of publishing that makes a few
        dozen small file calls. A worker thread making them beside the event loop's own calls
        passes the GIL to and fro at each (a context switch each); here they cost what they
        cost. None when it is not small: :meth:`publish_many` does all of it, off the loop.
        Raises what :meth:`publish` raises for its sealing; the barrier and the rename come
        later, in :meth:`publish_many`."""
        if not is_small(staging):
            return None
        barrier = Barrier(self.root)
        entry = self._seal_staging(staging, manifest_without_outputs, barrier)
        return Sealed(staging, entry, barrier.paths)

    def publish_many(
        self, staged: Sequence[tuple[Staging, Manifest] | Sealed]
    ) -> list[CacheEntry | CacheError]:
        """Publish several staging folders with one durability barrier (a group commit).

        Each is sealed, hashed and given its manifest without waiting for the disk; then one
        barrier (:class:`~kliko_async.durable.Barrier`) makes all of them durable, and only
        then is each renamed into ``entries/``: nothing is published before it is durable.
        The new names in ``entries/`` become durable at the next barrier: the next group's,
        or :meth:`sync`, which the caller runs once after its last group. Returns, in order,
        each one's entry or the error :meth:`publish` would have raised for it. Groups of one
        ``Cache`` object (from several threads) take turns. Folders :meth:`seal_small` sealed
        already are only made durable and renamed.
        """
        with self._publishing:
            return self._publish_group(staged)

    def _publish_group(
        self, staged: Sequence[tuple[Staging, Manifest] | Sealed]
    ) -> list[CacheEntry | CacheError]:
        outcomes: list[CacheEntry | CacheError | None] = []
        sealed: list[tuple[int, Staging, CacheEntry]] = []
        for item in staged:
            if isinstance(item, Sealed):
                staging, done = item.staging, item.entry
                self._barrier.paths.extend(item.paths)
            else:
                staging, manifest = item
                try:
                    done = self._seal_staging(staging, manifest, self._barrier)
                except CacheError as error:  # UnpublishableOutput too
                    outcomes.append(error)
                    continue
            sealed.append((len(outcomes), staging, done))
            outcomes.append(None)
        try:
            self._barrier.wait()
        except OSError as err:
            for index, _staging, entry in sealed:
                outcomes[index] = self._publish_error(entry.manifest.step, "making it durable", err)
            sealed = []
        for index, staging, entry in sealed:
            outcomes[index] = self._move_into_place(staging, entry)
        return [outcome for outcome in outcomes if outcome is not None]

    def sync(self) -> None:
        """Make what :meth:`publish_many` renamed into ``entries/`` durable (the names)."""
        with self._publishing:
            self._barrier.wait()

    def _seal_staging(self, staging: Staging, manifest: Manifest, barrier: Barrier) -> CacheEntry:
        """Seal ``staging`` and write its manifest (durable at ``barrier``); the entry as it
        will be, at the staging path. If another process publishes the key first, the rename
        finds its entry (:meth:`_rename_into_place`): not looked for here, since the steps of a
        run publish under their key's lock and the race is that rare."""
        key = staging.key
        step = manifest.step
        if manifest.key != key:
            self._discard_quietly(staging)
            raise CacheError(
                f"manifest key {manifest.key} does not match staging key {key}",
                where=f"step '{step}'",
            )
        try:
            manifest = seal_staging_files(staging, manifest, barrier)
        except SealingFailed as failed:
            cause = failed.__cause__
            assert isinstance(cause, OSError)
            raise self._publish_error(step, failed.action, cause) from cause
        return CacheEntry(key=key, path=staging.path, manifest=manifest)

    def _move_into_place(self, staging: Staging, sealed: CacheEntry) -> CacheEntry | CacheError:
        """Rename a sealed, durable staging folder into ``entries/``; its entry."""
        final = self._entry_path(staging.key)
        try:
            winner = self._rename_into_place(staging, final)
        except OSError as err:
            return self._publish_error(sealed.manifest.step, "moving the entry into place", err)
        if winner is not None:
            self._discard_quietly(staging)
            return winner
        # Published. What follows only makes it durable and tidy; it cannot make it partial.
        self._barrier.add(str(final.parent))
        with suppress(OSError):
            os.chmod(final, DIR_MODE)
        return CacheEntry(key=staging.key, path=final, manifest=sealed.manifest)

    def _publish_error(self, step: str, action: str, err: OSError) -> CacheError:
        return cache_os_error(
            f"could not publish its cache entry: {action} failed",
            err,
            where=f"step '{step}'",
            root=self.root,
        )

    def _rename_into_place(self, staging: Staging, final: Path) -> CacheEntry | None:
        """Rename ``staging`` to ``final``; the existing entry if another process won instead."""
        for _attempt in range(5):
            try:
                os.rename(staging.path, final)
                return None
            except FileNotFoundError:
                if not staging.path.exists():
                    raise
                # ``cache gc`` removed the empty shard folder meanwhile: make it again.
                final.parent.mkdir(parents=True, exist_ok=True)
                continue
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
        if staging.path.parent != self.tmp_dir:
            raise CacheError(
                "refusing to delete a folder that is not a staging folder of this cache",
                where=str(staging.path),
            )
        try:
            remove_tree(staging.path)
        except OSError as err:
            raise cache_os_error(
                "could not delete the staging folder", err, where=str(staging.path), root=self.root
            ) from err

    def _discard_quietly(self, staging: Staging) -> None:
        with suppress(CacheError):
            self.discard(staging)

    # -- locking -------------------------------------------------------------------------------

    def lock(
        self,
        key: str,
        *,
        shared: bool = False,
        poll: float = 0.05,
        on_wait: Callable[[], None] | None = None,
        patience: float = 0.0,
    ) -> AbstractAsyncContextManager[None]:
        """Hold the lock of ``key``, against other processes and other tasks alike.

        Exclusive (the default) while computing ``key``; ``shared`` while reading its entry as
        an input, which keeps ``gc`` (and a forced re-run elsewhere) from removing it meanwhile.
        Waiting can be cancelled; ``on_wait`` is called once it has lasted ``patience``
        seconds. See :mod:`kliko_async.cache.locks`.
        """
        _check_key(key)
        return self.locks.hold(key, shared=shared, poll=poll, on_wait=on_wait, patience=patience)

    # -- listing and removal -------------------------------------------------------------------

    def entry_dirs(self) -> Iterator[Path]:
        """Every folder at ``entries/<xx>/<name>``, valid or not, in sorted order."""
        for prefix in _sorted_subdirs(self._entries_dir):
            if len(prefix.name) == 2:
                yield from _sorted_subdirs(prefix)

    def _load_entry(self, path: Path, key: str) -> CacheEntry | None:
        manifest = read_manifest(path)
        if (
            manifest is None
            or manifest.key != key
            or manifest.format_version != CACHE_FORMAT_VERSION
            or not (path / OUTPUT).is_dir()
        ):
            return None
        return CacheEntry(key=key, path=path, manifest=manifest)

    def load_dir(self, path: Path) -> CacheEntry | None:
        """The valid entry in ``path`` (a folder of :meth:`entry_dirs`), or None."""
        key = path.name
        if not KEY_PATTERN.fullmatch(key) or path.parent.name != key[:2]:
            return None
        return self._load_entry(path, key)

    def remove_empty_shards(self) -> int:
        """Delete empty ``entries/<xx>/`` folders; how many. A publish racing it makes its own."""
        removed = 0
        for prefix in _sorted_subdirs(self._entries_dir):
            try:
                prefix.rmdir()
            except OSError as err:
                if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    continue
                raise cache_os_error(
                    "could not delete an empty folder", err, where=str(prefix), root=self.root
                ) from err
            removed += 1
        return removed

    def entries(self) -> Iterator[CacheEntry]:
        """Every valid published entry, sorted by key."""
        for path in self.entry_dirs():
            entry = self.load_dir(path)
            if entry is not None:
                yield entry

    def total_size(self) -> int:
        """Apparent size in bytes of all valid entries (staging and locks not counted)."""
        return sum(entry.size_bytes() for entry in self.entries())

    def remove(self, key: str) -> bool:
        """Delete the entry folder of ``key`` (valid or not); whether there was one."""
        _check_key(key)
        path = self._entry_path(key)
        if not path.is_dir() or path.is_symlink():
            return False
        self.remove_path(path)
        return True

    def _move_aside(self, path: Path) -> None:
        """Rename an entry folder out of ``entries/`` into ``tmp/``, then delete it there."""
        trash = self._new_tmp_path(path.name)
        trash.parent.mkdir(parents=True, exist_ok=True)
        # Moving a folder to another parent rewrites its "..", which needs write permission.
        os.chmod(path, 0o755)
        os.rename(path, trash)
        remove_tree(trash)

    def remove_path(self, path: Path) -> None:
        """Remove an entry folder (valid or not); a folder already gone is fine."""
        try:
            self._move_aside(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise cache_os_error(
                "could not remove the cache entry", err, where=str(path), root=self.root
            ) from err


def _check_key(key: str) -> None:
    if not KEY_PATTERN.fullmatch(key):
        raise CacheError(
            f"'{key}' is not a cache key",
            hint="Keys are hex digests from cache_key().",
        )


def _sorted_subdirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as scan:
            return sorted(Path(item.path) for item in scan if item.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []
