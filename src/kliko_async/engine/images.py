"""Resolve Kliko images to immutable IDs and read their kliko.yml without running them.

A kliko.yml is read once per image ID (create a container, copy the file out, remove it) and
kept under ``<cache>/specs/`` (written atomically, with its checksum), so later reads of the same
image start no container at all; a memo that cannot be read or does not match is read again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio
from pydantic import BaseModel, ConfigDict

from kliko_async.cache.durable import fsync_dir
from kliko_async.cache.hashing import sha256_file
from kliko_async.errors import ImageError, KlikoError, SpecError, UnusableBuildFolder
from kliko_async.model.spec import KlikoSpec, parse_spec
from kliko_async.runtime.base import KLIKO_EXECUTABLE, LABEL_PREFIX, Runtime
from kliko_async.runtime.buildcontext import context_members

KLIKO_YML = "/kliko.yml"
KLIKO_COMMAND = (KLIKO_EXECUTABLE,)
"""What every Kliko container runs, whatever the image's CMD, as Kliko 0.8 does
(``create_container(..., command='/kliko')``); the image's ENTRYPOINT, if any, is kept."""


class KlikoImage(BaseModel):
    """A Kliko image: how it was named, its immutable ID and its parsed kliko.yml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str
    id: str
    spec: KlikoSpec


BUILT_LABEL = f"{LABEL_PREFIX}.built"
"""On every image built from a step's ``build:`` folder (value ``1``): find or prune them with
``docker image prune --filter label=io.kliko-async.built=1`` (or ``docker image ls``)."""
CONTEXT_LABEL = f"{LABEL_PREFIX}.build-context"
"""The absolute build folder the image was built from."""
CONTEXT_DIGEST_LABEL = f"{LABEL_PREFIX}.build-digest"
"""A hash of the build folder's files, so a dry run can find the image a build would give."""


def context_digest(context: Path) -> str:
    """A SHA-256 over every file (path, content, executable bit) and link a build of the folder
    sends: what its ``.dockerignore`` excludes is not read. Raises ImageError."""
    digest = hashlib.sha256()
    sent = (m for m in context_members(context) if m.kind != "dir")
    for member in sorted(sent, key=lambda m: m.path):
        path = context / member.path
        if member.kind == "link":
            content, executable = f"symlink:{member.target}", False
        else:
            try:
                content, executable = sha256_file(path), os.access(path, os.X_OK)
            except OSError as exc:
                raise ImageError(
                    f"cannot read {member.path}: {exc.strerror}", where=f"build '{context}'"
                ) from None
        digest.update(f"{os.fsencode(member.path).hex()} {content} {int(executable)}\n".encode())
    return digest.hexdigest()


def check_build_folder(context: Path) -> None:
    """Refuse a build folder that is not there: missing, or not a folder. (What it must hold,
    a Dockerfile, is the runtime's to say.)"""
    where = f"build '{context}'"
    hint = "Give the step's build: a folder holding a Dockerfile (relative to the chain file)."
    try:
        exists, is_folder = context.exists(), context.is_dir()
    except OSError as error:  # a folder on the way you may not look into
        message = f"cannot look at the build folder: {error.strerror or error}"
        raise UnusableBuildFolder(message, where=where, hint=hint) from None
    if not exists:
        raise UnusableBuildFolder("the build folder does not exist", where=where, hint=hint)
    if not is_folder:
        raise UnusableBuildFolder("is not a folder", where=where, hint=hint)


