"""The floors: the same containers kliko-async runs, run with bare aiodocker and nothing else.

A floor container gets what a kliko-async step gets (``/parameters.json`` read-only, an empty
``/input`` read-only, a writable ``/output``, the invoking uid:gid, bridge networking), so the
difference to kliko-async is kliko-async's own work: planning, the cache, log handling, events.
It runs ``/kliko`` as kliko-async does (upstream-style images have no CMD; the image's own
default command would be busybox's ``/bin/sh``, which exits at once and does nothing), with the
same log driver. A floor that wrote nothing to ``/output`` did not do the work: it raises
:class:`FloorBroken` rather than time an empty container.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import anyio

from benchmarks.harness import BENCH_LABEL, invoking_user, parameters_json, remove_tree
from kliko_async.runtime.base import KLIKO_EXECUTABLE


class FloorBroken(AssertionError):
    """A floor container did not do the work it stands for (it wrote nothing to /output)."""


@dataclass
class FloorRun:
    container_id: str
    exit_code: int
    lines: int
    """Log lines read (only when logs were consumed)."""
    wall_s: float
    outputs: list[str]
    """Names the container wrote to its /output folder (emptied before the run)."""


class Engine:
    """A bare aiodocker client for floors; ``async with Engine() as engine``."""

    def __init__(self) -> None:
        self.client = aiodocker.Docker()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def image_id(self, ref: str) -> str:
        info: dict[str, Any] = await self.client.images.inspect(ref)
        return str(info["Id"])

    def kliko_config(self, image_id: str, params: dict[str, Any], folder: Path) -> dict[str, Any]:
        """A container config like kliko-async's for a split-IO Kliko image, files in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        parameters = folder / "parameters.json"
        parameters.write_text(parameters_json(params))
        (folder / "input").mkdir(exist_ok=True)
        (folder / "output").mkdir(exist_ok=True)
        binds = [
            f"{parameters.resolve()}:/parameters.json:ro",
            f"{(folder / 'input').resolve()}:/input:ro",
            f"{(folder / 'output').resolve()}:/output:rw",
        ]
        return {
            "Image": image_id,
            "Cmd": [KLIKO_EXECUTABLE],
            "Labels": {BENCH_LABEL: "1"},
            "User": invoking_user(),
            "HostConfig": {
                "Binds": binds,
                "NetworkMode": "bridge",
                "Privileged": False,
                "LogConfig": {"Type": "local", "Config": {"max-size": "100m", "max-file": "5"}},
            },
            "AttachStdout": False,
            "AttachStderr": False,
            "Tty": False,
        }

    async def run(self, config: dict[str, Any], *, consume_logs: bool = False) -> FloorRun:
        """Create, start, wait for and remove one container; optionally read all its logs.

        Its output folder is emptied first (not timed); a container that exits 0 but writes
        nothing there raises :class:`FloorBroken`.
        """
        output = output_dir(config)
        if output is not None:
            remove_tree(output)
            output.mkdir(parents=True)
        started = time.perf_counter()
        container = await self.client.containers.create(config)
        lines = 0
        try:
            await container.start()
            if consume_logs:

                async def read_logs() -> None:
                    nonlocal lines
                    stream = container.log(stdout=True, stderr=True, follow=True)
                    async for chunk in stream:
                        lines += chunk.count("\n")

                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_logs)
                    status = await container.wait()
            else:
                status = await container.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await container.delete(force=True, v=True)
        wall_s = time.perf_counter() - started
        exit_code = int(status.get("StatusCode", -1))
        outputs = sorted(p.name for p in output.iterdir()) if output is not None else []
        if exit_code == 0 and output is not None and not outputs:
            command = config.get("Cmd") or "the image's default command"
            raise FloorBroken(
                f"the floor container ({config['Image'][:19]}, command {command}) exited 0 but "
                f"wrote nothing to /output ({output}): it did not run the step's /kliko"
            )
        return FloorRun(
            container_id=container.id,
            exit_code=exit_code,
            lines=lines,
            wall_s=wall_s,
            outputs=outputs,
        )


def output_dir(config: dict[str, Any]) -> Path | None:
    """The host folder mounted at /output in a container config, if any."""
    for bind in config.get("HostConfig", {}).get("Binds", []):
        source, target, *_ = bind.split(":")
        if target == "/output":
            return Path(source)
    return None
