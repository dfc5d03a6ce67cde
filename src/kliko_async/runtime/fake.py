"""An in-memory runtime for unit tests of the scheduler and for the scheduler benchmark.

Images are registered with a kliko.yml and a Python ``program`` that plays the container: it
gets the job's mounts as host paths and writes outputs there. It never replaces the Docker
integration tests; it exists so that ordering, concurrency and failure logic can be tested fast.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from kliko_async.errors import ContainerError, MissingImage
from kliko_async.runtime.base import ContainerExit, ContainerJob, ImageFiles, LogSink


@dataclass
class FakeContainer:
    """What a fake image's program sees: its job, its mounts as host paths, a log function."""

    id: str
    job: ContainerJob
    on_log: LogSink

    def path(self, target: str) -> Path:
        """The host path bound at ``target`` inside the container."""
        for mount in self.job.mounts:
            if mount.target == target:
                return mount.source
        raise KeyError(f"nothing is mounted at {target}")

    def log(self, text: str, stream: str = "stdout") -> None:
        self.on_log("stderr" if stream == "stderr" else "stdout", text)


Program = Callable[[FakeContainer], Awaitable[int]]


async def copy_inputs_program(container: FakeContainer) -> int:
    """The default program: split IO copies /input into /output; join IO leaves /work as is."""
    targets = {m.target for m in container.job.mounts}
    if "/output" in targets:
        out = container.path("/output")
        (out / "params.json").write_bytes(container.path("/parameters.json").read_bytes())
        for mount in container.job.mounts:
            if mount.target.startswith("/input") and mount.source.is_dir():
                for src in mount.source.rglob("*"):
                    if src.is_file():
                        rel = Path(mount.target).relative_to("/input") / src.relative_to(
                            mount.source
                        )
                        (out / rel).parent.mkdir(parents=True, exist_ok=True)
                        (out / rel).write_bytes(src.read_bytes())
    container.log("done")
    return 0


@dataclass
class FakeImage:
    ref: str
    kliko_yml: str
    program: Program = copy_inputs_program
    has_kliko: bool = True
    id: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            digest = hashlib.sha256(f"{self.ref}\0{self.kliko_yml}".encode()).hexdigest()
            self.id = f"sha256:{digest}"


@dataclass
class FakeRuntime:
    """A Runtime whose containers are coroutines; it records what it was asked to do.

    ``keep_jobs`` False: ``jobs`` stays empty and only ``started`` counts them, as a real
    engine keeps nothing of a job in this process (the scheduler benchmark's 10,000 jobs
    were 25 MB of its peak)."""

    images: dict[str, FakeImage] = field(default_factory=dict)
    jobs: list[ContainerJob] = field(default_factory=list)
    keep_jobs: bool = True
    started: int = 0
    probes: int = 0
    builds: int = 0
    running: int = 0
    max_running: int = 0
    removed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    leftovers: dict[str, dict[str, str]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def add_image(
        self,
        ref: str,
        kliko_yml: str,
        program: Program = copy_inputs_program,
        *,
        has_kliko: bool = True,
    ) -> FakeImage:
        image = FakeImage(ref=ref, kliko_yml=kliko_yml, program=program, has_kliko=has_kliko)
        self.images[ref] = image
        self.images[image.id] = image
        return image

    async def resolve_image(self, ref: str) -> str:
        try:
            return self.images[ref].id
        except KeyError:
            raise MissingImage("not present on this engine", where=f"image '{ref}'") from None

    async def probe_image(
        self, image_id: str, *, read: Sequence[str] = (), stat: Sequence[str] = ()
    ) -> ImageFiles:
        self.probes += 1
        image = self.images[image_id]
        files = {"/kliko.yml": image.kliko_yml.encode()}
        if image.has_kliko:
            files["/kliko"] = b"#!/bin/sh\n"
        return ImageFiles(
            contents={p: files.get(p) for p in read}, exists={p: p in files for p in stat}
        )

    async def build_image(
        self,
        context: Path,
        *,
        tag: str | None = None,
        on_log: Callable[[str], None] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        kliko_yml = (context / "kliko.yml").read_text()
        if on_log:
            on_log(f"fake build of {context}")
        self.builds += 1
        image = self.add_image(tag or str(context), kliko_yml)
        image.labels = dict(labels or {})
        return image.id

    async def find_images(self, labels: Mapping[str, str]) -> list[str]:
        found = {
            image.id: None
            for image in self.images.values()
            if all(image.labels.get(k) == v for k, v in labels.items())
        }
        return list(found)

    async def run(
        self,
        job: ContainerJob,
        *,
        on_log: LogSink,
        on_start: Callable[[str], None] | None = None,
    ) -> ContainerExit:
        image = self.images.get(job.image)
        if image is None:
            raise ContainerError(f"no such image {job.image}")
        container = FakeContainer(id=f"fake{next(self._ids):08d}", job=job, on_log=on_log)
        self.started += 1
        if self.keep_jobs:
            self.jobs.append(job)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if on_start:
                on_start(container.id)
            code = await image.program(container)
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(container.id)
            raise
        finally:
            self.running -= 1
            self.removed.append(container.id)
        return ContainerExit(container_id=container.id, exit_code=code)

    async def find_containers(self, labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
        return {
            cid: found
            for cid, found in self.leftovers.items()
            if all(found.get(k) == v for k, v in labels.items())
        }

    async def remove_container(self, container_id: str) -> None:
        self.leftovers.pop(container_id, None)

    async def aclose(self) -> None:
        return None
