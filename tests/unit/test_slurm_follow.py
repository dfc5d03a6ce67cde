"""Following one Slurm job from the submitting process: its folder's files and the shared
queue poll together. A change the poll sees is acted on at once, not after the follower's
pause (a second while the job was pending: the source of a fan-out was seen to end up to a
second after it had). The follow on a real cluster is in tests/integration/test_slurm.py."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from test_slurm_parts import FakeSlurm

from kliko_async.runtime.base import Stream
from kliko_async.runtime.slurm import runtime as slurm_runtime
from kliko_async.runtime.slurm.queue import JobQueue
from kliko_async.runtime.slurm.runtime import SlurmRuntime


def follow_of_a_pending_job(tmp_path: Path) -> tuple[SlurmRuntime, FakeSlurm, Path]:
    slurm = FakeSlurm({"7": "PENDING"})
    runtime = SlurmRuntime(tmp_path / "cache", docker=object())  # type: ignore[arg-type]
    runtime.queue = JobQueue(fastest=0.01, slowest=0.02, command=slurm)
    runtime.queue.watch("7")
    folder = tmp_path / "job"
    folder.mkdir()
    return runtime, slurm, folder


class Lines:
    """The lines a follow delivers, and an event for the first one that holds a text."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.waiting: dict[str, anyio.Event] = {}

    def __call__(self, stream: Stream, text: str, at: str | None = None, /) -> None:
        self.lines.append(text)
        for part, event in self.waiting.items():
            if part in text:
                event.set()

    async def seen(self, part: str) -> None:
        if not any(part in line for line in self.lines):
            await self.waiting.setdefault(part, anyio.Event()).wait()


def test_a_pending_job_that_ran_and_ended_between_looks_is_seen_at_the_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The follower's pause while pending made an hour here: only the poll can end the wait.
    monkeypatch.setattr(slurm_runtime, "_FOLLOW_PENDING", 3600.0)
    started: list[str] = []
    lines = Lines()

    async def main() -> None:
        runtime, slurm, folder = follow_of_a_pending_job(tmp_path)

        async def job_runs_and_ends() -> None:
            await lines.seen("is pending")  # the follower saw it pending, and paused
            (folder / "started").write_text("node1 0\n")
            (folder / "stdout").write_text("slept 0\n")
            (folder / "status").write_text("0 false docker\n")
            slurm.states["7"] = "COMPLETED"

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(job_runs_and_ends)
                exited = await runtime._follow("7", folder, lines, started.append)
        assert exited.exit_code == 0
        assert started == ["7@node1"]
        assert "slept 0" in lines.lines

    anyio.run(main)


def test_a_pending_reason_that_changes_is_told_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slurm_runtime, "_FOLLOW_PENDING", 3600.0)
    lines = Lines()

    async def main() -> None:
        runtime, slurm, folder = follow_of_a_pending_job(tmp_path)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(runtime._follow, "7", folder, lines, None)
                await lines.seen("is pending: no reason given yet")
                slurm.reasons["7"] = "Priority"
                await lines.seen("is pending: Priority")
                tg.cancel_scope.cancel()

    anyio.run(main)
