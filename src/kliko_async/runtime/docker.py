"""The Docker Engine runtime, on aiodocker: containers made, run, waited for through lost
connections, and removed. Its log and event streams are in ``dockerlogs``, what it hands the
engine in ``dockerfiles``, owners in ``dockerowners``, image exports in ``dockerexport``."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import anyio

from kliko_async.errors import ContainerError, ImageError, MissingImage, RuntimeUnavailable, shown
from kliko_async.model.spec import MAX_KLIKO_YML_BYTES
from kliko_async.runtime.base import (
    LABEL_PREFIX,
    ContainerExit,
    ContainerJob,
    ImageFiles,
    LogSink,
)
from kliko_async.runtime.buildcontext import open_context_archive
from kliko_async.runtime.dockerbuild import stream_build
from kliko_async.runtime.dockerfiles import container_config, find_file, probe_config
from kliko_async.runtime.dockerlogs import LogFollower, LogReader, ending_events
from kliko_async.runtime.dockerowners import Owners, lend_mounts, return_mounts
from kliko_async.runtime.dockerstats import UsageSampler
from kliko_async.runtime.inflight import InFlight, track, untrack

STOP_GRACE_SECONDS = 3
"""After SIGTERM, how long a cancelled container may take before it is killed."""

CLEANUP_DEADLINE_SECONDS = 15
"""The shielded cleanup (stop + remove) gives up after this long."""

CREATE_DEADLINE_SECONDS = 30
"""Creating a container is shielded from cancellation (else the engine may make one that no
cleanup knows of) for at most this long."""

ENGINE_GONE_SECONDS = 30
"""How long the engine may go unreachable while a container runs (restarting, a dropped
connection) before the step fails because the engine went away."""

WAIT_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
"""The pauses between attempts to reach the engine again while waiting (the last repeats)."""

LOG_DRAIN_SECONDS = 10
"""Once the container ended, how long its followed log may take to end by itself; what it has
not delivered by then is fetched by position (see ``LogFollower.catch_up``)."""
_UNAVAILABLE_HINT = (
    "Start a Docker Engine (scripts/ensure-docker does it on Debian) or point DOCKER_HOST at one; "
    "if the socket exists but access is denied, add yourself to the 'docker' group."
)


def _bad_address(url: str | None, exc: ValueError) -> RuntimeUnavailable:
    if url is None:
        return RuntimeUnavailable(
            "no Docker Engine socket was found and DOCKER_HOST is not set", hint=_UNAVAILABLE_HINT
        )
    error = RuntimeUnavailable(
        f"{shown(url)} is not a Docker Engine address ({str(exc).rstrip('.')})",
        where="DOCKER_HOST" if url == os.environ.get("DOCKER_HOST") else "engine URL",
        hint="Give unix:///path/to/docker.sock, tcp://HOST:PORT or ssh://USER@HOST, or unset "
        "DOCKER_HOST to use the local socket.",
    )
    error.exit_status = 2  # a setting to correct, as a bad command-line option
    return error


class DockerRuntime:
    """Runs Kliko containers on a Docker Engine through its HTTP API (see ``Runtime``)."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        self._client: aiodocker.Docker | None = None
        self._version: str | None = None

    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            # An empty DOCKER_HOST means unset, as for the docker command.
            url = self._url or os.environ.get("DOCKER_HOST") or None
            try:
                self._client = aiodocker.Docker(url=url)
            except ValueError as exc:  # no scheme aiodocker knows, or no socket found
                raise _bad_address(url, exc) from None
        return self._client

    @property
    def connections_in_use(self) -> int:
        """How many of the client's pooled connections to the engine are taken right now.

        aiohttp's pool holds 100; one never given back is gone for good, and once all are,
        every request waits for one. Tests watch this stay small over hundreds of containers.
        """
        if self._client is None:
            return 0
        connector = self._client.session.connector
        return len(getattr(connector, "_acquired", ()))

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
            raise MissingImage("no such image ID on this engine", where=f"image '{ref}'")
        try:
            await self.client.images.pull(ref)
        except aiodocker.DockerError as exc:
            raise MissingImage(
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
        container = await self._create(probe_config(image_id))
        tracked = track(InFlight("reading an image's kliko.yml", container_id=container.id))
        try:
            found = {
                path: await find_file(self.client, container.id, path, limit=MAX_KLIKO_YML_BYTES)
                for path in read
            }
            stated = {
                path: await find_file(self.client, container.id, path, limit=0, program=True)
                for path in stat
            }
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_DEADLINE_SECONDS):
                await self._delete(container)
                untrack(tracked)
        return ImageFiles(
            contents={path: file.content for path, file in found.items()},
            exists={path: file.content is not None for path, file in stated.items()},
            problems={path: f.problem for path, f in (found | stated).items() if f.problem},
        )

    async def build_image(
        self,
        context: Path,
        *,
        tag: str | None = None,
        on_log: Callable[[str], None] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        await self._ready()
        archive = await anyio.to_thread.run_sync(open_context_archive, context)
        try:
            image_id = await stream_build(
                self.client, context, archive, tag=tag, on_log=on_log, labels=labels
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(exc) from None
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
        container = await self._create(container_config(job))
        step = job.labels.get(f"{LABEL_PREFIX}.step")
        # Until it is removed it may write into its writable mounts: a step's staging folder
        # is kept, and named, if it cannot be removed (it was deleted under it, unsaid).
        writes = tuple(m.source for m in job.mounts if not m.read_only)
        what = f"step {step}" if step else "a container"
        tracked = track(InFlight(what, container.id, writes_into=writes))
        lent: list[dict[str, Owners]] = []  # the mounts' former owners while they are lent
        try:
            ended = await self._run_created(container, job, on_log, on_start, lent)
        except BaseException:
            # Cancelled or failed while running: stop it gracefully first (and give the mounts
            # back). The error under way says what happened; one from the cleanup would hide it.
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_DEADLINE_SECONDS):
                if lent:
                    await self._stop_and_return(container, job, lent[0])
                try:
                    await self._stop_and_delete(container)
                except (ContainerError, aiohttp.ClientError, OSError) as exc:
                    untrack(tracked)  # still tracked, now with why: said at the run's end
                    why = f"{what}, not removed: {_short(exc)}"
                    tracked = track(InFlight(why, container.id, writes_into=writes))
                else:
                    untrack(tracked)
            raise
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_DEADLINE_SECONDS):
            try:
                await self._delete(container)
            except (aiohttp.ClientError, OSError) as exc:
                raise self._gone(container.id, exc) from None
            except aiodocker.DockerError as exc:
                if exc.status == 900:
                    raise self._gone(container.id, exc) from None
                raise ContainerError(f"could not remove container {container.id[:12]}") from None
            finally:
                untrack(tracked)
        return ended

    async def _run_created(
        self,
        container: Any,
        job: ContainerJob,
        on_log: LogSink,
        on_start: Callable[[str], None] | None,
        lent: list[dict[str, Owners]],
    ) -> ContainerExit:
        """Start a created container, follow its log, wait for it and say how it ended.

        With ``job.lend_mounts``, ``lent`` holds the mounts' former owners from lending them
        until giving them back. Every error of the engine comes out as a ``ContainerError``
        (never wrapped in a task group's exception group).
        """
        try:
            if job.lend_mounts:
                lent.append({})
                lent[0].update(await lend_mounts(self.client, container.id, job))
            try:
                await container.start()
            except aiodocker.DockerError as exc:
                if exc.status == 900:
                    raise
                raise ContainerError(
                    f"the engine could not start the container: {exc.message}"
                ) from None
            if on_start:
                on_start(container.id)
            logs = LogReader(on_log)
            follower = LogFollower(self.client, container.id, logs)
            sampler = UsageSampler()
            status, reconnected = await self._wait_following(container, follower, sampler)
            code = int(status.get("StatusCode", -1))
            try:
                await follower.catch_up()
            except (aiodocker.DockerError, aiohttp.ClientError, OSError):
                if code == 0:
                    raise  # the log may be incomplete: no success without all of it
                # A failure is explained below (a container being removed has no log left).
            logs.flush()
            if lent:
                await return_mounts(self.client, container.id, job, lent[0])
                lent.clear()
            error = (status.get("Error") or {}).get("Message") or None
            if code == 0:  # only a failure needs the full state: killed? out of memory?
                return ContainerExit(
                    container_id=container.id, exit_code=0, error=error, usage=sampler.usage()
                )
            ended = await self._failed_exit(container, code, error, job.memory)
            ended = ended.model_copy(update={"usage": sampler.usage()})
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ContainerError("the container was removed while it ran") from None
            if exc.status == 900:
                raise self._gone(container.id, exc) from None
            raise ContainerError(f"the engine lost the container: {exc.message}") from None
        except aiohttp.ClientError as exc:
            raise self._gone(container.id, exc) from None
        except OSError as exc:  # the temporary copies of lent mounts, on this host's disk
            raise ContainerError(f"could not hand over the step's folders: {exc}") from None
        if reconnected and ended.killed_by is None and not ended.oom_killed and code in (137, 143):
            raise ContainerError(
                f"the Docker Engine stopped answering while the step ran and, once it answered "
                f"again, the container had been killed (exit code {code}): the engine was "
                "restarted, and stopped its containers"
            )
        return ended

    async def _wait_following(
        self, container: Any, follower: LogFollower, sampler: UsageSampler
    ) -> tuple[dict[str, Any], bool]:
        """The container's exit status (and whether the wait had to reach the engine again),
        its log followed and what it uses sampled meanwhile. An error is raised as it is, not
        in an exception group."""
        failure: Exception | None = None
        status: dict[str, Any] = {}
        reconnected = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(follower.follow)
            tg.start_soon(sampler.follow, self.client, container.id)
            try:
                status, reconnected = await self._wait(container)
            except Exception as exc:
                failure = exc
            sampler.stop()
            follower.stop()
            tg.cancel_scope.deadline = anyio.current_time() + (
                0 if failure is not None else LOG_DRAIN_SECONDS
            )
        if failure is not None:
            raise failure
        return status, reconnected

    async def _wait(self, container: Any) -> tuple[dict[str, Any], bool]:
        """Wait for the container to end, through lost connections to the engine: the container
        runs on meanwhile, and a wait asked again answers for it. Raises the last connection
        error once the engine has not answered for ``ENGINE_GONE_SECONDS``."""
        pauses = iter(WAIT_RETRY_SECONDS)
        pause = WAIT_RETRY_SECONDS[0]
        lost_at: float | None = None
        reconnected = False
        while True:
            asked = anyio.current_time()
            try:
                return dict(await container.wait()), reconnected
            except aiodocker.DockerError as exc:
                if exc.status != 900:
                    raise
                error: Exception = exc
            except (aiohttp.ClientError, OSError) as exc:
                error = exc
            now = anyio.current_time()
            if lost_at is None or now - asked > 1:  # connected, then lost again: a new loss
                lost_at, pauses = asked, iter(WAIT_RETRY_SECONDS)
            if now - lost_at >= ENGINE_GONE_SECONDS:
                raise error
            reconnected = True
            pause = next(pauses, pause)
            await anyio.sleep(pause)

    def _gone(self, container_id: str, exc: BaseException) -> ContainerError:
        """The engine went away while ``container_id`` ran: say so, and what is left."""
        where = self._url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return ContainerError(
            f"the Docker Engine at {where} went away while the step ran ({_short(exc)}); its "
            f"container {container_id[:12]} is left on that engine, and the next run on this "
            "host removes it once the engine is back",
            hint=_UNAVAILABLE_HINT,
        )

    async def _failed_exit(
        self, container: Any, code: int, error: str | None, memory: int | None
    ) -> ContainerExit:
        """How a container that exited non-zero ended: removed, killed from outside, or OOM."""
        state = (await container.show()).get("State", {})
        if state.get("Status") == "removing":
            raise ContainerError("the container was removed while it ran (docker rm from outside)")
        oom_killed = bool(state.get("OOMKilled", False))
        events = await ending_events(self.client, container.id, str(state.get("StartedAt", "")))
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


def _short(exc: BaseException) -> str:
    """An engine error in a few words: aiodocker's message, else the exception's own text."""
    text = exc.message if isinstance(exc, aiodocker.DockerError) else str(exc)
    return text.strip() or type(exc).__name__
