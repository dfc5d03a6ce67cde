"""Content hashes of files and folder trees, shared by parameter files and cache outputs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kliko_async.cache.treewalk import walk

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of one file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """Map every regular file under ``root`` (relative POSIX path) to its SHA-256.

    Symbolic links are recorded by their target text (prefixed ``symlink:``), never followed,
    so a link pointing outside the tree cannot leak foreign content into a hash.
    """
    hashes: dict[str, str] = {}
    for dirpath, dirnames, filenames in walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                hashes[rel] = "symlink:" + os.readlink(path)
            elif path.is_file():
                hashes[rel] = sha256_file(path)
    return hashes