class ImageResolver:
    """Resolves references to :class:`KlikoImage`, remembering results for one run and on disk.

    With ``remember=False`` (a dry run) kliko.yml files already kept under ``specs_dir`` are
    read, but none is written: nothing on disk changes.
    """

    def __init__(self, runtime: Runtime, specs_dir: Path | None, *, remember: bool = True) -> None:
        self._runtime = runtime
        self._specs_dir = specs_dir
        self._remember = remember
        self._by_ref: dict[str, KlikoImage] = {}
        self._by_id: dict[str, KlikoSpec] = {}
        self._failed: dict[str, KlikoError] = {}

    async def resolve(self, ref: str) -> KlikoImage:
        """The image ``ref`` names (tag or ID), with its spec; raises ImageError or SpecError."""
        known = self._by_ref.get(ref)
        if known is None:
            failed = self._failed.get(ref)
            if failed is not None:
                raise failed
            image_id = await self._runtime.resolve_image(ref)
            known = KlikoImage(ref=ref, id=image_id, spec=await self.spec_of(image_id, ref))
            self._by_ref[ref] = known
        return known

    async def prefetch(self, refs: Iterable[str], *, at_once: int = 8) -> None:
        """Resolve several images concurrently (each a probe container on a first read).

        Failures are kept and raised by :meth:`resolve` of that reference, in its turn.
        """
        limiter = anyio.CapacityLimiter(at_once)

        async def one(ref: str) -> None:
            async with limiter:
                try:
                    await self.resolve(ref)
                except KlikoError as error:
                    self._failed[ref] = error

        async with anyio.create_task_group() as group:
            for ref in dict.fromkeys(refs):
                group.start_soon(one, ref)

    async def build(
        self, context: Path, *, tag: str | None = None, on_log: Callable[[str], None] | None = None
    ) -> KlikoImage:
        """Build ``context`` (a folder with a Dockerfile) and return the resulting Kliko image.

        The image is labelled (:data:`BUILT_LABEL`, its folder and the folder's digest).
        """
        check_build_folder(context)
        labels = {
            BUILT_LABEL: "1",
            CONTEXT_LABEL: str(context),
            CONTEXT_DIGEST_LABEL: await anyio.to_thread.run_sync(context_digest, context),
        }
        image_id = await self._runtime.build_image(context, tag=tag, on_log=on_log, labels=labels)
        return KlikoImage(ref=tag or str(context), id=image_id, spec=await self.spec_of(image_id))

    async def find_built(self, context: Path) -> KlikoImage | None:
        """The image an earlier build of ``context``, as its files are now, gave; else None."""
        check_build_folder(context)
        try:
            digest = await anyio.to_thread.run_sync(context_digest, context)
        except OSError:
            return None  # the build itself will say what is wrong
        found = await self._runtime.find_images(
            {BUILT_LABEL: "1", CONTEXT_LABEL: str(context), CONTEXT_DIGEST_LABEL: digest}
        )
        if not found:
            return None
        return KlikoImage(ref=str(context), id=found[0], spec=await self.spec_of(found[0]))

    async def spec_of(self, image_id: str, ref: str | None = None) -> KlikoSpec:
        spec = self._by_id.get(image_id)
        if spec is not None:
            return spec
        source = f"image {ref or image_id}:{KLIKO_YML}"
        memo = self._memo_path(image_id)
        remembered = _read_memo(memo) if memo is not None else None
        if remembered is not None:
            spec = parse_spec(remembered, source)
        else:
            files = await self._runtime.probe_image(
                image_id, read=[KLIKO_YML], stat=[KLIKO_EXECUTABLE]
            )
            text = files.contents.get(KLIKO_YML)
            if text is None:
                problem = files.problems.get(KLIKO_YML)
                raise SpecError(
                    f"the image's {KLIKO_YML} {problem}, so it is not a Kliko image"
                    if problem
                    else f"the image has no {KLIKO_YML}, so it is not a Kliko image",
                    where=f"image {ref or image_id}",
                    hint="Add a kliko.yml describing its parameters (COPY kliko.yml /kliko.yml).",
                )
            problem = files.problems.get(KLIKO_EXECUTABLE)
            if files.exists.get(KLIKO_EXECUTABLE, False) and problem:
                raise SpecError(
                    f"the image's {KLIKO_EXECUTABLE} {problem}, so no container of it can run",
                    where=f"image {ref or image_id}",
                    hint=f"Make it executable in the image: add RUN chmod +x {KLIKO_EXECUTABLE} "
                    "to its Dockerfile after the line that adds it (or chmod +x the file before "
                    "building).",
                )
            if not files.exists.get(KLIKO_EXECUTABLE, False):
                raise SpecError(
                    f"the image's {KLIKO_EXECUTABLE} {problem}, so it is not a Kliko image"
                    if problem
                    else f"the image has no {KLIKO_EXECUTABLE} executable, so it is not a "
                    "Kliko image",
                    where=f"image {ref or image_id}",
                    hint="Add the program the container runs as /kliko (COPY kliko /kliko).",
                )
            spec = parse_spec(text, source)
            if memo is not None and self._remember:
                await anyio.to_thread.run_sync(_write_memo, memo, text)
        self._by_id[image_id] = spec
        return spec

    def _memo_path(self, image_id: str) -> Path | None:
        if self._specs_dir is None:
            return None
        return self._specs_dir / (image_id.replace(":", "-") + ".kliko.yml")


_MEMO_HEADER = b"kliko-async memo 2 sha256="
"""A memo's first line, up to its checksum. Version 2 memos are written only for images whose
/kliko can be run; an earlier memo (from before /kliko's execute bits were checked) is not
read, so that its image is probed again."""


def _read_memo(path: Path) -> bytes | None:
    """The kliko.yml remembered at ``path``; None if absent, unreadable, truncated or altered
    (its first line holds the SHA-256 of the rest), so that the image is read again."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    header, newline, text = data.partition(b"\n")
    if not newline or not header.startswith(_MEMO_HEADER):
        return None
    if header.removeprefix(_MEMO_HEADER).decode("ascii", "replace") != _sha256(text):
        return None
    return text


def _write_memo(path: Path, text: bytes) -> None:
    """Remember ``text`` at ``path`` atomically and durably: a crash leaves the old memo or the
    new one, never a part of it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            with tmp.open("wb") as handle:
                handle.write(_MEMO_HEADER + _sha256(text).encode("ascii") + b"\n" + text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        fsync_dir(path.parent)
    except OSError:
        pass  # the memo is an optimisation; an unwritable cache is reported where it matters


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
