"""The Docker Engine runtime, on aiodocker: the only module that talks to Docker."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import anyio

from kliko_async.errors import ContainerError, ImageError, RuntimeUnavailable
from kliko_async.runtime.base import (
    LABEL_PREFIX,
    OWNER_LABEL,
    ContainerExit,
    ContainerJob,
    ImageFiles,
    LineSplitter,
    LogSink,
    Stream,
    owner_label,
)

STOP_GRACE_SECONDS = 3
"""After SIGTERM, how long a cancelled container may take before it is killed."""

CLEANUP_DEADLINE_SECONDS = 15
"""The shielded cleanup (stop + remove) gives up after this long."""

_STREAMS: dict[int, Stream] = {1: "stdout", 2: "stderr"}
_UNAVAILABLE_HINT = (
    "Start a Docker Engine (scripts/ensure-docker does it on Debian) or point DOCKER_HOST at one; "
    "if the socket exists but access is denied, add yourself to the 'docker' group."
)


class DockerRuntime:
    """Runs Kliko containers on a Docker Engine through its HTTP API (see ``Runtime``)."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        self._client: aiodocker.Docker | None = None
        self._version: str | None = None

    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            self._client = aiodocker.Docker(url=self._url)
        return self._client

    async def ping(self) -> str:
        """The engine's version; raises RuntimeUnavailable when no engine answers."""
        try:
            info: dict[str, Any] = await self.client.version()
        except (aiohttp.ClientError, OSError, aiodocker.DockerError) as exc:
            raise self._unavailable(exc) from None
        self._version = str(info.get("Version", "?"))
        return self._version

    async def _ready(self) -> None:
        """Fail early, and readably, when no engine can be reached (checked once)."""
        if self._version is None:
            await self.ping()

    def _unavailable(self, exc: BaseException) -> RuntimeUnavailable:
        where = self._url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        text = str(exc)
        if "Permission denied" in text or isinstance(exc.__cause__, PermissionError):
            message = f"permission denied on the Docker Engine socket ({where})"
        elif isinstance(exc, aiodocker.DockerError) and exc.status != 900:
            message = f"the Docker Engine at {where} answered with an error: {exc.message}"
        else:
            message = f"no Docker Engine answers at {where}"
        return RuntimeUnavailable(message, hint=_UNAVAILABLE_HINT)

    async def resolve_image(self, ref: str) -> str:
        await self._ready()
        try:
            return await self._inspect_image_id(ref)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise ImageError(
                    f"cannot inspect image: {exc.message}", where=f"image '{ref}'"
                ) from None
        if ref.startswith("sha256:"):
            raise ImageError("no such image ID on this engine", where=f"image '{ref}'")
        try:
            await self.client.images.pull(ref)
        except aiodocker.DockerError as exc:
            raise ImageError(
                f"not present on this engine and could not be pulled ({exc.message.strip()})",
                where=f"image '{ref}'",
                hint="Build it first (docker build -t ...), or give the step a 'build:' folder.",
            ) from None
        return await self._inspect_image_id(ref)

    async def _inspect_image_id(self, ref: str) -> str:
        try:
            info = await self.client.images.inspect(ref)
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
        return str(info["Id"])

    async def probe_image(
        self, image_id: str, *, read: Sequence[str] = (), stat: Sequence[str] = ()
    ) -> ImageFiles:
        await self._ready()
        config = {
            "Image": image_id,
            "Cmd": ["/kliko"],
            "Entrypoint": [],
            "Labels": {
                f"{LABEL_PREFIX}.managed": "1",
                f"{LABEL_PREFIX}.probe": "1",
                OWNER_LABEL: owner_label(),
            },
        }
        container = await self._create(config)
        try:
            contents = {path: await self._read_file(container, path) for path in read}
            exists = {path: await self._path_exists(container, path) for path in stat}
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_DEADLINE_SECONDS):
                await self._delete(container)
        return ImageFiles(contents=contents, exists=exists)

    async def _read_file(self, container: Any, path: str) -> bytes | None:
        try:
            archive: tarfile.TarFile = await container.get_archive(path)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise ContainerError(f"cannot copy {path} out of the image: {exc.message}") from None
        with archive:
            member = next((m for m in archive.getmembers() if m.isfile()), None)
            handle = archive.extractfile(member) if member else None
            return handle.read() if handle else None

    async def _path_exists(self, container: Any, path: str) -> bool:
        try:
            async with self.client._query(
                f"containers/{container.id}/archive", method="HEAD", params={"path": path}
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

    async def build_image(
        self, context: Path, *, tag: str | None = None, on_log: Callable[[str], None] | None = None
    ) -> str:
        await self._ready()
        if not (context / "Dockerfile").is_file():
            raise ImageError("no Dockerfile in the build folder", where=f"build '{context}'")
        archive = await anyio.to_thread.run_sync(_tar_context, context)
        image_id: str | None = None
        output: list[str] = []
        try:
            stream = self.client.images.build(
                fileobj=archive, encoding="gzip", tag=tag, rm=True, forcerm=True, stream=True
            )
            async for item in stream:
                text = str(item.get("stream", "")).rstrip("\n")
                if text:
                    output.append(text)
                    if on_log:
                        on_log(text)
                aux = item.get("aux")
                if isinstance(aux, dict) and "ID" in aux:
                    image_id = str(aux["ID"])
                if "error" in item:
                    raise aiodocker.DockerError(500, str(item["error"]))
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
        except aiodocker.DockerError as exc:
            tail = "\n".join(output[-10:])
            raise ImageError(
                f"the build failed: {exc.message.strip()}" + (f"\n{tail}" if tail else ""),
                where=f"build '{context}'",
            ) from None
        if image_id is None:
            if tag is None:
                raise ImageError("the build reported no image ID", where=f"build '{context}'")
            image_id = await self._inspect_image_id(tag)
        return image_id

    async def run(
        self,
        job: ContainerJob,
        *,
        on_log: LogSink,
        on_start: Callable[[str], None] | None = None,
    ) -> ContainerExit:
        await self._ready()
        container = await self._create(_container_config(job))
        exited = False
        try:
            try:
                await container.start()
            except aiodocker.DockerError as exc:
                raise ContainerError(
                    f"the engine could not start the container: {exc.message}"
                ) from None
            if on_start:
                on_start(container.id)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._follow_logs, container.id, on_log)
                status = await container.wait()
            exited = True
            code = int(status.get("StatusCode", -1))
            error = (status.get("Error") or {}).get("Message") or None
            oom_killed = False
            if code != 0:  # only a failure needs the full state: was it out of memory?
                state = (await container.show()).get("State", {})
                oom_killed = bool(state.get("OOMKilled", False))
                error = error or state.get("Error") or None
            return ContainerExit(
                container_id=container.id, exit_code=code, oom_killed=oom_killed, error=error
            )
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ContainerError("the container was removed while it ran") from None
            raise ContainerError(f"the engine lost the container: {exc.message}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_DEADLINE_SECONDS):
                if exited:
                    await self._delete(container)
                else:  # cancelled or failed while running: stop it gracefully first
                    await self._stop_and_delete(container)

    async def _follow_logs(self, container_id: str, on_log: LogSink) -> None:
        """Read the multiplexed log stream, keeping stdout and stderr apart, line by line."""
        splitters: dict[Stream, LineSplitter] = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        params = {"stdout": 1, "stderr": 1, "follow": 1}
        async with self.client._query(
            f"containers/{container_id}/logs", method="GET", params=params, timeout=None
        ) as response:
            content = response.content
            while True:
                try:
                    header = await content.readexactly(8)
                except Exception:  # incomplete read: the stream ended
                    break
                kind, length = struct.unpack(">BxxxL", header)
                stream: Stream = _STREAMS.get(kind, "stdout")
                data = await content.readexactly(length) if length else b""
                for line in splitters[stream].feed(data):
                    on_log(stream, line)
        for stream, splitter in splitters.items():
            for line in splitter.flush():
                on_log(stream, line)

    async def find_containers(self, labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
        await self._ready()
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        try:
            found = await self.client.containers.list(all=True, filters=filters)
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
        return {c.id: dict(c["Labels"] or {}) for c in found}

    async def remove_container(self, container_id: str) -> None:
        await self._delete(self.client.containers.container(container_id))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _create(self, config: dict[str, Any]) -> Any:
        try:
            return await self.client.containers.create(config)
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
        except aiodocker.DockerError as exc:
            raise ContainerError(
                f"the engine could not create a container: {exc.message}"
            ) from None

    async def _stop_and_delete(self, container: Any) -> None:
        # Already stopped or gone is fine: delete(force=True) below settles it.
        with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError):
            await container.stop(t=STOP_GRACE_SECONDS)
        await self._delete(container)

    async def _delete(self, container: Any) -> None:
        try:
            await container.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):  # gone already, or removal in progress
                raise ContainerError(f"could not remove container {container.id[:12]}") from None


def _container_config(job: ContainerJob) -> dict[str, Any]:
    host: dict[str, Any] = {
        "Binds": [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in job.mounts],
        "Privileged": False,
        "NetworkMode": "bridge",
    }
    if job.memory is not None:
        host["Memory"] = job.memory
        host["MemorySwap"] = job.memory
    if job.cpus is not None:
        host["NanoCpus"] = int(job.cpus * 1e9)
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


def _tar_context(context: Path) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(str(context), arcname=".")
    buffer.seek(0)
    return buffer
