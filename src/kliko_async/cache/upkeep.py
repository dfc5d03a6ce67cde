"""Keeping a cache folder tidy and honest: stale staging, ``cache gc`` and ``cache verify``."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from kliko_async.cache.datahash import STAT_CACHE, StatCache
from kliko_async.cache.durable import remove_tree
from kliko_async.cache.durations import forget_durations_but
from kliko_async.cache.entry import LOG, MANIFEST, OUTPUT, CacheEntry, read_manifest, shown_name
from kliko_async.cache.hashing import hash_tree, sha256_file
from kliko_async.cache.holds import HeldKeys
from kliko_async.cache.key import CACHE_FORMAT_VERSION
from kliko_async.cache.processes import host_name, pid_alive
from kliko_async.cache.store import KEY_PATTERN, RUN_LOGS, RUN_RECORDS, Cache
from kliko_async.errors import cache_os_error, os_error_text

__all__ = [
    "GcReport",
    "VerifyProblem",
    "clean_stale_staging",
    "gc",
    "remove_entries_with_problems",
    "verify",
]


class VerifyProblem(BaseModel):
    """One thing :func:`verify` found wrong.

    ``path`` is relative to the entry folder (``output/a.txt``, ``log.txt``, ``manifest.json``)
    or ``None`` when the problem concerns the whole entry. ``problem`` is one of:
    ``content changed``, ``missing``, ``unexpected file``, ``output folder missing``,
    ``manifest missing``, ``manifest unreadable``, ``manifest key mismatch``, ``misplaced entry``.
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


def clean_stale_staging(cache: Cache) -> int:
    """Delete staging folders whose process is gone; how many were deleted.

    Names are ``<key>.<pid>.<random>.<host>``; a folder made on another host is left alone, since
    its pid says nothing here (the cache may be on a shared file system). A name without a host
    (made by an earlier version) counts as this host's; one that does not parse is left alone.
    """
    removed = 0
    if not cache.tmp_dir.is_dir():
        return 0
    for child in sorted(cache.tmp_dir.iterdir()):
        parts = child.name.split(".", 3)
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        if len(parts) == 4 and parts[3] != host_name():
            continue  # another host's: it alone can tell whether its process is gone
        if pid_alive(int(parts[1])):
            continue
        try:
            remove_tree(child)
        except FileNotFoundError:
            continue
        except OSError as err:
            raise cache_os_error(
                "could not delete a stale staging folder", err, where=str(child), root=cache.root
            ) from err
        removed += 1
    return removed


def gc(
    cache: Cache,
    *,
    older_than: timedelta | None = None,
    max_size: int | None = None,
    now: datetime | None = None,
) -> GcReport:
    """Tidy the cache; the valid entries removed, in order of removal (with what else went).

    Always deletes stale staging folders (dead pids) and invalid entry folders (no or bad
    manifest; these are not in the returned list, having no manifest to report). Then removes
    entries whose ``finished_at`` is more than ``older_than`` before ``now``, and then, while the
    total size of entries exceeds ``max_size`` bytes, the entry with the oldest ``finished_at``
    (ties by key). Age is the manifest's ``finished_at`` rather than an access time, because
    ``lookup`` stays read-only and atime is often disabled. An entry that a live run holds is
    kept: one whose lock a run holds (being computed, or read as a step's input), and every
    entry a run has made or found cached, until that run has ended (its export included; see
    :mod:`kliko_async.cache.holds`).

    Afterwards the folders around the entries are tidied: the ``logs/<run-id>/`` folders of
    failed steps whose newest log is more than ``older_than`` old, and the records of runs
    (``records/<run-id>.json``, a few MB for a 10,000-step run) written longer ago than that,
    the past durations of steps no entry is left of, the remembered digests of data files that
    are gone or changed, lock files that no run holds, and empty ``entries/<xx>/`` shard folders.
    """
    now = _aware(now) if now is not None else datetime.now(UTC)
    clean_stale_staging(cache)
    kept: list[CacheEntry] = []
    for path in list(cache.entry_dirs()):
        entry = cache.load_dir(path)
        if entry is None:
            cache.remove_path(path)
        else:
            kept.append(entry)

    removed = GcReport()
    held = HeldKeys(cache.root)
    if older_than is not None:
        young: list[CacheEntry] = []
        for entry in kept:
            old = now - _aware(entry.manifest.finished_at) > older_than
            if old and _remove_unless_in_use(cache, entry, held):
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
            if _remove_unless_in_use(cache, entry, held):
                removed.append(entry)
                total -= size
    if older_than is not None:
        held.refresh()
        removed.run_logs = _remove_old_run_logs(cache, now - older_than, keep=held.run_ids)
        removed.run_records = _remove_old_records(cache, now - older_than, keep=held.run_ids)
    gone = {entry.key for entry in removed}
    left = {(e.manifest.step, e.manifest.image) for e in kept if e.key not in gone}
    removed.durations = forget_durations_but(cache, left)
    removed.data_digests = StatCache(cache.root / STAT_CACHE).forget_stale()
    removed.lock_files = cache.locks.remove_unheld()
    removed.shard_folders = cache.remove_empty_shards()
    return removed


