"""Content hashes of files and folder trees, shared by parameter files and cache outputs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kliko_async.cache.treewalk import walk

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of one file's bytes, read through its descriptor (no file object: a
    step's publish hashes each of its files)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
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
