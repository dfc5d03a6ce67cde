"""The Slurm backend's commands and submissions under faults, without a cluster: Slurm's
commands are scripts on PATH (or stand-ins) that hang, fail or answer oddly. The same faults
on the real cluster are in tests/integration/test_slurm_submission.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from kliko_async.errors import RuntimeUnavailable
from kliko_async.runtime.slurm import commands


def on_path(monkeypatch: pytest.MonkeyPatch, folder: Path, name: str, text: str) -> None:
    """Command ``name`` is the shell script ``text``, in front of any other on PATH."""
    script = folder / name
    script.write_text("#!/bin/sh\n" + text)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")


@pytest.mark.parametrize("command", ["sinfo", "squeue"])
def test_a_slurm_command_that_does_not_answer_at_start_refuses_the_run_in_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str
) -> None:
    """A hung sinfo or squeue (the leftovers check) once hung the run for ever, silently."""
    from kliko_async.runtime.slurm.runtime import SlurmRuntime

    on_path(monkeypatch, tmp_path, command, "exec sleep 60\n")
    monkeypatch.setattr(commands, "CALL_DEADLINE_SECONDS", 0.5)
    runtime = SlurmRuntime(tmp_path / "cache")

    async def start_of_a_run() -> None:
        await commands.sinfo(None, "%N %t", per_node=True)
        await runtime.find_containers({"io.kliko-async.managed": "1"})

    if command == "squeue":
        on_path(monkeypatch, tmp_path, "sinfo", "echo 'kliko* node1 idle'\n")
    start = time.monotonic()
    with pytest.raises(RuntimeUnavailable, match=rf"Slurm does not answer: {command} gave no "):
        anyio.run(start_of_a_run)
    assert time.monotonic() - start < 5
