"""The Docker Engine runtime, on aiodocker: the only module that talks to Docker."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import struct
import tarfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import anyio

from kliko_async.errors import ContainerError, ImageError, RuntimeUnavailable
from kliko_async.runtime.base import (
    KLIKO_EXECUTABLE,
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
from kliko_async.runtime.dockerowners import Owners, lend_mounts, return_mounts
from kliko_async.runtime.inflight import InFlight, track, untrack

STOP_GRACE_SECONDS = 3
"""After SIGTERM, how long a cancelled container may take before it is killed."""

CLEANUP_DEADLINE_SECONDS = 15
"""The shielded cleanup (stop + remove) gives up after this long."""

CREATE_DEADLINE_SECONDS = 30
"""Creating a container is shielded from cancellation (else the engine may make one that no
cleanup knows of) for at most this long."""

EVENTS_DEADLINE_SECONDS = 5
"""How long reading the engine's events of a failed container (was it killed?) may take."""

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
            "Cmd": [KLIKO_EXECUTABLE],
            "Entrypoint": [],
            "Labels": {
                f"{LABEL_PREFIX}.managed": "1",
                f"{LABEL_PREFIX}.probe": "1",
                OWNER_LABEL: owner_label(),
            },
        }
        container = await self._create(config)
        tracked = track(InFlight("reading an image's kliko.yml", container_id=container.id))
        try:
            contents = {path: await self._read_file(container, path) for path in read}
            exists = {path: await self._path_exists(container, path) for path in stat}
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_DEADLINE_SECONDS):
                await self._delete(container)
                untrack(tracked)
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
        self,
        context: Path,
        *,
        tag: str | None = None,
        on_log: Callable[[str], None] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        await self._ready()
        if not (context / "Dockerfile").is_file():
            raise ImageError("no Dockerfile in the build folder", where=f"build '{context}'")
        archive = await anyio.to_thread.run_sync(_tar_context, context)
        image_id: str | None = None
        output: list[str] = []
        try:
            stream = self.client.images.build(
                fileobj=archive,
                encoding="gzip",
                tag=tag,
                rm=True,
                forcerm=True,
                stream=True,
                labels=dict(labels or {}),
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
        step = job.labels.get(f"{LABEL_PREFIX}.step")
        tracked = track(InFlight(f"step {step}" if step else "a container", container.id))
        exited = False
        former: dict[str, Owners] | None = None
        try:
            if job.lend_mounts:
                former = {}
                former.update(await lend_mounts(self.client, container.id, job))
            try:
                await container.start()
            except aiodocker.DockerError as exc:
                raise ContainerError(
                    f"the engine could not start the container: {exc.message}"
                ) from None
            if on_start:
                on_start(container.id)
            logs = _LogReader(on_log)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._follow_logs, container.id, logs)
                status = await container.wait()
            exited = True
            code = int(status.get("StatusCode", -1))
            try:
                await self._catch_up_logs(container.id, logs)
            except aiodocker.DockerError:
                if code == 0:
                    raise  # the log may be incomplete: no success without all of it
                # A failure is explained below (a container being removed has no log left).
            logs.flush()
            if former is not None:
                lent, former = former, None
                await return_mounts(self.client, container.id, job, lent)
            error = (status.get("Error") or {}).get("Message") or None
            if code == 0:  # only a failure needs the full state: killed? out of memory?
                return ContainerExit(container_id=container.id, exit_code=0, error=error)
            return await self._failed_exit(container, code, error, job.memory)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ContainerError("the container was removed while it ran") from None
            raise ContainerError(f"the engine lost the container: {exc.message}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_DEADLINE_SECONDS):
                if former is not None:  # lent and not yet returned: cancelled or failed
                    await self._stop_and_return(container, job, former)
                if exited:
                    await self._delete(container)
                else:  # cancelled or failed while running: stop it gracefully first
                    await self._stop_and_delete(container)
                untrack(tracked)

    async def _failed_exit(
        self, container: Any, code: int, error: str | None, memory: int | None
    ) -> ContainerExit:
        """How a container that exited non-zero ended: removed, killed from outside, or OOM."""
        state = (await container.show()).get("State", {})
        if state.get("Status") == "removing":
            raise ContainerError("the container was removed while it ran (docker rm from outside)")
        oom_killed = bool(state.get("OOMKilled", False))
        events = await self._ending_events(container.id, str(state.get("StartedAt", "")))
        killed_by = events.get("kill")
        # With cgroup v1 the engine misses some OOM kills (no OOMKilled, no 'oom' event). A
        # SIGKILL under a memory limit that no one sent from outside is the kernel's OOM killer.
        oom_killed = oom_killed or "oom" in events
        oom_killed = oom_killed or (code == 137 and memory is not None and killed_by is None)
        return ContainerExit(
            container_id=container.id,
            exit_code=code,
            oom_killed=oom_killed,
            killed_by=None if oom_killed else killed_by,
            error=error or state.get("Error") or None,
        )

    async def _ending_events(self, container_id: str, started_at: str) -> dict[str, str]:
        """The engine's 'kill' (as the signal sent) and 'oom' events of an ended container.

        The engine replays past events from memory up to the container's 'die'; a busy engine
        may have dropped them, hence the deadline.
        """
        found: dict[str, str] = {}
        try:
            since = int(datetime.fromisoformat(started_at).timestamp()) - 1
        except ValueError:
            since = 0
        filters = {"container": [container_id], "event": ["kill", "oom", "die"]}
        params = {"since": str(max(since, 0)), "filters": json.dumps(filters)}
        with anyio.move_on_after(EVENTS_DEADLINE_SECONDS):
            try:
                async with self.client._query(
                    "events", method="GET", params=params, timeout=None
                ) as response:
                    async for line in response.content:
                        event = json.loads(line) if line.strip() else {}
                        action = event.get("Action") or event.get("status")
                        if action == "die":
                            break
                        if action == "kill":
                            actor = event.get("Actor") or {}
                            number = (actor.get("Attributes") or {}).get("signal")
                            found["kill"] = _signal_name(number)
                        elif action == "oom":
                            found["oom"] = "oom"
            except (aiohttp.ClientError, aiodocker.DockerError, OSError, ValueError):
                pass  # only the explanation of a failure is lost, not the failure
        return found

    async def _follow_logs(self, container_id: str, logs: _LogReader) -> None:
        """Read the multiplexed log stream, keeping stdout and stderr apart, line by line.

        If the stream breaks, what it missed is fetched once the container has ended.
        """
        params = {"stdout": 1, "stderr": 1, "follow": 1, "timestamps": 1}
        try:
            async with self.client._query(
                f"containers/{container_id}/logs", method="GET", params=params, timeout=None
            ) as response:
                while (frame := await _read_frame(response.content)) is not None:
                    logs.feed(*frame)
        except (aiohttp.ClientError, aiodocker.DockerError, OSError):
            pass

    async def _catch_up_logs(self, container_id: str, logs: _LogReader) -> None:
        """Deliver the lines that the follow stream missed, if any.

        Some engines (Docker 20.10) end a followed log stream when the container exits, before
        its last lines were sent. The last frame seen (its time stamp has nanoseconds) is
        compared with the container's last frame; only if they differ is the log read again,
        and the frames after the last one seen are delivered.
        """
        last = await self._log_frames(container_id, {"tail": "1"})
        if last == ([logs.last] if logs.last is not None else []):
            return
        params: dict[str, Any] = {"stdout": 1, "stderr": 1, "timestamps": 1, "tail": "all"}
        found = logs.last is None
        async with self.client._query(
            f"containers/{container_id}/logs", method="GET", params=params, timeout=None
        ) as response:
            while (frame := await _read_frame(response.content)) is not None:
                if found:
                    logs.feed(*frame)
                else:
                    found = frame == logs.last

    async def _log_frames(
        self, container_id: str, extra: dict[str, str]
    ) -> list[tuple[int, bytes]]:
        params: dict[str, Any] = {"stdout": 1, "stderr": 1, "timestamps": 1, **extra}
        frames: list[tuple[int, bytes]] = []
        async with self.client._query(
            f"containers/{container_id}/logs", method="GET", params=params
        ) as response:
            while (frame := await _read_frame(response.content)) is not None:
                frames.append(frame)
        return frames

    async def find_images(self, labels: Mapping[str, str]) -> list[str]:
        await self._ready()
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        try:
            found = await self.client.images.list(filters=filters)
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
        newest_first = sorted(found, key=lambda image: image.get("Created", 0), reverse=True)
        return [str(image["Id"]) for image in newest_first]

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
        """Create a container, shielded: a cancellation meanwhile is delivered at the caller's
        next await, inside the try whose cleanup removes the container.

        Nothing here may await after the creation, or a cancellation could still fall between
        the engine making the container and the caller knowing it.
        """
        try:
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + CREATE_DEADLINE_SECONDS
                container = await self.client.containers.create(config)
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
        except aiodocker.DockerError as exc:
            raise ContainerError(
                f"the engine could not create a container: {exc.message}"
            ) from None
        if scope.cancelled_caught:
            raise ContainerError(
                f"the engine did not create the container within {CREATE_DEADLINE_SECONDS} s"
            )
        return container

    async def _stop_and_return(
        self, container: Any, job: ContainerJob, former: dict[str, Owners]
    ) -> None:
        """Stop the container and give its mounts back (best effort: the run already failed)."""
        with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError):
            await container.stop(t=STOP_GRACE_SECONDS)
        with contextlib.suppress(aiohttp.ClientError, OSError, ContainerError):
            await return_mounts(self.client, container.id, job, former)

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


