"""Driving runs on the test cluster (scripts/slurm-cluster) from the Slurm tests: the jobs Slurm
shows, faults injected in front of Slurm's commands (shims on kliko-async's PATH), and a chain
started on Slurm in the background (:func:`background_run`; :func:`sleep_chain` writes the
one-step chain most fault tests start).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import KLIKO_ASYNC, KlikoCli


def slurm_jobs() -> list[dict[str, Any]]:
    out = subprocess.run(
        ["squeue", "--json", "--states=all"], capture_output=True, text=True, check=True
    )
    return list(json.loads(out.stdout)["jobs"])


def last_job_id() -> int:
    return max((int(j["job_id"]) for j in slurm_jobs()), default=0)


def jobs_after(first: int) -> list[dict[str, Any]]:
    """The kliko-async step jobs submitted after job ``first`` (not the cache checks)."""
    return [
        j
        for j in slurm_jobs()
        if int(j["job_id"]) > first
        and j["name"].startswith("kliko-")
        and j["name"] != "kliko-check-shared"
    ]


def active(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    states = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"}
    return [j for j in jobs if j["job_state"] in states]


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def write_chain(tmp_path: Path, text: str) -> Path:
    chain = tmp_path / "chain.yaml"
    chain.write_text(text)
    return chain


def sleep_chain(seconds: int, tag: str, *, step: str = "s", extra: str = "") -> str:
    """A chain of one step, ``step``, that sleeps ``seconds`` (its first line: ``sleep: N.0s``)
    and writes ``tag`` in its output; ``extra``: more of the step's fields (``timeout: 3``)."""
    params = f"{{seconds: {seconds}, tag: {tag}}}"
    more = f", {extra}" if extra else ""
    return f"steps:\n  {step}: {{image: example/sleep, params: {params}{more}}}\n"


def shim(tmp_path: Path, kliko: KlikoCli, name: str, text: str) -> None:
    """Put ``text`` as command ``name`` in front of the real one on kliko's PATH."""
    folder = tmp_path / "shims"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)
    kliko.env["PATH"] = f"{folder}{os.pathsep}{kliko.env['PATH']}"


def real(command: str) -> str:
    """Slurm's own ``command`` (the tests' PATH has no shims)."""
    found = shutil.which(command)
    assert found is not None
    return found


@dataclass
class BackgroundRun:
    """A ``kliko-async run`` on Slurm going on in the background (:func:`background_run`)."""

    process: subprocess.Popen[bytes]
    log: Path
    """Its output, stdout and stderr together."""
    first: int
    """The last job ID before it: its jobs are among :func:`jobs_after` it."""
    in_terminal: bool

    def text(self) -> str:
        return self.log.read_text()

    def run_id(self) -> str:
        """The run's ID, from its first line (``run <id>: ...``)."""
        return self.text().split("run ", 1)[1].split(":", 1)[0]

    def jobs(self) -> list[dict[str, Any]]:
        """The run's jobs, as Slurm shows them (not other runs' on the cluster)."""
        try:
            name = f"kliko-{self.run_id()}-"
        except IndexError:  # it said nothing yet
            return []
        return [j for j in jobs_after(self.first) if j["name"].startswith(name)]

    def job(self) -> dict[str, Any]:
        """The run's one job."""
        (job,) = self.jobs()
        return job

    def signal(self, number: signal.Signals = signal.SIGINT) -> None:
        """Send ``number`` as a terminal would (Ctrl-C: to the whole process group, when the
        run is its terminal's foreground job), else to the process."""
        if self.in_terminal:
            os.killpg(self.process.pid, number)
        else:
            self.process.send_signal(number)

    def ctrl_c(self, within: float = 60) -> None:
        """Ctrl-C; the run must end with 130 within ``within`` seconds."""
        self.signal(signal.SIGINT)
        self.exits_with(130, within)

    def exits_with(self, status: int, within: float) -> None:
        try:
            assert self.process.wait(timeout=within) == status, self.text()
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not end within {within:g} s:\n{self.text()}")


@contextmanager
def background_run(
    kliko: KlikoCli,
    tmp_path: Path,
    chain: str,
    *options: str,
    ready: Callable[[BackgroundRun], bool] | None = None,
    what: str = "the step's first line",
    in_terminal: bool = False,
) -> Iterator[BackgroundRun]:
    """``kliko-async run --plain --cache-dir c OPTIONS`` of the chain ``chain`` (text) on Slurm,
    in the background, once ``ready`` (by default: once a step's first line is out, 'sleep:'
    from a :func:`sleep_chain`). ``in_terminal``: in a process group of its own, as a
    terminal's foreground job. On the way out it is killed if it still runs, and its jobs
    still pending or running are cancelled with Slurm's own scancel."""
    first = last_job_id()
    log = tmp_path / "run.log"
    args: Sequence[str] = [
        KLIKO_ASYNC, "run", str(write_chain(tmp_path, chain)), "--backend", "slurm", "--plain",
        "--cache-dir", "c", *options,
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(
            args, cwd=tmp_path, env=kliko.env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=in_terminal,
        )  # fmt: skip
    run = BackgroundRun(process, log, first, in_terminal)
    try:
        wait_until(lambda: ready(run) if ready else "| sleep: " in run.text(), what)
        yield run
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for job in active(run.jobs()):
            subprocess.run([real("scancel"), str(job["job_id"])], check=False)
