"""The Slurm backend under faults and site rules, on the real test cluster (scripts/slurm-cluster):
a squeue that fails for a while, a job Slurm requeues, a job that leaves squeue, a queue limit.

Faults are injected with shims on PATH in front of Slurm's real commands; everything else is
the real cluster.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from slurmrun import (
    active,
    background_run,
    jobs_after,
    last_job_id,
    real,
    shim,
    sleep_chain,
    wait_until,
    write_chain,
)
from test_slurm import slurm_cluster  # noqa: F401  (the fixture)

from conftest import KlikoCli

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slurm,
    pytest.mark.usefixtures("example_images", "slurm_cluster"),
]

FAILING_SQUEUE = """\
#!/bin/sh
# squeue, failing {times} times once {trigger} exists (as a controller that is restarting does).
if [ -e {trigger} ] && [ "$(cat {count} 2>/dev/null || echo 0)" -lt {times} ]; then
    echo $(( $(cat {count} 2>/dev/null || echo 0) + 1 )) > {count}
    echo "slurm_load_jobs error: Socket timed out on send/recv operation" >&2
    exit 1
fi
exec {real} "$@"
"""


TWO_STEPS = """\
steps:
  first: {image: example/sleep, params: {seconds: 3, tag: one}}
  second: {image: example/upper, inputs: [first]}
"""


def test_a_squeue_failing_twice_in_the_middle_of_a_run_does_not_stop_it(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    trigger, count = tmp_path / "fail-now", tmp_path / "failures"
    shim(
        tmp_path, kliko, "squeue",
        FAILING_SQUEUE.format(times=2, trigger=trigger, count=count, real=real("squeue")),
    )  # fmt: skip
    started = background_run(
        kliko, tmp_path, TWO_STEPS, ready=lambda run: "first | started" in run.text(),
        what="a started step",
    )  # fmt: skip
    with started as run:
        trigger.touch()
        run.exits_with(0, within=180)
    assert count.read_text().strip() == "2"  # it did fail twice, while the run went on
    text = run.text()
    assert "second | done" in text and "Traceback" not in text
    assert (tmp_path / "kliko-out" / "second").is_dir()


def test_a_squeue_that_keeps_failing_fails_the_steps_not_the_run(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    trigger, count = tmp_path / "fail-now", tmp_path / "failures"
    shim(
        tmp_path, kliko, "squeue",
        FAILING_SQUEUE.format(times=10**6, trigger=trigger, count=count, real=real("squeue")),
    )  # fmt: skip
    chain = write_chain(tmp_path, sleep_chain(30, "pers", step="a"))
    script = (
        "import anyio, kliko_async\n"
        "from kliko_async import SlurmOptions\n"
        f"r = anyio.run(lambda: kliko_async.run({str(chain)!r}, backend='slurm', "
        f"cache_dir={str(tmp_path / 'c')!r}, slurm=SlurmOptions(patience=5)))\n"
        "print('OK' if r.ok else 'FAILED', [s.reason for s in r.steps.values()])\n"
    )
    log = tmp_path / "run.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", script], cwd=tmp_path, env=kliko.env, stdout=sink,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        wait_until(lambda: any((tmp_path / "c" / "tmp").glob("*/scratch/slurm/started")), "a start")
        trigger.touch()
        assert process.wait(timeout=180) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    assert "Traceback" not in output, output
    assert "FAILED" in output and "did not answer about its jobs" in output, output


def test_a_job_that_leaves_squeue_is_read_from_the_job_completion_log(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    # squeue that never shows an ended job, as after MinJobAge: how it ended comes from sacct.
    hiding = (
        "#!/bin/sh\n"
        f"{real('squeue')} \"$@\" | grep -v -E '\\|(COMPLETED|FAILED|CANCELLED)\\|'\n"
        "exit 0\n"
    )
    shim(tmp_path, kliko, "squeue", hiding)
    with background_run(kliko, tmp_path, sleep_chain(60, "gone")) as run:
        job = run.job()
        subprocess.run(["scancel", str(job["job_id"])], check=True)  # no status file: sacct's
        run.exits_with(1, within=120)
    assert f"Slurm job {job['job_id']} was cancelled" in run.text()


def test_a_requeued_job_starts_clean_and_gives_the_right_output(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    chain = sleep_chain(8, "requeued")
    with background_run(kliko, tmp_path, chain, "--slurm-opt=--requeue") as run:
        job = run.job()
        # The first attempt's output folder gets a file the second must not see.
        staged = next((tmp_path / "c" / "tmp").glob("*/output"))
        (staged / "first-attempt.txt").write_text("stale\n")
        requeue = subprocess.run(
            ["scontrol", "requeue", str(job["job_id"])], capture_output=True, text=True
        )
        assert requeue.returncode == 0, requeue.stderr
        # Slurm holds a requeued job back for two minutes (its begin time). Releasing it with
        # `scontrol update StartTime=now` would save that, but the update can hide the job from
        # squeue for a moment, when the first attempt's record in the completion log was read as
        # its end (found so, left for another session): the test waits the hold out.
        run.exits_with(0, within=300)
    text = run.text()
    assert "Slurm requeued job" in text and "attempt 2" in text
    out = tmp_path / "kliko-out" / "s"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".kliko")) == ["slept.txt"]
    assert (out / "slept.txt").read_text() == "slept 8.0 requeued\n"
    (saved,) = (tmp_path / "c" / "entries").rglob("log.txt")
    lines = saved.read_text().splitlines()
    assert sum("sleep: 8.0s" in line for line in lines) == 2  # one per attempt, not garbled


def test_jobs_go_in_without_requeue_by_default(kliko: KlikoCli, tmp_path: Path) -> None:
    with background_run(kliko, tmp_path, sleep_chain(20, "noreq")) as run:
        requeue = subprocess.run(
            ["scontrol", "requeue", str(run.job()["job_id"])], capture_output=True, text=True
        )
        assert requeue.returncode != 0  # Slurm refuses: the job is not requeueable
        run.exits_with(0, within=120)


MATRIX = """\
steps:
  many:
    image: example/sleep
    params: {{seconds: 1}}
    matrix: {{tag: [{tags}]}}
