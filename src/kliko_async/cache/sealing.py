"""Sealing a staging folder before it is published: its files settled and hashed, its manifest
written, all of it durable at a barrier (:class:`~kliko_async.cache.durable.Barrier`), so that
the rename into ``entries/`` (:class:`~kliko_async.cache.store.Cache`) publishes a whole entry.

A small staging folder (``SMALL_FILES``, ``SMALL_BYTES``) is sealed where it is published, in
the event loop (:meth:`~kliko_async.cache.store.Cache.seal_small`); a big one in the group
commit's worker thread.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from kliko_async.cache.durable import Barrier, seal_tree, small_tree, write_sealed
from kliko_async.cache.entry import LOG, MANIFEST, OUTPUT, CacheEntry, Manifest, Staging
from kliko_async.cache.hashing import hash_tree, sha256_file
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
        special = seal_tree(staging.output_dir, barrier)
        if special:
            raise UnpublishableOutput(
                "its output holds "
                + ", ".join(f"{kind} ({OUTPUT}/{rel})" for rel, kind in special)
                + ", which the cache cannot keep and --out cannot copy, so nothing of the "
                "step was published",
                where=f"step '{manifest.step}'",
                hint="Let the step write only files, folders and links to its output",
            )
        action = "hashing the output"
        outputs = hash_tree(staging.output_dir)
        action = "hashing the log"
        log = staging.path / LOG
        log_sha256 = sha256_file(log) if log.exists() else None
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
        raise SealingFailed(action) from err
    return manifest
