"""What this process has under way outside itself: containers and folders it will remove.

Tracked so that a forced exit (a second Ctrl-C or SIGTERM) can say exactly what it leaves behind,
and how it gets removed: containers carry this process's owner label and staging folders its
pid and host, so the next ``kliko-async run`` on this host removes both.
"""

from __future__ import annotations

import itertools
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class InFlight:
    """One thing under way: a container (``container_id``), a folder (``folder``) or a Slurm
    job (``job_id``; ``job_name`` for jobs an interrupted sbatch may have submitted, known by
    their name only)."""

    what: str
    container_id: str | None = None
    folder: Path | None = None
    next_run_removes: bool = True
    job_id: str | None = None
    job_name: str | None = None
    writes_into: tuple[Path, ...] = ()
    """Folders that a job or container left running may still write into: they are kept (a
    step's staging folder was deleted under a job that scancel had failed to cancel)."""

    @property
    def name(self) -> str:
        """What it is, for people: 'Slurm job 745', 'container 0123456789ab', ..."""
        return _name(self)


_under_way: dict[int, InFlight] = {}
_ids = itertools.count()


def track(item: InFlight) -> int:
    """Note ``item`` as under way; the number to :func:`untrack` it with once it is removed."""
    number = next(_ids)
    _under_way[number] = item
    return number


def untrack(number: int) -> None:
    _under_way.pop(number, None)


@contextmanager
def under_way(item: InFlight) -> Iterator[None]:
    """Track ``item`` while the block runs (removing it is the block's own business)."""
    number = track(item)
    try:
        yield
    finally:
        untrack(number)


def left_behind() -> list[InFlight]:
    """Everything under way right now, oldest first (folders only once they exist)."""
    return [i for i in _under_way.values() if i.folder is None or i.folder.exists()]


def writing_into(folder: Path) -> list[InFlight]:
    """What is left running that may still write into ``folder`` (or a folder in it)."""
    where = os.path.abspath(folder)
    return [
        item
        for item in _under_way.values()
        if any(
            _within(path, [where]) or _within(where, [path])
            for path in map(os.path.abspath, item.writes_into)
        )
    ]


def describe_left_behind(items: list[InFlight]) -> str:
    """What a forced exit leaves, and how it will be (or can be) removed, for people."""
    if not items:
        return "nothing was left behind"
    lines = ["left behind:"]
    listed = [os.path.abspath(i.folder) for i in items if i.folder is not None]
    folders = list(listed)
    for item in items:
        # The folders a job may still write into, unless in one listed as left anyway.
        into = [p for p in map(os.path.abspath, item.writes_into) if not _within(p, listed)]
        folders += [p for p in into if p not in folders]
        also = f"; it may still write into {', '.join(into)}, kept" if into else ""
        if item.job_id is not None or item.job_name is not None:
            lines.append(f"  {_name(item)} ({item.what}){also}")
        elif item.container_id is not None:
            lines.append(f"  container {item.container_id[:12]} ({item.what})")
        else:
            lines.append(f"  folder {os.path.abspath(item.folder or '')} ({item.what})")
    by_next_run = [i for i in items if i.next_run_removes]
    by_hand = [i for i in items if not i.next_run_removes]
    if by_next_run:
        lines.append(
            "the next 'kliko-async run' on this host removes "
            + ("them" if not by_hand else ", ".join(_name(i) for i in by_next_run))
        )
    commands = []
    jobs = [i.job_id for i in items if i.job_id is not None]
    if jobs:
        commands.append("scancel " + " ".join(jobs))
    commands += [f"scancel --name={i.job_name}" for i in items if i.job_name is not None]
    containers = [i.container_id[:12] for i in items if i.container_id is not None]
    if containers:
        commands.append("docker rm -f " + " ".join(containers))
    if folders:
        commands.append("rm -rf " + " ".join(shlex.quote(f) for f in folders))
    lines.append(
        ("or remove them now: " if by_next_run else "remove them with: ") + "; ".join(commands)
    )
    return "\n".join(lines)


def _name(item: InFlight) -> str:
    if item.job_id is not None:
        return f"Slurm job {item.job_id}"
    if item.job_name is not None:
        return f"any Slurm job named {item.job_name}"
    return f"container {item.container_id[:12]}" if item.container_id else f"folder {item.folder}"


def _within(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f + os.sep) for f in folders)
