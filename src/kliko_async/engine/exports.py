"""Copies of step outputs under ``--out``: written beside, never over, what is not ours.

Each export ``<out>/<step>/`` carries a marker file, :data:`EXPORT_MARKER`. A later run replaces
an existing ``<out>/<step>`` only if it holds that marker: anything else there (the user's own
``data/`` folder, a file, a symbolic link) is left as it is and the export is refused, naming it.
A new copy is made next to the old one and renamed into place, so an interrupted export never
leaves a half-copied folder under the step's name. The copy's hidden name says which process on
which host makes it; a later export under the same ``--out`` removes the copies of processes that
are gone (``kill -9``, a crash), as stale staging is cleaned in the cache. Copies never alter the
cache.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final, Literal

from kliko_async.cache.durable import remove_tree
from kliko_async.cache.processes import host_name, pid_alive
from kliko_async.cache.provenance import EXPORT_MARKER
from kliko_async.engine.samecopy import same_copy
from kliko_async.engine.workspace import SpecialFileError, copy_tree_writable, folder_problem
from kliko_async.errors import KlikoError, ParameterError
from kliko_async.events import Event, ExportStarted, OutputExported
from kliko_async.results import RunResult

_UNFINISHED = re.compile(r"\.kliko-(?P<host>.+)-(?P<pid>\d+)-\w+\.(?:exporting|replaced)\Z")
"""The end of a hidden copy's name: ``.<step>.kliko-<host>-<pid>-<random>.exporting`` (or
``.replaced``, an earlier export being swapped out)."""


def _hidden(out: Path, step: str, suffix: str) -> Path:
    prefix = f".{step}.kliko-{host_name()}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=out))


def remove_abandoned_copies(out: Path) -> list[Path]:
    """Remove the hidden copies under ``out`` whose exporting process (on this host) is gone;
    the ones removed. Blocking: call it in a worker thread."""
    removed = []
    try:
        names = os.listdir(out)
    except OSError:  # no --out yet, or not ours to read: nothing of ours is there
        return []
    for name in names:
        found = _UNFINISHED.search(name) if name.startswith(".") else None
        if found is None or found["host"] != host_name() or pid_alive(int(found["pid"])):
            continue
        path = out / name
        if stat.S_ISDIR(_lstat_mode(path)):  # never a link, nor what a link leads to
            remove_tree(path)
            removed.append(path)
    return removed


def check_export_targets(out: Path, steps: Iterable[str]) -> None:
    """Refuse, before any step runs, an ``--out`` whose ``<out>/<step>`` is not ours to replace."""
    problem = folder_problem(out, "so step outputs cannot be copied under it")
    if problem is not None:
        raise ParameterError(
            problem,
            where=f"--out {out}",
            hint="Give --out a folder you can write (it is created if missing).",
        )
    for step in steps:
        _replaceable(out, step)


def export_outputs(
    result: RunResult,
    out: Path,
    *,
    emit: Callable[[Event], None] | None = None,
    between_files: Callable[[], None] | None = None,
) -> list[str]:
    """Copy every finished step's output to ``out/<step>/``, replacing only earlier exports;
    the steps that did not finish whose ``out/<step>`` is an earlier export (left as it is: the
    cache may no longer hold it), for the run's summary to say so.

    Blocking: call it in a worker thread. ``emit`` receives an :class:`ExportStarted` and one
    :class:`OutputExported` per step; ``between_files`` is called before each file is copied
    (it may raise to stop the export, which then removes its unfinished copy).
    """
    steps = [(name, step) for name, step in result.steps.items() if step.output is not None]
    remove_abandoned_copies(out)
    if emit is not None:
        emit(ExportStarted(folder=str(out), steps=[name for name, _ in steps]))
    for index, (name, step) in enumerate(steps, start=1):
        assert step.output is not None
        started = time.monotonic()
        files, size, unchanged = export_step(
            step.output, out, name, step.key, between_files=between_files
        )
        if emit is not None:
            emit(
                OutputExported(
                    step=name,
                    path=str(out / name),
                    files=files,
                    size_bytes=size,
                    unchanged=unchanged,
                    duration_s=time.monotonic() - started,
                    done=index,
                    total=len(steps),
                )
            )
    unfinished = (name for name, step in result.steps.items() if step.output is None)
    return [name for name in unfinished if _what_is_at(out, name) == _EARLIER_EXPORT]


def export_step(
    source: Path,
    out: Path,
    step: str,
    key: str,
    *,
    between_files: Callable[[], None] | None = None,
) -> tuple[int, int, bool]:
    """Copy one step's output to ``out/<step>``: the number of files and bytes there, and
    whether it was left as it was (an earlier export of the same output, unchanged since)."""
    target = out / step
    where = f"--out {out}"
    hint = "Every finished step is kept in the cache: run again with another --out."
    replacing = _replaceable(out, step)
    if replacing and _exported_key(target) == key:
        same = same_copy(source, target, besides=EXPORT_MARKER, between_files=between_files)
        if same is not None:
            return (*same, True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fresh = _hidden(out, step, ".exporting")
    except OSError as error:
        raise KlikoError(
            f"could not copy the output of step '{step}' to {target}: {error.strerror or error}",
            where=where,
            hint=hint,
        ) from None
    try:
        files, size = copy_tree_writable(
            source, fresh, between_files=between_files, keep_times=True
        )
        marker = fresh / EXPORT_MARKER
        if (marker.exists() or marker.is_symlink()) and not _carried_marker(marker):
            raise KlikoError(
                f"the output of step '{step}' holds a file named {EXPORT_MARKER}, the name "
                "kliko-async uses to mark its exports, so it is not exported",
                where=where,
                hint="Rename that file in the step, or read the output in the cache folder.",
            )
        # The same output gives the same export, marker included (two runs, one result).
        marker.write_text(json.dumps({"step": step, "key": key}) + "\n")
        if replacing:
            old = _hidden(out, step, ".replaced")
            os.replace(target, old / step)
            os.rename(fresh, target)
            remove_tree(old)
        else:
            os.rename(fresh, target)
    except SpecialFileError as error:
        remove_tree(fresh)
        raise KlikoError(
            f"the output of step '{step}' cannot be exported: {error}", where=where, hint=hint
        ) from None
    except OSError as error:
        remove_tree(fresh)
        raise KlikoError(
            f"could not copy the output of step '{step}' to {target}: {error.strerror or error}",
            where=where,
            hint=hint,
        ) from None
    except BaseException:
        remove_tree(fresh)
        raise
    return files, size, False


def _exported_key(folder: Path) -> str | None:
    """The key an earlier export in ``folder`` says it is a copy of (its marker); None if it
    says none."""
    said = _marker_says(folder / EXPORT_MARKER)
    return said["key"] if said is not None and isinstance(said["key"], str) else None


def _carried_marker(marker: Path) -> bool:
    """Whether ``marker`` is the marker of an earlier export, carried through by a step that
    copied its input (an export used as data, copied into /work): replaced, not refused."""
    return _marker_says(marker) is not None


def _marker_says(marker: Path) -> dict[str, object] | None:
    """What an export's marker file says (its step and key); None if ``marker`` is not one."""
    try:
        info = os.lstat(marker)
        if not stat.S_ISREG(info.st_mode) or info.st_size > 4096:
            return None
        said = json.loads(marker.read_bytes())
    except (OSError, ValueError):
        return None
    return said if isinstance(said, dict) and set(said) == {"step", "key"} else None


