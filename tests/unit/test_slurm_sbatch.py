"""The Slurm backend's commands and submissions under faults, without a cluster: Slurm's
commands are scripts on PATH (or stand-ins) that hang, fail or answer oddly. The same faults
on the real cluster are in tests/integration/test_slurm_submission.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from kliko_async.errors import ContainerError, RuntimeUnavailable
from kliko_async.runtime.base import ContainerJob
from kliko_async.runtime.slurm import commands, submit
from kliko_async.runtime.slurm.arrays import Submission
from kliko_async.runtime.slurm.options import SlurmOptions
from kliko_async.runtime.slurm.queue import JobQueue
from kliko_async.runtime.slurm.submit import Submitter


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


def test_slurm_commands_run_in_a_session_of_their_own() -> None:
    """Ctrl-C in a terminal signals its whole process group: an sbatch in it was killed
    half-way, and its failure was taken for Slurm's (new single jobs went in after Ctrl-C)."""
    script = "import os; print(os.getsid(0) == os.getpid(), os.getsid(0) != os.getsid(1))"
    answer = anyio.run(lambda: commands.slurm_command([sys.executable, "-c", script]))
    assert answer.stdout.split() == [b"True", b"True"]


def done(code: int, out: str = "", err: str = "") -> subprocess.CompletedProcess[bytes]:
    return subprocess.CompletedProcess([], code, out.encode(), err.encode())


class FakeSbatch:
    """sbatch and squeue for a Submitter: ``answers`` are sbatch's, in turn (the last one
    repeats); squeue shows the jobs named in ``queued``. With ``submits_then_hangs``, sbatch
    queues job 77 (as tasks 77_<i> of an array) and then gives no answer."""

    def __init__(
        self, *answers: subprocess.CompletedProcess[bytes], submits_then_hangs: bool = False
    ) -> None:
        self.answers = list(answers)
        self.sbatch: list[list[str]] = []
        self.queued: dict[str, str] = {}
        self.hangs = submits_then_hangs

    async def __call__(
        self, args: Sequence[str], *, deadline: float | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        if args[0] == "squeue":
            name = next(a.split("=", 1)[1] for a in args if a.startswith("--name="))
            rows = [f"{i}|{i}|PENDING|None|(null)|0|0|me|{name}|"
                    for i, n in self.queued.items() if n == name]  # fmt: skip
            return done(0, "\n".join(rows) + "\n")
        self.sbatch.append(list(args))
        if self.hangs:
            name = next(a.split("=", 1)[1] for a in args if a.startswith("--job-name="))
            tasks = next((a for a in args if a.startswith("--array=0-")), "--array=0-0")
            for task in range(int(tasks.rsplit("-", 1)[1]) + 1):
                self.queued[f"77_{task}" if "--array" in " ".join(args) else "77"] = name
            await anyio.sleep(deadline or 0)
            raise commands.SlurmNoAnswer("sbatch gave no answer")
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def submitted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeSbatch, expansions: int = 3
) -> list[str | ContainerError]:
    """What each of ``expansions`` of one matrix step, ready together, got from submitting:
    its job ID or its error."""
    monkeypatch.setattr(submit, "slurm_command", fake)
    monkeypatch.setattr(submit, "RETRY_DELAYS", (0.01, 0.01))
    submitter = Submitter(SlurmOptions(), JobQueue(0.01, 0.01), set(), tmp_path / "arrays")
    results: list[str | ContainerError] = [""] * expansions

    async def one(task: int) -> None:
        job = ContainerJob(image="sha256:" + "a" * 64, labels={"io.kliko-async.run": "r1"})
        folder = tmp_path / f"job{task}"
        folder.mkdir()
        got = Submission(job, folder, folder / "job.sh", ("--nodes=1",), f"m[{task}]", "m")
        try:
            results[task] = await submitter.submit(got)
        except ContainerError as error:
            results[task] = error

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for task in range(expansions):
                tg.start_soon(one, task)

    anyio.run(main)
    return results


def test_an_array_that_sbatch_refuses_for_being_an_array_goes_in_job_by_job(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeSbatch(
        done(1, err="sbatch: error: Batch job submission failed: Invalid job array specification"),
        done(0, "11\n"), done(0, "12\n"), done(0, "13\n"),
    )  # fmt: skip
    assert submitted(monkeypatch, tmp_path, fake) == ["11", "12", "13"]
    assert ["--array=0-2" in args for args in fake.sbatch] == [True, False, False, False]


@pytest.mark.parametrize(
    "answer",
    [
        done(-2),  # killed by a signal (Ctrl-C reached it)
        done(1, err="sbatch: error: Batch job submission failed: Invalid account or partition"),
        done(0, "%%garbage"),  # whether the array went in is unknown
    ],
)
def test_an_array_that_failed_otherwise_is_never_submitted_again_job_by_job(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, answer: subprocess.CompletedProcess[bytes]
) -> None:
    fake = FakeSbatch(answer)
    results = submitted(monkeypatch, tmp_path, fake)
    assert len(fake.sbatch) == 1
    assert all(isinstance(r, ContainerError) for r in results), results


@pytest.mark.parametrize(
    "out",
    [
        "4242\nNOTICE: site wrapper: remember to acknowledge your grant\n",
        "NOTICE: your account is nearly out of hours\n4242;kliko\n",
    ],
)
def test_a_job_id_among_a_sites_notices_is_the_jobs_and_it_goes_in_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, out: str
) -> None:
    fake = FakeSbatch(done(0, out))
    assert commands.parse_job_id(done(0, out)) == "4242"
    assert submitted(monkeypatch, tmp_path, fake) == ["4242_0", "4242_1", "4242_2"]
    assert len(fake.sbatch) == 1


def test_a_job_that_sbatch_submitted_but_did_not_answer_for_is_adopted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Such jobs once ran on, unwatched and unknown to the run, after their steps failed."""
    monkeypatch.setattr(submit, "CALL_DEADLINE_SECONDS", 0.2)
    fake = FakeSbatch(done(0), submits_then_hangs=True)
    assert submitted(monkeypatch, tmp_path, fake) == ["77_0", "77_1", "77_2"]
    assert len(fake.sbatch) == 1


def test_a_persistent_sbatch_error_is_said_when_its_tries_end_within_the_deadline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The tries (60.5 s of pauses) once outlasted the deadline (60 s): every step said 'sbatch
    did not answer within 60 s', never Slurm's error."""
    monkeypatch.setattr(submit, "SUBMIT_DEADLINE_SECONDS", 1.0)
    timeout = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
    fake = FakeSbatch(done(1, err=timeout))
    monkeypatch.setattr(submit, "slurm_command", fake)
    monkeypatch.setattr(submit, "RETRY_DELAYS", (0.3, 0.3, 0.3, 0.3, 0.3, 0.3))
    submitter = Submitter(SlurmOptions(), JobQueue(0.01, 0.01), set(), tmp_path / "arrays")
    start = time.monotonic()
    with pytest.raises(ContainerError, match=r"Slurm refused the job \(after 4 tries\): .*Socket"):
        anyio.run(
            submitter._sbatch, ["sbatch", "--job-name=kliko-r1-a", "job.sh"], "kliko-r1-a", "a"
        )
    assert time.monotonic() - start < 1.0
