"""Submitting to the real test cluster (scripts/slurm-cluster) while Slurm's commands misbehave:
a squeue that hangs at start, Ctrl-C while sbatch runs, an sbatch that submits but answers late
or with more than the job ID, an sbatch that keeps failing. Faults are shims on PATH in front
of Slurm's real commands, as in test_slurm_faults.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_slurm import (
    active,
    jobs_after,
    last_job_id,
    slurm_cluster,  # noqa: F401  (the fixture)
    wait_until,
    write_chain,
)
from test_slurm_faults import real, shim

from conftest import KLIKO_ASYNC, KlikoCli

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slurm,
    pytest.mark.usefixtures("example_images", "slurm_cluster"),
]

ONE_STEP = "steps:\n  a: {image: example/sleep, params: {seconds: 1, tag: sub}}\n"


def test_a_squeue_that_hangs_at_start_refuses_the_run_in_one_paragraph(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """The leftovers check's squeue hangs (the run's own polls, by job ID, answer)."""
    shim(
        tmp_path, kliko, "squeue",
        f'#!/bin/sh\ncase "$*" in *--jobs=*) exec {real("squeue")} "$@";; esac\nexec sleep 300\n',
    )  # fmt: skip
    start = time.monotonic()
    done = kliko("run", write_chain(tmp_path, ONE_STEP), "--backend", "slurm", "--plain",
                 "--cache-dir", "c", timeout=90)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Slurm does not answer: squeue gave no answer within 30 s" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 60


SWEEP = """\
steps:
  sweep:
    image: example/sleep
    params: {seconds: 60}
    matrix: {tag: [i0, i1, i2]}
"""


def sbatch_calls(calls: Path) -> list[str]:
    """The step jobs' sbatch calls the shim saw (not the check of the cache folder)."""
    text = calls.read_text() if calls.exists() else ""
    return [line for line in text.splitlines() if "check-shared" not in line]


def test_ctrl_c_while_sbatch_runs_submits_nothing_more_and_cancels_what_went_in(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """Ctrl-C reaches a terminal's whole process group: sbatch was killed with kliko-async,
    its failure was taken for a site refusing arrays, and each task went in again alone."""
    calls = tmp_path / "sbatch-calls"
    shim(tmp_path, kliko, "sbatch",
         f'#!/bin/sh\necho "$*" >> {calls}\nsleep 2\nexec {real("sbatch")} "$@"\n')  # fmt: skip
    first = last_job_id()
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [KLIKO_ASYNC, "run", write_chain(tmp_path, SWEEP), "--backend", "slurm", "--plain",
             "--cache-dir", "c"],
            cwd=tmp_path, env=kliko.env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, as a terminal's foreground job
        )  # fmt: skip
    try:
        wait_until(lambda: bool(sbatch_calls(calls)), "the array's sbatch")
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole group
        start = time.monotonic()
        assert process.wait(timeout=60) == 130, log.read_text()
        assert time.monotonic() - start < 15, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert len(sbatch_calls(calls)) == 1 and "--array=0-2" in sbatch_calls(calls)[0]
    assert active(jobs_after(first)) == [], log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and "refused" not in text, text


def test_a_job_that_sbatch_submitted_but_answered_too_late_for_is_adopted_and_runs(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """sbatch submits, then hangs: the job is found by its name and followed to its end (it
    once ran on after the run had failed its step and deleted its folder)."""
    calls = tmp_path / "sbatch-calls"
    shim(tmp_path, kliko, "sbatch",
         f'#!/bin/sh\necho "$*" >> {calls}\n{real("sbatch")} "$@"\n'
         'case "$*" in *check-shared*) exit;; esac\nexec sleep 300\n')  # fmt: skip
    first = last_job_id()
    done = kliko("run", write_chain(tmp_path, ONE_STEP), "--backend", "slurm", "--plain",
                 "--cache-dir", "c", timeout=90)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(sbatch_calls(calls)) == 1
    jobs = jobs_after(first)
    assert len(jobs) == 1 and active(jobs) == [] and jobs[0]["job_state"] == "COMPLETED"


def test_an_sbatch_error_that_persists_is_said_within_the_deadline(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    shim(tmp_path, kliko, "sbatch",
         f'#!/bin/sh\ncase "$*" in *check-shared*) exec {real("sbatch")} "$@";; esac\n'
         'echo "sbatch: error: Socket timed out on send/recv operation" >&2\nexit 1\n')  # fmt: skip
    done = kliko("run", write_chain(tmp_path, ONE_STEP), "--backend", "slurm", "--plain",
                 "--cache-dir", "c", timeout=90)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Slurm refused the job (after 7 tries): sbatch: error: Socket timed out" in (
        done.stdout + done.stderr
    )
