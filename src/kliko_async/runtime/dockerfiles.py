"""What passes between this host and the Docker Engine besides logs: a job as the engine's
container configuration (its folders as mounts), files read out of an image (through a container
made for it), a build folder as a tar."""

from __future__ import annotations

import base64
import io
import json
import posixpath
import tarfile
from typing import Any, NamedTuple

import aiodocker

from kliko_async.errors import ContainerError, shown
from kliko_async.runtime.base import (
    KLIKO_EXECUTABLE,
    LABEL_PREFIX,
    OWNER_LABEL,
    ContainerJob,
    owner_label,
)
from kliko_async.runtime.dockerlogs import engine_response

MAX_LINKS = 40
"""The most symbolic links followed from one path of an image (Linux's bound): more means they
go round in a loop. The engine says where a link leads with every link on the way followed (and
fails on a loop), so one step is the rule; this bounds an engine that would say less."""


class ImageFile(NamedTuple):
    """What is at a path of an image, its symbolic links followed."""

    content: bytes | None
    """The file's first ``limit + 1`` bytes; None if no file is there."""
    problem: str | None
    """Why what is there is not a file, to follow its path ("is a folder", "is a symbolic link
    to '/x', which does not exist"), or, for a program, why the file cannot be run ("is not
    executable (mode 0644)"); None if it is a file (a program: one that can be run), or nothing
    is there at all."""


async def find_file(
    client: aiodocker.Docker, container_id: str, path: str, *, limit: int, program: bool = False
) -> ImageFile:
    """The file at ``path`` in a container, its symbolic links followed as ``cat`` in the
    container would (absolute targets from the container's root, never the host's: the engine
    resolves them in the container's filesystem); at most ``limit + 1`` bytes of it (more than
    ``limit`` means it is too big: the caller says so). The engine's archive is read only as far
    as that, never whole: an image is someone else's, and its kliko.yml may be any size. With
    ``program``, a file without any execute bit (which no container can run) has a problem too;
    its content is still given: it is there."""
    if limit == 0:
        mode = await _plain_file_mode(client, container_id, path)
        if mode is not None:  # present, and nothing of it asked for: no download
            return _file(b"", mode, program=program, path=path, where=path)
    where = path
    for _ in range(MAX_LINKS + 1):
        try:
            found = await _first_member(client, container_id, where, limit=limit)
        except _Unresolved as unresolved:
            return ImageFile(None, _via(path, where, str(unresolved)))
        if found is None:
            return ImageFile(None, None if where == path else _via(path, where, "missing"))
        member, content, target = found
        if not member.issym():
            if member.isfile():
                return _file(content, member.mode, program=program, path=path, where=where)
            kind = "a folder" if member.isdir() else "a device or a pipe, not a file"
            return ImageFile(None, _via(path, where, kind))
        where = target or _lexically(where, member.linkname)
    return ImageFile(None, _via(path, where, _LOOP))


def _file(content: bytes | None, mode: int, *, program: bool, path: str, where: str) -> ImageFile:
    """The file ``path`` leads to (at ``where``), of permission bits ``mode``. A ``program``
    with no execute bit gets that for its problem: the kernel would refuse to run it
    (``permission denied`` when its container starts, after the steps before it ran)."""
    if program and not mode & 0o111:
        return ImageFile(content, _via(path, where, f"not executable (mode {mode & 0o777:04o})"))
    return ImageFile(content, None)


def _via(path: str, where: str, kind: str) -> str:
    """What ``path`` is, having led to ``where``: ``kind`` says what is there."""
    if where == path:
        return f"is {kind}"
    if kind == "missing":
        return f"is a symbolic link to {shown(where)}, which does not exist"
    return f"is a symbolic link to {shown(where)}, which is {kind}"


def _lexically(link: str, target: str) -> str:
    """``target`` of the link at ``link``, as an absolute path (for an engine that does not say
    where a link leads): ``..`` never leaves the root."""
    return "/" + posixpath.normpath(posixpath.join(posixpath.dirname(link), target)).lstrip("/")


_LOOP = "a symbolic link that goes round in a loop"
_UNRESOLVED = {
    "too many links": _LOOP,
    "not a directory": "a symbolic link that leads nowhere (through a file, as into a folder)",
}
"""What the engine's error in following a path's links (its text) means: the rest of its text
names the host's folders, and is not shown."""


class _Unresolved(Exception):
    """The engine could not follow the links of a path: ``str()`` says why."""


