"""The seam between kliko-async and a container engine: plain values in, plain values out.

The scheduler hands a :class:`Runtime` a fully resolved :class:`ContainerJob` and gets back a
:class:`ContainerExit` plus log lines through a callback. ``docker.py`` (aiodocker) and ``fake.py``
(in memory, for tests and benchmarks) implement the same protocol; nothing above this seam knows
which engine runs the containers, and nothing below it knows what a chain or a cache is.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from kliko_async.results import ResourceUse

Stream = Literal["stdout", "stderr"]


class LogSink(Protocol):
    """Receives one log line (without its newline), the stream it came from and, where the
    engine gives one, its time stamp (RFC 3339 text, as Docker's ``timestamps=1`` log has it).
    Called from the runtime's task for every line, in the order the engine gives (across both
    streams); it must not block (buffer, don't await).

    Lines are decoded as UTF-8 with ``surrogateescape``: bytes that are not UTF-8 arrive as lone
    surrogates, so ``text.encode("utf-8", "surrogateescape")`` is exactly what the container
    wrote (a ``\\r`` before the newline included). Displays must make such text printable.
    """

    def __call__(self, stream: Stream, text: str, at: str | None = None, /) -> None: ...


KLIKO_EXECUTABLE = "/kliko"
"""What every Kliko container runs, whatever its image's CMD (as Kliko 0.8 does)."""

LABEL_PREFIX = "io.kliko-async"
"""Every container started here carries ``io.kliko-async.managed=1`` and run/step/key labels."""

OWNER_LABEL = f"{LABEL_PREFIX}.owner"

MATRIX_LABEL = f"{LABEL_PREFIX}.matrix"
"""On an expansion of a ``matrix:`` step: that step's name (its expansions ready together go
into Slurm as one job array)."""


def owner_label() -> str:
    """``host:pid`` of this process, on every container it starts, to find leftovers later."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Mount(BaseModel):
    """A host folder or file bound into the container."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Path = Field(description="Absolute host path.")
    target: str = Field(description="Absolute path inside the container.")
    read_only: bool = Field(
        False,
        description="The container can never change the source (a cache entry, say): Docker "
        "mounts it read-only; Charliecloud, which binds read-write only, binds a copy.",
    )


class ContainerJob(BaseModel):
    """Everything needed to run one container, already resolved: no tags, no relative paths."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(description="Immutable image ID (sha256:...).")
    command: tuple[str, ...] | None = Field(None, description="None runs the image's own CMD.")
    mounts: tuple[Mount, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    user: str | None = Field(None, description="'uid:gid' or a name; None keeps the image's user.")
    labels: dict[str, str] = Field(default_factory=dict)
    cpus: float | None = Field(None, description="CPU limit (NanoCpus), None for no limit.")
    memory: int | None = Field(None, description="Memory limit in bytes, None for no limit.")
    gpus: int | None = Field(None, description="GPUs to give the container, None for none.")
    workdir: str | None = None
    timeout: float | None = Field(
        None,
        description="The step's timeout in seconds. The scheduler enforces it; a runtime whose "
        "containers outlive this process (Slurm jobs) may enforce it too, as a safety net.",
    )
    owner: str | None = Field(
        None,
        description="'uid:gid' that what is new in the writable mounts is given to once the "
        "container has ended (a step's own user, run by someone who cannot chown); None keeps "
        "the owners the container made.",
    )
    lend_mounts: bool = Field(
        False,
        description="Give everything in the writable mounts to ``user`` (a numeric uid[:gid]) "
        "before the container starts, and back to its former owners once it has ended: a step "
        "with its own user writes its folders by ownership, never by opening them to everyone.",
    )


class ContainerExit(BaseModel):
    """How a container ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    container_id: str
    exit_code: int
    oom_killed: bool = False
    killed_by: str | None = Field(
        None, description="The signal sent from outside the run (docker kill/stop), if any."
    )
    error: str | None = Field(None, description="The engine's own error text, if any.")
    usage: ResourceUse | None = Field(None, description="What it used, where measured.")


class ImageFiles(BaseModel):
    """Files read out of an image without running it, their symbolic links followed in the
    image (as the container would open them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    contents: dict[str, bytes | None] = Field(description="Path -> bytes, None if no file.")
    exists: dict[str, bool] = Field(description="Path -> whether a file is there in the image.")
    problems: dict[str, str] = Field(
        default_factory=dict,
        description="Path -> why what is there is no file, to follow the path ('is a folder', "
        "'is a symbolic link to ..., which does not exist', '... goes round in a loop'), or, for "
        "a path of ``stat`` where a file is, why it cannot be run ('is not executable (mode "
        "0644)'); absent where a file is (that can be run), or nothing at all.",
    )


class Runtime(Protocol):
    """A container engine, as kliko-async uses it.

    ``resolve_image(ref)``: the immutable image ID of a tag or ID present locally (implementations
    may try to pull first). Raises :class:`~kliko_async.errors.ImageError` if there is none.

    ``probe_image(image_id, read=..., stat=...)``: the bytes of each path in ``read`` and whether
    each path in ``stat`` (a program) is a file, taken from the image without running it
    (create, copy, remove); symbolic links are followed within the image, and what stops a path
    from leading to a file (a folder, a link to nothing, a loop of links), or a program from
    being run (no execute bit), is said in ``problems``.

    ``build_image(context, tag=..., on_log=..., labels=...)``: build a folder with a Dockerfile
    and return the new image ID, labelled with ``labels``; build output lines go to ``on_log``.
    Raises ``ImageError`` with the build's error text on failure. ``find_images(labels)``: the
    IDs of local images carrying all of ``labels``, newest first (builds are found again
    without building, and pruned, by their labels).

    ``run(job, on_log=..., on_start=...)``: create and start a container for ``job``, call
    ``on_start(container_id)`` once it runs, stream every stdout/stderr line to ``on_log`` while it
    runs (a final line without newline is delivered too), wait for it to end and return its
    :class:`ContainerExit`. With ``job.lend_mounts``, the writable mounts belong to ``job.user``
    while the container runs and what was in them before has its former owners back before
    ``run`` returns or raises; with ``job.owner`` set too, what the container added belongs to
    that uid:gid (and is readable and writable by it). Links in the mounts are never followed.
    The container is always removed before ``run`` returns or raises,
    including on cancellation: then it is stopped (killed after a short grace period) and removed
    under a shielded cleanup with a deadline, and the cancellation propagates. Engine failures
    raise :class:`~kliko_async.errors.ContainerError`.

    ``find_containers(labels)``: every container (running or not) carrying all of ``labels``, as
    container ID -> all its labels. ``remove_container(id)``: stop and remove one; a container
    that is already gone is not an error. Together they clear the leftovers of a killed run.

    ``aclose()``: release connections; the runtime is unusable afterwards.
    """

    async def resolve_image(self, ref: str) -> str: ...

    async def probe_image(
        self, image_id: str, *, read: Sequence[str] = (), stat: Sequence[str] = ()
    ) -> ImageFiles: ...

    async def build_image(
        self,
        context: Path,
        *,
        tag: str | None = None,
        on_log: Callable[[str], None] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str: ...

    async def find_images(self, labels: Mapping[str, str]) -> list[str]: ...

    async def run(
        self,
        job: ContainerJob,
        *,
        on_log: LogSink,
        on_start: Callable[[str], None] | None = None,
    ) -> ContainerExit: ...

    async def find_containers(self, labels: Mapping[str, str]) -> dict[str, dict[str, str]]: ...

    async def remove_container(self, container_id: str) -> None: ...

    async def aclose(self) -> None: ...


class LineSplitter:
    """Turns arbitrary byte chunks of one stream into complete lines, decoded losslessly.

    Linear in what it is fed: the pieces of a line are joined once, when its newline comes, so
    a line of any length costs its size, not its size times its number of chunks.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[bytes] = []

    def feed(self, chunk: bytes) -> list[str]:
        if b"\n" not in chunk:
            if chunk:
                self._pending.append(chunk)
            return []
        first, *lines, rest = chunk.split(b"\n")
        self._pending.append(first)
        lines.insert(0, b"".join(self._pending))
        self._pending = [rest] if rest else []
        return [line.decode("utf-8", "surrogateescape") for line in lines]

    def flush(self) -> list[str]:
        rest, self._pending = b"".join(self._pending), []
        return [rest.decode("utf-8", "surrogateescape")] if rest else []
