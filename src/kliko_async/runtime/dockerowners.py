"""Who owns the files in a container's writable mounts, changed through the engine.

A step with its own user must be able to write its ``/output`` or ``/work``; the invoking user
may not be able to chown (only root can), and opening the folders to everyone would widen what
every other user of the host may do. The engine can chown: a mount's tree is read through the
container's archive endpoint, each entry's owner is rewritten, and the tree is written back; the
engine extracts it with the owners the archive names, never following a link. Lending gives
every entry to the step's user before the container starts and remembers the former owners;
returning gives them back afterwards (new entries go to the job's ``owner``, if any). Modes are
kept as they are. The copies pass through temporary files beside the mount, never memory.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import aiodocker
import anyio

from kliko_async.errors import ContainerError
from kliko_async.model.chainmodel import numeric_user as parsed_user
from kliko_async.runtime.base import ContainerJob, Mount
from kliko_async.runtime.dockerlogs import engine_response

Owners = dict[str, tuple[int, int]]
"""Archive entry name -> (uid, gid) it had."""


def numeric_user(user: str | None) -> tuple[int, int | None]:
    """``uid`` and ``gid`` (None if not given) of a ``uid[:gid]`` user; a clear error if not
    (a chain's steps are checked when it is loaded; a job may come from elsewhere)."""
    found = parsed_user(user or "")
    if found is None:
        raise ContainerError(
            f"the step's user {user!r} is not a numeric uid or uid:gid, so its folders cannot "
            "be given to it (kliko-async never makes them writable by everyone instead); give "
            "the user as uid:gid, such as '1000:1000'"
        )
    return found


async def lend_mounts(client: Any, container_id: str, job: ContainerJob) -> dict[str, Owners]:
    """Give everything in the job's writable mounts to ``job.user``; the former owners, by
    mount target. Call it after the container is created and before it starts."""
    uid, gid = numeric_user(job.user)
    former: dict[str, Owners] = {}
    for mount in _writable(job):
        owners: Owners = {}
        former[mount.target] = owners
        await _rewrite(client, container_id, mount, partial(_lent, uid=uid, gid=gid, owners=owners))
    return former


async def return_mounts(
    client: Any, container_id: str, job: ContainerJob, former: dict[str, Owners]
) -> None:
    """Give what was in the writable mounts before back to its former owners and what is new
    to ``job.owner`` (with owner read and write bits); without an owner, new entries keep the
    container's user. Call it once the container has ended."""
    owner = None
    if job.owner is not None:
        uid, gid = numeric_user(job.owner)
        owner = (uid, uid if gid is None else gid)
    for mount in _writable(job):
        owners = former.get(mount.target, {})
        if owner is None and not owners:
            continue
        await _rewrite(client, container_id, mount, partial(_returned, owners=owners, owner=owner))


def _writable(job: ContainerJob) -> list[Mount]:
    return [mount for mount in job.mounts if not mount.read_only]


async def _rewrite(
    client: Any, container_id: str, mount: Mount, rewrite: Callable[[BinaryIO, BinaryIO], None]
) -> None:
    """Fetch the mount's tree from the engine, pass it through ``rewrite``, write it back."""
    try:
        await _rewrite_through_engine(client, container_id, mount, rewrite)
    except (aiodocker.DockerError, tarfile.TarError) as error:
        text = error.message if isinstance(error, aiodocker.DockerError) else str(error)
        raise ContainerError(
            f"the engine could not change the owners in {mount.source} (at {mount.target}): {text}"
        ) from None


async def _rewrite_through_engine(
    client: Any, container_id: str, mount: Mount, rewrite: Callable[[BinaryIO, BinaryIO], None]
) -> None:
    with (
        tempfile.TemporaryFile(dir=mount.source.parent) as fetched,
        tempfile.TemporaryFile(dir=mount.source.parent) as rewritten,
    ):
        async with engine_response(
            client,
            f"containers/{container_id}/archive",
            method="GET",
            params={"path": mount.target},
            timeout=None,
        ) as response:
            async for chunk in response.content.iter_chunked(1 << 20):
                await anyio.to_thread.run_sync(fetched.write, chunk)
        fetched.seek(0)
        await anyio.to_thread.run_sync(rewrite, fetched, rewritten)
        rewritten.seek(0)
        async with engine_response(
            client,
            f"containers/{container_id}/archive",
            method="PUT",
            params={"path": str(Path(mount.target).parent)},
            data=_file_chunks(rewritten),
            headers={"Content-Type": "application/x-tar"},
            timeout=None,
        ):
            pass


def _lent(source: BinaryIO, target: BinaryIO, uid: int, gid: int | None, owners: Owners) -> None:
    """Every entry owned by ``uid`` (and ``gid``, if given); the former owners into ``owners``."""
    with _tars(source, target) as (read, write):
        for member in read:
            owners[member.name] = (member.uid, member.gid)
            member.uid, member.uname = uid, ""
            if gid is not None:
                member.gid, member.gname = gid, ""
            write.addfile(member, read.extractfile(member) if member.isreg() else None)


def _returned(
    source: BinaryIO, target: BinaryIO, owners: Owners, owner: tuple[int, int] | None
) -> None:
    """Entries named in ``owners`` get them back; the others go to ``owner`` (if given)."""
    with _tars(source, target) as (read, write):
        for member in read:
            if member.name in owners:
                member.uid, member.gid = owners[member.name]
            elif owner is not None:
                member.uid, member.gid = owner
                if member.isdir():
                    member.mode |= 0o700
                elif member.isreg():
                    member.mode |= 0o600
            member.uname = member.gname = ""
            write.addfile(member, read.extractfile(member) if member.isreg() else None)


@contextmanager
def _tars(source: BinaryIO, target: BinaryIO) -> Iterator[tuple[tarfile.TarFile, tarfile.TarFile]]:
    """The archive read from the engine and the one written back, both streamed."""
    with (
        tarfile.open(fileobj=source, mode="r|") as read,
        tarfile.open(fileobj=target, mode="w|", format=tarfile.PAX_FORMAT) as write,
    ):
        yield read, write


async def _file_chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(handle.read, 1 << 20):
        yield chunk
