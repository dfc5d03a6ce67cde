"""Submitting to the real test cluster (scripts/slurm-cluster) while Slurm's commands misbehave:
a squeue that hangs at start, Ctrl-C while sbatch runs, an sbatch that submits but answers late
or with more than the job ID, an sbatch that keeps failing. Faults are shims on PATH in front
of Slurm's real commands, as in test_slurm_faults.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from slurmrun import (
    BackgroundRun,
    active,
    background_run,
    jobs_after,
    last_job_id,
    real,
    shim,
    sleep_chain,
    write_chain,
)
from test_slurm import slurm_cluster  # noqa: F401  (the fixture)

from conftest import KlikoCli

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slurm,
    pytest.mark.usefixtures("example_images", "slurm_cluster"),
]

ONE_STEP = sleep_chain(1, "sub", step="a")


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
    with in_a_terminal(kliko, tmp_path, SWEEP, lambda: bool(sbatch_calls(calls))) as run:
        run.ctrl_c(within=15)
        assert active(run.jobs()) == [], run.text()
    assert len(sbatch_calls(calls)) == 1 and "--array=0-2" in sbatch_calls(calls)[0]
    text = run.text()
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


def in_a_terminal(
    kliko: KlikoCli, tmp_path: Path, chain: str, ready: Callable[[], bool]
) -> AbstractContextManager[BackgroundRun]:
    """``kliko-async run`` of ``chain`` on Slurm as a terminal's foreground job (Ctrl-C reaches
    its whole process group, Slurm's commands too unless they run apart), once ``ready``."""
    return background_run(
        kliko, tmp_path, chain, ready=lambda _: ready(), what="the fault", in_terminal=True
    )


SUBMITS_ON_THE_SECOND_TRY_THEN_HANGS = """\
#!/bin/sh
# sbatch: a passing error at the first try; the second submits the job and gives no answer.
case "$*" in *check-shared*) exec {real} "$@";; esac
echo "$*" >> {calls}
if [ "$(grep -c . {calls})" -eq 1 ]; then
    echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2
    exit 1
fi
{real} "$@" > {submitted}
exec sleep 300
"""


def test_ctrl_c_while_sbatch_is_tried_again_ends_the_run_and_cancels_what_went_in(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """The tries of sbatch ran in a shield: Ctrl-C waited for them, up to their deadline."""
    calls, submitted = tmp_path / "sbatch-calls", tmp_path / "submitted"
    shim(tmp_path, kliko, "sbatch", SUBMITS_ON_THE_SECOND_TRY_THEN_HANGS.format(
        real=real("sbatch"), calls=calls, submitted=submitted))  # fmt: skip
    with in_a_terminal(kliko, tmp_path, LONG_STEP, lambda: has_text(submitted)) as run:
        run.ctrl_c(within=15)  # the tries' deadline is 60 s
        job = run.job()
        assert str(job["job_id"]) == submitted.read_text().strip()
        assert job["job_state"] == "CANCELLED", job["job_state"]
    assert len(sbatch_calls(calls)) == 2
    text = run.text()
    assert "a | cancelled" in text and "Traceback" not in text, text


LONG_STEP = sleep_chain(120, "late", step="a")


def has_text(path: Path) -> bool:
    return path.exists() and bool(path.read_text())


NO_ARRAYS_AND_ONE_JOB = """\
#!/bin/sh
# sbatch: arrays refused; the first job goes in, every later one fails with a passing error.
case "$*" in *check-shared*) exec {real} "$@";; esac
echo "$*" >> {calls}
case "$*" in *--array=*)
    echo "sbatch: error: Batch job submission failed: Invalid job array specification" >&2
    exit 1;;
esac
if [ "$(grep -vc -- --array= {calls})" -gt 1 ]; then
    echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2
    exit 1
fi
exec {real} "$@"
"""


def test_ctrl_c_while_an_array_goes_in_job_by_job_stops_the_tries_and_cancels_the_jobs_in(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """The job-by-job submission of an array Slurm refused ran in a shield: after Ctrl-C it
    went on trying (and submitting) each job for up to a minute."""
    calls = tmp_path / "sbatch-calls"
    shim(tmp_path, kliko, "sbatch", NO_ARRAYS_AND_ONE_JOB.format(real=real("sbatch"), calls=calls))
    # The array, the first job, and two tries of the second.
    with in_a_terminal(kliko, tmp_path, SWEEP, lambda: len(sbatch_calls(calls)) >= 4) as run:
        tried = len(sbatch_calls(calls))
        run.ctrl_c(within=15)  # each job's tries: up to 60 s
        assert len(sbatch_calls(calls)) == tried, "sbatch was tried again after Ctrl-C"
        assert run.job()["job_state"] == "CANCELLED", run.job()
    text = run.text()
    assert "Traceback" not in text and "refused" not in text, text


SUBMITS_THEN_HANGS = """\
#!/bin/sh
# sbatch: submits the job and gives no answer.
case "$*" in *check-shared*) exec {real} "$@";; esac
echo "$*" >> {calls}
{real} "$@" > {submitted}
exec sleep 300
"""

LOOKUP_FAILS = """\
#!/bin/sh
# squeue: fails when asked for jobs by name.
case "$*" in *--name=*)
    echo "squeue: error: Unexpected internal failure (injected)" >&2; exit 1;;
esac
exec {real} "$@"
"""


def test_ctrl_c_names_a_job_an_interrupted_sbatch_may_have_submitted_when_squeue_cannot_say(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """sbatch is stopped at Ctrl-C before it answered, and squeue cannot say what it
    submitted: the job it may have left running is named, with the command that cancels it
    and its staging folder (kept, since the job writes there)."""
    calls, submitted = tmp_path / "sbatch-calls", tmp_path / "submitted"
    shim(
        tmp_path,
        kliko,
        "sbatch",
        SUBMITS_THEN_HANGS.format(real=real("sbatch"), calls=calls, submitted=submitted),
    )
    shim(tmp_path, kliko, "squeue", LOOKUP_FAILS.format(real=real("squeue")))  # fmt: skip
    with in_a_terminal(kliko, tmp_path, LONG_STEP, lambda: has_text(submitted)) as run:
        run.ctrl_c(within=15)
        assert active([run.job()]), run.job()  # left running, as said
    text, name = run.text(), f"kliko-{run.run_id()}-a"
    assert (
        f"any Slurm job named {name} (step a: its sbatch was stopped, and squeue could not say "
        "what it submitted)" in text
    ), text
    (staging,) = (tmp_path / "c" / "tmp").iterdir()
    assert (staging / "scratch" / "slurm" / "job.sh").is_file()
    assert (
        f"folder {staging} (staging folder of step a, kept: any Slurm job named {name} may "
        "still write into it)" in text
    ), text
    assert f"scancel --name={name}; rm -rf {staging}" in text, text
    assert "Traceback" not in text, text
