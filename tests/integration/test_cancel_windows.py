"""A cancellation at any point of a container's life leaves no container behind.

The Docker runtime is cancelled right after each call it makes to the engine returns (the
engine has done it, the runtime has not yet seen the answer): after the create, the start, while
it runs, after the wait, while reading why it failed; for the kliko.yml probe after the create
and after the copy. Each time, the container is gone when the cancelled call has returned.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import aiodocker.containers
import anyio
import anyio.lowlevel
import pytest

from kliko_async.runtime import docker as docker_runtime
from kliko_async.runtime.base import LABEL_PREFIX, OWNER_LABEL, ContainerJob
from kliko_async.runtime.docker import DockerRuntime

pytestmark = [pytest.mark.docker, pytest.mark.anyio, pytest.mark.usefixtures("example_images")]

BUSYBOX = "kliko-async/busybox"


def containers_labelled(label: str) -> list[str]:
    done = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


class CancelAfter:
    """Patches one aiodocker method so that, once the engine has answered it, the test's cancel
    scope is cancelled and the cancellation is delivered inside that very call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: Any, name: str) -> None:
        self.scope = anyio.CancelScope()
        self.calls = 0
        original: Callable[..., Any] = getattr(cls, name)

        async def patched(this: Any, *args: Any, **kwargs: Any) -> Any:
            result = await original(this, *args, **kwargs)
            self.calls += 1
            if self.calls == 1:
                self.scope.cancel()
                await anyio.lowlevel.checkpoint()  # an unshielded call is cancelled here
            return result

        monkeypatch.setattr(cls, name, patched)


def job(command: tuple[str, ...], run: str) -> ContainerJob:
    return ContainerJob(
        image=BUSYBOX,
        command=command,
        labels={
            f"{LABEL_PREFIX}.test-run": run,
            OWNER_LABEL: f"{socket.gethostname()}:{os.getpid()}",
        },
    )


@pytest.mark.parametrize(
    ("where", "method", "command"),
    [
        ("created", "create", ("sleep", "30")),
        ("started", "start", ("sleep", "30")),
        ("ended", "wait", ("true",)),
        ("failed, being inspected", "show", ("sh", "-c", "exit 3")),
    ],
)
async def test_a_cancelled_run_removes_its_container(
    monkeypatch: pytest.MonkeyPatch, where: str, method: str, command: tuple[str, ...]
) -> None:
    cls = aiodocker.containers.DockerContainers if method == "create" else None
    patch = CancelAfter(monkeypatch, cls or aiodocker.containers.DockerContainer, method)
    run = uuid.uuid4().hex
    runtime = DockerRuntime()
    try:
        with patch.scope:
            await runtime.run(job(command, run), on_log=lambda stream, text: None)
    finally:
        await runtime.aclose()

    assert patch.calls >= 1, f"the container was never {where}"
    assert patch.scope.cancelled_caught, "the run was cancelled"
    assert containers_labelled(f"{LABEL_PREFIX}.test-run={run}") == [], where


async def test_a_run_cancelled_while_its_container_runs_removes_it() -> None:
    run = uuid.uuid4().hex
    runtime = DockerRuntime()
    started: list[str] = []
    scope = anyio.CancelScope()

    def on_start(container_id: str) -> None:
        started.append(container_id)
        scope.cancel()

    try:
        with scope:
            await runtime.run(
                job(("sleep", "30"), run), on_log=lambda stream, text: None, on_start=on_start
            )
    finally:
        await runtime.aclose()

    assert started and scope.cancelled_caught
    assert containers_labelled(f"{LABEL_PREFIX}.test-run={run}") == []


@pytest.mark.parametrize(
    ("where", "cls", "method"),
    [
        ("created", aiodocker.containers.DockerContainers, "create"),
        # the file is read through the engine's archive endpoint (a bounded read of its own)
        ("copied from", docker_runtime, "find_file"),
    ],
)
async def test_a_cancelled_kliko_yml_probe_removes_its_container(
    monkeypatch: pytest.MonkeyPatch, where: str, cls: Any, method: str
) -> None:
    runtime = DockerRuntime()
    image_id = await runtime.resolve_image("example/sleep")
    patch = CancelAfter(monkeypatch, cls, method)
    owner = f"{OWNER_LABEL}={socket.gethostname()}:{os.getpid()}"
    try:
        with patch.scope:
            await runtime.probe_image(image_id, read=["/kliko.yml"], stat=["/kliko"])
    finally:
        await runtime.aclose()

    assert patch.calls >= 1 and patch.scope.cancelled_caught, f"never {where}"
    probes = set(containers_labelled(f"{LABEL_PREFIX}.probe=1"))
    assert probes & set(containers_labelled(owner)) == set(), where