class GcReport(list[CacheEntry]):
    """The entries :func:`gc` removed, in order, and how many other things it tidied away."""

    run_logs: int = 0
    """``logs/<run-id>/`` folders of old runs."""
    run_records: int = 0
    """``records/<run-id>.json`` files of old runs."""
    durations: int = 0
    """Steps' past durations (for the ETA) of which no entry is left."""
    data_digests: int = 0
    """Remembered digests of data files that are gone or changed since."""

    def summary(self) -> str:
        """One line: the entries removed, and each other kind of thing tidied away, if any."""
        files = sum(len(e.manifest.outputs) for e in self)
        tidied = [
            f"{count} {what}"
            for count, what in (
                (self.run_logs, "old run log folder(s)"),
                (self.run_records, "old run record(s)"),
                (self.durations, "past duration(s) of steps no entry is left of"),
                (self.data_digests, "digest(s) of data files gone or changed"),
                (self.lock_files, "unused lock file(s)"),
                (self.shard_folders, "empty folder(s)"),
            )
            if count
        ]
        entries = f"removed {len(self)} entr{'y' if len(self) == 1 else 'ies'} ({files} files)"
        return ", ".join([entries, *tidied])

    lock_files: int = 0
    """Lock files that no run held."""
    shard_folders: int = 0
    """Empty ``entries/<xx>/`` folders."""


def _remove_old_run_logs(cache: Cache, before: datetime, *, keep: set[str]) -> int:
    """Delete ``logs/<run-id>/`` folders whose newest file is from before ``before``, but
    those of the live runs ``keep``."""
    removed = 0
    limit = before.timestamp()
    for folder in _subfolders(cache.root / RUN_LOGS):
        if folder.name in keep:
            continue
        newest = max([os.lstat(folder).st_mtime, *(_mtime(child) for child in folder.iterdir())])
        if newest < limit:
            try:
                remove_tree(folder)
            except OSError as err:
                raise cache_os_error(
                    "could not delete an old run's logs", err, where=str(folder), root=cache.root
                ) from err
            removed += 1
    return removed


def _remove_old_records(cache: Cache, before: datetime, *, keep: set[str]) -> int:
    """Delete the files in ``records/`` (run records, and any a killed process left half
    written) last written before ``before``, but those of the live runs ``keep``."""
    removed = 0
    limit = before.timestamp()
    folder = cache.root / RUN_RECORDS
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    except OSError as err:
        raise cache_os_error(
            "could not list run records", err, where=str(folder), root=cache.root
        ) from err
    for name in names:
        path = folder / name
        try:
            info = os.lstat(path)
            if path.stem in keep or not stat.S_ISREG(info.st_mode) or info.st_mtime >= limit:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise cache_os_error(
                "could not delete an old run's record", err, where=str(path), root=cache.root
            ) from err
        removed += 1
    return removed


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _mtime(path: Path) -> float:
    try:
        return os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def _remove_unless_in_use(cache: Cache, entry: CacheEntry, held: HeldKeys) -> bool:
    """Remove ``entry`` unless a run holds its lock (computing it, or reading it as input) or
    holds it until its end; the live runs' keys are read once the lock is ours."""
    with cache.locks.try_exclusive(entry.key) as free:
        if free and entry.key not in held.refresh():
            cache.remove_path(entry.path)
            return True
        return False


