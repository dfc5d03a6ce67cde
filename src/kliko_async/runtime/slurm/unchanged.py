"""Proof that a job left its read-only mounts alone: what they hold, before and after.

Under Charliecloud, whose ``ch-run`` binds read-write only, a container is given copies of its
read-only mounts (``script.read_only_copies``); the originals (cache entries) are checked
afterwards here, so that a copy that failed to isolate them never passes unnoticed. A write
changes a file's modification time or size, a replacement its inode: comparing ``lstat`` results
costs one walk, where re-hashing a large Measurement Set would cost reading all of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from kliko_async.cache.treewalk import walk
from kliko_async.errors import ContainerError

__all__ = ["TreeState", "changed_paths", "check_unchanged", "tree_state"]

TreeState = dict[str, tuple[int, int, int, int]]
"""Path -> (inode, mode, size, modification time in ns), links not followed."""


def tree_state(roots: Iterable[Path]) -> TreeState:
    """The state of every file, folder and link under each of ``roots`` (and the roots)."""
    state: TreeState = {}
    for root in roots:
        _add(state, str(root))
        if root.is_dir() and not root.is_symlink():
            for dirpath, dirnames, filenames in walk(root):
                for name in [*dirnames, *filenames]:
                    _add(state, os.path.join(dirpath, name))
    return state


def changed_paths(before: TreeState, after: TreeState) -> list[str]:
    """Paths added, removed or changed between two states, sorted."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def check_unchanged(before: TreeState, roots: Iterable[Path]) -> None:
    """Raise :class:`ContainerError` if anything under ``roots`` differs from ``before``."""
    changed = changed_paths(before, tree_state(roots))
    if changed:
        raise ContainerError(
            f"{changed[0]}, in a read-only input of the step, changed while its job ran "
            f"({len(changed)} path(s) in all), although the container was given a copy; run "
            "'kliko-async cache verify' to find the damaged cache entry and delete it"
        )


def _add(state: TreeState, path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    state[path] = (info.st_ino, info.st_mode, info.st_size, info.st_mtime_ns)