async def _first_member(
    client: aiodocker.Docker, container_id: str, path: str, *, limit: int
) -> tuple[tarfile.TarInfo, bytes | None, str | None] | None:
    """The first member of the engine's archive of ``path`` (itself; a link is not followed),
    the first ``limit + 1`` bytes of its content if it is a file, and where it leads if it is a
    symbolic link (resolved by the engine in the container); None if nothing is there."""
    wanted = limit + 1 + _TAR_HEADERS
    received = bytearray()
    try:
        async with engine_response(
            client,
            f"containers/{container_id}/archive",
            method="GET",
            params={"path": path},
            timeout=None,
        ) as response:
            target = _link_target(response.headers.get(_STAT_HEADER, ""))
            async for chunk in response.content.iter_chunked(1 << 16):
                received += chunk
                if len(received) >= wanted:
                    break  # the rest is never read; the connection is closed, not reused
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        for error, meaning in _UNRESOLVED.items():
            if error in exc.message:
                raise _Unresolved(meaning) from None
        raise ContainerError(f"cannot copy {path} out of the image: {exc.message}") from None
    try:
        with tarfile.open(fileobj=io.BytesIO(received), mode="r|") as archive:
            member = archive.next()
            if member is None:
                return None
            handle = archive.extractfile(member) if member.isfile() else None
            return member, handle.read(limit + 1) if handle else None, target
    except tarfile.TarError as error:
        raise ContainerError(f"cannot read {path} out of the image: {error}") from None


_TAR_HEADERS = 16 << 10
"""Room for the archive's headers before the file's bytes (long names take extra blocks)."""

_STAT_HEADER = "X-Docker-Container-Path-Stat"
"""The engine's stat of the archived path (base64 JSON): ``linkTarget`` is where a symbolic link
leads, every link on the way followed in the container's filesystem."""


def _link_target(header: str) -> str | None:
    stat = _path_stat(header)
    target = stat.get("linkTarget")
    return target if isinstance(target, str) and target.startswith("/") else None


def _path_stat(header: str) -> dict[str, Any]:
    try:
        stat = json.loads(base64.b64decode(header, validate=True))
    except ValueError:
        return {}
    return stat if isinstance(stat, dict) else {}


_GO_MODE_TYPE = (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)
"""Go's ``os.ModeType`` (folder, link, device, pipe, socket, char device, irregular): the
engine's stat ``mode`` of a regular file has none of these bits."""


async def _plain_file_mode(client: aiodocker.Docker, container_id: str, path: str) -> int | None:
    """The permission bits of ``path`` if it is a regular file (not a link), by the engine's
    stat of it alone (a HEAD request, no archive): the common case of a probe, answered without
    a download (which cost a run's planning 30 ms an image). Anything else, or an error: None,
    and :func:`find_file` looks closer."""
    try:
        async with engine_response(
            client, f"containers/{container_id}/archive", method="HEAD", params={"path": path}
        ) as response:
            mode = _path_stat(response.headers.get(_STAT_HEADER, "")).get("mode")
    except (ValueError, aiodocker.DockerError):  # a HEAD error reply has no body to decode
        return None
    if not isinstance(mode, int) or mode & _GO_MODE_TYPE:
        return None
    return mode & 0o777  # Go keeps the Unix permission bits where Unix does


def probe_config(image_id: str) -> dict[str, Any]:
    """A container of ``image_id`` made only to read its files, never started: labelled as
    kliko-async's and this process's, so that a leftover is found and removed."""
    return {
        "Image": image_id,
        "Cmd": [KLIKO_EXECUTABLE],
        "Entrypoint": [],
        "Labels": {
            f"{LABEL_PREFIX}.managed": "1",
            f"{LABEL_PREFIX}.probe": "1",
            OWNER_LABEL: owner_label(),
        },
    }


def container_config(job: ContainerJob) -> dict[str, Any]:
    """The engine's configuration of the container that runs ``job``."""
    host: dict[str, Any] = {
        # Mounts, not Binds: a host path may hold ':' or ',' (Binds splits it at ':').
        "Mounts": [
            {"Type": "bind", "Source": str(m.source), "Target": m.target, "ReadOnly": m.read_only}
            for m in job.mounts
        ],
        "Privileged": False,
        "NetworkMode": "bridge",
        # The 'local' log driver keeps the bytes a container writes; 'json-file' (the usual
        # default) turns what is not UTF-8 into U+FFFD, and others (journald) cannot be read
        # back at all. Lines are followed live; the files only matter for catching up.
        "LogConfig": {"Type": "local", "Config": {"max-size": "100m", "max-file": "5"}},
    }
    if job.memory is not None:
        host["Memory"] = job.memory
        host["MemorySwap"] = job.memory
    if job.cpus is not None:
        host["NanoCpus"] = int(job.cpus * 1e9)
    if job.gpus:  # as `docker run --gpus N`: the engine's GPU device driver picks them
        host["DeviceRequests"] = [{"Driver": "", "Count": job.gpus, "Capabilities": [["gpu"]]}]
    config: dict[str, Any] = {
        "Image": job.image,
        "Env": [f"{k}={v}" for k, v in job.env.items()],
        "Labels": {f"{LABEL_PREFIX}.managed": "1", **job.labels},
        "HostConfig": host,
        "AttachStdout": False,
        "AttachStderr": False,
        "Tty": False,
    }
    if job.command is not None:
        config["Cmd"] = list(job.command)
    if job.user is not None:
        config["User"] = job.user
    if job.workdir is not None:
        config["WorkingDir"] = job.workdir
    return config