class _LogReader:
    """Turns log frames (``<time stamp> <bytes>``) into lines for a sink, stream by stream."""

    def __init__(self, on_log: LogSink) -> None:
        self._on_log = on_log
        self._splitters: dict[Stream, LineSplitter] = {
            "stdout": LineSplitter(),
            "stderr": LineSplitter(),
        }
        self._stamps: dict[Stream, str] = {}
        self.last: tuple[int, bytes] | None = None

    def feed(self, kind: int, payload: bytes) -> None:
        self.last = (kind, payload)
        stream: Stream = _STREAMS.get(kind, "stdout")
        stamp, _, data = payload.partition(b" ")
        self._stamps[stream] = at = stamp.decode("ascii", "replace")
        for line in self._splitters[stream].feed(data):
            self._on_log(stream, line, at)

    def flush(self) -> None:
        for stream, splitter in self._splitters.items():
            for line in splitter.flush():
                self._on_log(stream, line, self._stamps.get(stream))


async def _read_frame(content: aiohttp.StreamReader) -> tuple[int, bytes] | None:
    """One frame of a multiplexed log stream: (stream number, payload); None at its end."""
    try:
        header = await content.readexactly(8)
        kind, length = struct.unpack(">BxxxL", header)
        return kind, (await content.readexactly(length) if length else b"")
    except asyncio.IncompleteReadError:  # the stream ended
        return None


def _signal_name(number: object) -> str:
    try:
        return signal.Signals(int(str(number))).name
    except ValueError:
        return f"signal {number}"


def _container_config(job: ContainerJob) -> dict[str, Any]:
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


def _tar_context(context: Path) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(str(context), arcname=".")
    buffer.seek(0)
    return buffer
