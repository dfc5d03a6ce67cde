"""What passes between this host and the Docker Engine besides logs: a job as the engine's
container configuration (its folders as mounts), files read out of an image (through a container
made for it), a build folder as a tar."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import aiodocker

from kliko_async.errors import ContainerError
from kliko_async.runtime.base import (
    KLIKO_EXECUTABLE,
    LABEL_PREFIX,
    OWNER_LABEL,
    ContainerJob,
    owner_label,
)
from kliko_async.runtime.dockerlogs import engine_response


async def read_file(
    client: aiodocker.Docker, container_id: str, path: str, *, limit: int
) -> bytes | None:
    """The file at ``path`` in a container, or None if there is none; at most ``limit + 1``
    bytes of it (more than ``limit`` means it is too big: the caller says so). The engine's
    archive is read only as far as that, never whole: an image is someone else's, and its
    kliko.yml may be any size."""
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
            async for chunk in response.content.iter_chunked(1 << 16):
                received += chunk
                if len(received) >= wanted:
                    break  # the rest is never read; the connection is closed, not reused
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise ContainerError(f"cannot copy {path} out of the image: {exc.message}") from None
    try:
        with tarfile.open(fileobj=io.BytesIO(received), mode="r|") as archive:
            for member in archive:
                if member.isfile():
                    handle = archive.extractfile(member)
                    return handle.read(limit + 1) if handle else None
    except tarfile.TarError as error:
        raise ContainerError(f"cannot read {path} out of the image: {error}") from None
    return None


_TAR_HEADERS = 16 << 10
"""Room for the archive's headers before the file's bytes (long names take extra blocks)."""


async def path_exists(client: aiodocker.Docker, container_id: str, path: str) -> bool:
    try:
        async with engine_response(
            client,
            f"containers/{container_id}/archive",
            method="HEAD",
            params={"path": path},
        ):
            return True
    except ValueError:
        # A HEAD error reply has no body, and aiodocker fails decoding it as JSON: the engine
        # answers HEAD on the archive endpoint with an error only when the path is absent.
        return False
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise ContainerError(f"cannot look for {path} in the image: {exc.message}") from None


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
