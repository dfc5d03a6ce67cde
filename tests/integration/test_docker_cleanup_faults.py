"""A container the engine fails to remove when its run is cancelled may still run and write into
its step's staging folder: the folder is kept and both are named, as for a Slurm job that scancel
failed to cancel. Before, it was untracked at once and its staging folder deleted under it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from kliko_async import api
from kliko_async.errors import ContainerError
from kliko_async.events import Event
from kliko_async.model.chain import parse_chain
from kliko_async.runtime import inflight
from kliko_async.runtime.docker import DockerRuntime

pytestmark = [pytest.mark.docker, pytest.mark.anyio, pytest.mark.usefixtures("example_images")]


class UnremovableRuntime(DockerRuntime):
    """The real runtime, whose engine refuses to stop and remove a step's container."""

    async def _stop_and_delete(self, container: Any) -> None:
        raise ContainerError(f"could not remove container {container.id[:12]}")


async def test_a_container_not_removed_at_cancel_keeps_its_staging_folder_and_is_named(
    tmp_path: Path,
) -> None:
    steps = {"slow": {"image": "example/sleep", "params": {"seconds": 60}}}
    chain = parse_chain({"steps": steps}, source=str(tmp_path / "c.yml"), base_dir=tmp_path)
    runtime = UnremovableRuntime()
    started = anyio.Event()

    def on_event(event: Event) -> None:
        if event.kind == "step_started":
            started.set()

    async def run_then_cancel() -> None:
        async with anyio.create_task_group() as group:

            async def run() -> None:
                await api.run(chain, runtime=runtime, cache_dir=tmp_path / "c", on_event=on_event)

            group.start_soon(run)
            with anyio.fail_after(60):
                await started.wait()
            group.cancel_scope.cancel()  # as Ctrl-C, or an application cancelling the run

    left: list[inflight.InFlight] = []
    try:
        await run_then_cancel()
        left = [i for i in inflight.left_behind() if i.container_id is not None]

        (item,) = left
        assert "step slow, not removed: could not remove container" in item.what
        staging = [p for p in (tmp_path / "c" / "tmp").iterdir()]
        assert len(staging) == 1, "the staging folder it may write into is kept"
        assert any(staging[0] in (p, *p.parents) for p in item.writes_into)
        kept = [i for i in inflight.left_behind() if i.folder == staging[0]]
        assert kept and "may still write into it" in kept[0].what
        assert f"container {item.container_id[:12]}" in inflight.describe_left_behind(left)
    finally:
        for item in inflight.left_behind():
            if item.container_id is not None:
                await anyio.run_process(["docker", "rm", "-f", item.container_id], check=False)
        for number, item in list(inflight._under_way.items()):
            if item in left or (item.folder is not None and tmp_path in item.folder.parents):
                inflight.untrack(number)
        await runtime.aclose()
