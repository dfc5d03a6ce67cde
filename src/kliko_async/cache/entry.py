"""What a cache entry is on disk: its layout, its manifest, published or still staging.

Layout of one entry folder (a staging folder has the same, minus the manifest)::

    output/        the step's /output (or /work), never changed once published
    log.txt        the step's complete stdout and stderr
    manifest.json  how it was made: the key's ingredients, timings, exit code, output hashes
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Self, overload

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
)

from kliko_async.cache.durable import read_all, tree_size
from kliko_async.cache.key import CACHE_FORMAT_VERSION, KeyIngredients
from kliko_async.results import ResourceUse

__all__ = ["MANIFEST", "CacheEntry", "Manifest", "Staging", "read_manifest"]

MANIFEST = "manifest.json"
OUTPUT = "output"
LOG = "log.txt"
SCRATCH = "scratch"


class Manifest(BaseModel):
    """What an entry holds and how it was made; ``manifest.json`` in the entry folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = CACHE_FORMAT_VERSION
    key: str
    step: str = Field(description="The step's name in the run that made it.")
    image: str = Field(description="The image as the chain named it (tag, ID or build folder).")
    ingredients: KeyIngredients = Field(description="Everything the key hashes, as it was.")
    run_id: str | None = Field(None, description="The run that made it.")
    started_at: datetime
    finished_at: datetime
    duration_s: float
    exit_code: int
    log_sha256: str | None = Field(
        None,
        description="SHA-256 of the saved log (log.txt), for 'cache verify'; None in entries "
        "made before it was recorded.",
    )
    usage: ResourceUse | None = Field(None, description="CPU, memory, I/O, where measured.")
    outputs: dict[str, str] = Field(default_factory=dict)
    """Path relative to ``output/`` -> SHA-256, as
    :func:`kliko_async.cache.hashing.hash_tree` gives.

    Names are bytes on Linux: one that is not UTF-8 is held as ``os.fsdecode`` does (lone
    surrogates) and stored in the JSON as NUL (which no path holds) plus the hex of its bytes,
    so that it reads back exactly and ``cache verify`` compares like with like."""

    @field_serializer("outputs", when_used="json")
    def _names_for_json(self, outputs: dict[str, str]) -> dict[str, str]:
        return {_json_name(name): digest for name, digest in outputs.items()}

    @field_validator("outputs", mode="before")
    @classmethod
    def _names_from_json(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not any(map(_is_bytes_name, value)):
            return value  # the common case, checked without building a new mapping
        return {_python_name(name): digest for name, digest in value.items()}


_BYTES_NAME = "\x00"


def _json_name(name: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return _BYTES_NAME + os.fsencode(name).hex()
    return name


def _is_bytes_name(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(_BYTES_NAME)


def _python_name(name: Any) -> Any:
    if isinstance(name, str) and name.startswith(_BYTES_NAME):
        try:
            return os.fsdecode(bytes.fromhex(name[1:]))
        except ValueError:
            return name
    return name


def shown_name(name: str) -> str:
    """A file name for people: bytes that are not UTF-8 appear as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class _Subfolder:
    """A folder inside an entry or staging folder (``path / name``), made once per model: it is
    asked for several times a step. Kept in the model's ``__dict__`` under a name that starts
    with ``_``, which pydantic's ``dict(model)`` and ``model_validate(vars(model))`` leave out."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __set_name__(self, owner: type, attribute: str) -> None:
        self.attribute = f"_{attribute}"

    @overload
    def __get__(self, folder: None, owner: type) -> _Subfolder: ...

    @overload
    def __get__(self, folder: _EntryFolder, owner: type) -> Path: ...

    def __get__(self, folder: _EntryFolder | None, owner: type) -> Path | _Subfolder:
        if folder is None:
            return self
        made: dict[str, Path] = folder.__dict__
        path = made.get(self.attribute)
        if path is None:
            path = made[self.attribute] = folder.path / self.name
        return path


class _EntryFolder(BaseModel):
    """The layout shared by a staging folder and the entry it becomes: output/ and log.txt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    path: Path

    output_dir: ClassVar[_Subfolder] = _Subfolder(OUTPUT)
    log_path: ClassVar[_Subfolder] = _Subfolder(LOG)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        for name in [n for n in copy.__dict__ if n not in type(copy).model_fields]:
            del copy.__dict__[name]  # a subfolder of the old path: made again from the new
        return copy


class CacheEntry(_EntryFolder):
    """A published and complete entry (writable by its owner only; never changed)."""

    manifest: Manifest

    def size_bytes(self) -> int:
        """Apparent size (sum of ``st_size``) of every file in the entry, manifest and log too."""
        return tree_size(self.path)


class Staging(_EntryFolder):
    """A private folder under ``tmp/`` that a step writes into before it is published.

    :meth:`kliko_async.cache.store.Cache.stage` has created its ``output/``.
    """

    scratch_dir: ClassVar[_Subfolder] = _Subfolder(SCRATCH)
    """``scratch/``: what the step is given (parameters.json), not part of the entry."""


def read_manifest(entry_path: Path) -> Manifest | None:
    """The manifest in ``entry_path``, or None if it is missing or unreadable."""
    try:
        # A miss is the common case (every step to run is looked up twice): no file object
        # and no Path made for it.
        fd = os.open(f"{entry_path}/{MANIFEST}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = read_all(fd)
        finally:
            os.close(fd)
        return Manifest.model_validate_json(data)
    except (OSError, ValidationError, ValueError):
        return None