"""


def test_slurm_max_jobs_keeps_the_runs_jobs_in_the_queue_at_or_below_it_and_sends_arrays(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    tags = ", ".join(f"t{i:02d}" for i in range(40))
    chain = write_chain(tmp_path, MATRIX.format(tags=tags))
    first = last_job_id()
    most = [0]
    stop = threading.Event()

    def sample() -> None:  # squeue from outside, as a site's limit counts: each task one job
        while not stop.is_set():
            listed = subprocess.run(
                ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%j"],
                capture_output=True,
                text=True,
            ).stdout.splitlines()
            tasks = [line.split("|") for line in listed if line.count("|") == 2]
            mine = [
                t for t in tasks
                if int(t[0].split("_")[0]) > first and t[2].startswith("kliko-")
                and "check" not in t[2]
            ]  # fmt: skip
            live = [t for t in mine if t[1] in ("PENDING", "RUNNING", "CONFIGURING")]
            most[0] = max(most[0], len(live))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        done = kliko(
            "run", chain, "--backend", "slurm", "--plain", "--cache-dir", "c", "--jobs", "40",
            "--slurm-max-jobs", "8", timeout=600,
        )  # fmt: skip
    finally:
        stop.set()
        sampler.join()
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = jobs_after(first)
    assert len(jobs) == 40
    assert 1 <= most[0] <= 8, f"{most[0]} of the run's jobs were in the queue at once"
    # Expansions ready together went in as job arrays: far fewer sbatch calls than steps.
    submissions = {j["array_job_id"] or j["job_id"] for j in jobs}
    arrays = {j["array_job_id"] for j in jobs if j["array_job_id"]}
    calls = f"{len(submissions)} sbatch calls, {len(arrays)} of them arrays"
    assert arrays and len(submissions) <= 20, calls
    said = sorted(o.read_text() for o in Path(tmp_path, "c", "entries").rglob("slept.txt"))
    assert said == [f"slept 1.0 t{i:02d}\n" for i in range(40)], "each task ran its own step"


PENDING_ARRAY = """\
steps:
  many:
    image: example/sleep
    params: {seconds: 1}
    matrix: {tag: [pa-1, pa-2, pa-3, pa-4]}