def _replaceable(out: Path, step: str) -> bool:
    """Whether ``out/<step>`` is an earlier export (True) or absent (False); else refuse: the
    ``--out`` given cannot be used (exit status 2, as for any setting that cannot be)."""
    found = _what_is_at(out, step)
    if isinstance(found, ParameterError):
        raise found
    return found == _EARLIER_EXPORT


_ABSENT: Final = "absent"
_EARLIER_EXPORT: Final = "an earlier export"


def _what_is_at(out: Path, step: str) -> Literal["absent", "an earlier export"] | ParameterError:
    """What ``out/<step>`` is: ``"absent"``; ``"an earlier export"``, a folder kliko-async
    exported (not a link, holding its marker as a file); or not ours to replace, as the error
    that says why, for a caller that refuses it to raise."""
    target = out / step
    where = f"--out {out}"
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return _ABSENT
    except OSError as error:
        return ParameterError(f"cannot look at {target}: {error.strerror or error}", where=where)
    if stat.S_ISLNK(info.st_mode):
        try:
            leads_to = os.readlink(target)
        except OSError as error:  # gone since: not ours to replace in any case
            return ParameterError(f"cannot look at {target}: {error.strerror}", where=where)
        return ParameterError(
            f"{target} is a symbolic link (to {leads_to}); kliko-async never "
            f"exports the output of step '{step}' through a link, nor replaces it",
            where=where,
            hint="Remove the link, or give another --out.",
        )
    if not stat.S_ISDIR(info.st_mode):
        return ParameterError(
            f"{target} exists and is not a folder, so the output of step '{step}' cannot be "
            "copied there; it is left as it is",
            where=where,
            hint="Move it away, or give another --out.",
        )
    marker = target / EXPORT_MARKER
    if not stat.S_ISREG(_lstat_mode(marker)):
        return ParameterError(
            f"{target} already exists and kliko-async did not write it (it has no "
            f"{EXPORT_MARKER} file), so it is not replaced by the output of step '{step}'",
            where=where,
            hint="Move that folder away, or give another --out.",
        )
    return _EARLIER_EXPORT


def _lstat_mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0