def verify(cache: Cache) -> list[VerifyProblem]:
    """Re-hash every entry's output and saved log against its manifest; every problem found."""
    problems: list[VerifyProblem] = []
    for path in cache.entry_dirs():
        problems += _verify_entry(path)
    return problems


def remove_entries_with_problems(
    cache: Cache, problems: list[VerifyProblem]
) -> tuple[list[str], list[str]]:
    """Remove the entries :func:`verify` found problems in, so that runs compute them again
    (a run takes an entry by its manifest, without re-hashing it); the keys removed, and the
    keys left because a live run is using them (as ``cache gc`` leaves them)."""
    held = HeldKeys(cache.root)
    removed: list[str] = []
    in_use: list[str] = []
    keys = {problem.key for problem in problems}  # an entry folder's name (misplaced or not)
    for folder in [path for path in cache.entry_dirs() if path.name in keys]:
        key = folder.name
        if not KEY_PATTERN.fullmatch(key):  # misplaced: no run ever finds it, nor locks it
            cache.remove_path(folder)
            removed.append(key)
            continue
        with cache.locks.try_exclusive(key) as free:
            if not free or key in held.refresh():
                in_use.append(key)
            elif _verify_entry(folder):  # still wrong (not made again since), under its lock
                cache.remove_path(folder)
                removed.append(key)
    return removed, in_use


def _verify_entry(path: Path) -> list[VerifyProblem]:
    key = path.name
    if not KEY_PATTERN.fullmatch(key) or path.parent.name != key[:2]:
        return [VerifyProblem(key=key, path=None, problem="misplaced entry")]
    if not (path / MANIFEST).exists():
        return [VerifyProblem(key=key, path=MANIFEST, problem="manifest missing")]
    manifest = read_manifest(path)
    if manifest is None or manifest.format_version != CACHE_FORMAT_VERSION:
        return [VerifyProblem(key=key, path=MANIFEST, problem="manifest unreadable")]
    if manifest.key != key:
        return [VerifyProblem(key=key, path=MANIFEST, problem="manifest key mismatch")]
    output = path / OUTPUT
    if not output.is_dir():
        return [VerifyProblem(key=key, path=OUTPUT, problem="output folder missing")]
    try:
        actual = hash_tree(output)
    except OSError as err:
        return [VerifyProblem(key=key, path=OUTPUT, problem=f"unreadable ({os_error_text(err)})")]
    problems = _verify_log(path, key, manifest.log_sha256)
    expected = manifest.outputs
    for rel in sorted(expected.keys() | actual.keys()):
        where = f"{OUTPUT}/{shown_name(rel)}"
        if rel not in actual:
            problems.append(VerifyProblem(key=key, path=where, problem="missing"))
        elif rel not in expected:
            problems.append(VerifyProblem(key=key, path=where, problem="unexpected file"))
        elif actual[rel] != expected[rel]:
            problems.append(VerifyProblem(key=key, path=where, problem="content changed"))
    return problems


def _verify_log(path: Path, key: str, expected: str | None) -> list[VerifyProblem]:
    """The saved log against the hash its manifest recorded (none in older entries)."""
    if expected is None:
        return []
    try:
        actual = sha256_file(path / LOG)
    except FileNotFoundError:
        return [VerifyProblem(key=key, path=LOG, problem="missing")]
    except OSError as err:
        return [VerifyProblem(key=key, path=LOG, problem=f"unreadable ({os_error_text(err)})")]
    if actual != expected:
        return [VerifyProblem(key=key, path=LOG, problem="content changed")]
    return []


def _aware(moment: datetime) -> datetime:
    """``moment`` with a time zone; a naive one is taken as local time, as Python does."""
    return moment if moment.tzinfo is not None else moment.astimezone()