"""


def test_an_array_cancelled_while_pending_fails_each_task_as_cancelled(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    # scancel '<array>_[0-3]', as squeue prints a pending array: the completion log holds one
    # line for the array and none per task. The run once ended in a traceback (KeyError), each
    # task failing as 'the cluster keeps no accounting'.
    warm = write_chain(tmp_path, "steps:\n  w: {image: example/upper}\n")
    done = kliko("run", warm, "--backend", "slurm", "--plain", "--cache-dir", "c")
    assert done.returncode == 0, done.stdout + done.stderr  # the nodes' check, not held back
    pending = background_run(
        kliko, tmp_path, PENDING_ARRAY, "--keep-going", "--slurm-opt=--begin=now+120",
        ready=lambda run: "is pending" in run.text(), what="a pending task",
    )  # fmt: skip
    with pending as run:
        printed = subprocess.run(
            ["squeue", "-h", "-o", "%i", "-n", f"kliko-{run.run_id()}-many"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        array = printed[0]
        assert array.endswith("_[0-3]"), printed
        subprocess.run(["scancel", array], check=True)
        run.exits_with(1, within=60)
    text = run.text()
    assert "Traceback" not in text, text
    for task in range(4):
        assert f"Slurm job {array[: -len('[0-3]')]}{task} was cancelled (scancel)" in text, text
    assert "keeps no accounting" not in text
    assert "4 failed" in text, text


FAILING_SCANCEL = """\
#!/bin/sh
echo "scancel: error: Unexpected internal failure (injected)" >&2
exit 1
"""


def test_ctrl_c_names_the_jobs_a_failing_scancel_leaves_running(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    # Every step once showed 'cancelled' and the run exited 130 without a word, while squeue
    # still showed its jobs running.
    shim(tmp_path, kliko, "scancel", FAILING_SCANCEL)
    with background_run(kliko, tmp_path, sleep_chain(120, "nocancel")) as run:
        job = run.job()
        run.ctrl_c()
        assert active([run.job()]), "the job is left running, as the run says"
    text = run.text()
    assert "Traceback" not in text, text
    assert (
        f"Slurm job {job['job_id']} (step s, not cancelled, scancel failed: scancel: error: "
        "Unexpected internal failure (injected))" in text
    ), text
    # The job still writes into its staging folder: kept (it was deleted under the job), and
    # said where.
    (staging,) = (tmp_path / "c" / "tmp").iterdir()
    assert (staging / "scratch" / "slurm" / "job.sh").is_file()
    assert (
        f"folder {staging} (staging folder of step s, kept: Slurm job {job['job_id']} may still "
        "write into it)" in text
    ), text
    assert f"or remove them now: scancel {job['job_id']}; rm -rf {staging}" in text, text


def test_a_step_whose_job_scancel_fails_to_stop_says_so_and_keeps_its_staging_folder(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """A step's timeout: its job went on writing into a staging folder deleted under it, and
    the step said 'the container was stopped'. (The cleanup's deadline is cut to 5 s here, so
    that the job, which stops itself 10 s after the step's timeout, still runs at the end.)"""
    shim(tmp_path, kliko, "scancel", FAILING_SCANCEL)
    chain = write_chain(tmp_path, sleep_chain(60, "tmo", extra="timeout: 3"))
    script = (
        "import anyio, kliko_async\n"
        "from kliko_async.runtime.slurm import cancelling\n"
        "cancelling.CLEANUP_DEADLINE_SECONDS = 5\n"
        f"r = anyio.run(lambda: kliko_async.run({str(chain)!r}, backend='slurm', "
        f"cache_dir={str(tmp_path / 'c')!r}))\n"
        "print(r.steps['s'].reason)\n"
    )
    first = last_job_id()
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, env=kliko.env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        (job,) = jobs_after(first)
        assert active([job]), job["job_state"]  # still running, as the step says
    finally:
        for each in jobs_after(first):
            subprocess.run([real("scancel"), str(each["job_id"])], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (staging,) = (tmp_path / "c" / "tmp").iterdir()
    assert (staging / "scratch" / "slurm" / "job.sh").is_file()
    assert done.stdout.strip() == (
        f"timed out after 3 s; Slurm job {job['job_id']} may still be running (step s, not "
        "cancelled, scancel failed: scancel: error: Unexpected internal failure (injected)): "
        f"the step's staging folder is kept, at {staging}"
    ), done.stdout


HANGING_SQUEUE = """\
#!/bin/sh
# squeue, not answering once {trigger} exists (a controller that hangs).
if [ -e {trigger} ]; then exec sleep 120; fi
exec {real} "$@"
"""


def test_ctrl_c_while_squeue_hangs_ends_within_the_cleanup_deadline(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    # Each cancelled job had a deadline of its own, and a cancelled poller went from one
    # 30-second poll to the next: Ctrl-C took 2 to 5 minutes to answer.
    trigger = tmp_path / "hang-now"
    shim(tmp_path, kliko, "squeue", HANGING_SQUEUE.format(trigger=trigger, real=real("squeue")))
    with background_run(kliko, tmp_path, sleep_chain(120, "sqhang")) as run:
        job = run.job()
        trigger.touch()
        time.sleep(1)  # a poll hangs
        began = time.monotonic()
        run.ctrl_c(within=90)
        took = time.monotonic() - began
    assert took < 40, f"Ctrl-C took {took:.0f} s"
    text = run.text()
    assert "Traceback" not in text, text
    assert (
        f"Slurm job {job['job_id']} (step s, cancelled, but squeue did not show it leave its "
        "node within the cleanup's 30 s)" in text
    ), text
