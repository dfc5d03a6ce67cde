"""The Slurm backend's parts that need no cluster: the job script, squeue's answers, the poll
shared by all of a run's jobs, and the profiles that say how to submit. The backend itself is
tested on a real cluster in tests/integration/test_slurm.py."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from kliko_async.errors import ContainerError, RuntimeUnavailable
from kliko_async.runtime import inflight
from kliko_async.runtime.base import ContainerJob, Mount
from kliko_async.runtime.inflight import left_behind
from kliko_async.runtime.slurm import cancelling
from kliko_async.runtime.slurm.commands import SlurmCallFailed, parse_job_id, sbatch_transient
from kliko_async.runtime.slurm.jobstates import SlurmJob, parse_squeue
from kliko_async.runtime.slurm.queue import JobQueue
from kliko_async.runtime.slurm.runtime import SlurmRuntime
from kliko_async.runtime.slurm.script import (
    charliecloud_command,
    copy_commands,
    docker_command,
    job_script,
)
from kliko_async.runtime.slurm.unchanged import changed_paths, tree_state

KLIKO_ASYNC = str(Path(sys.executable).parent / "kliko-async")

JOB = ContainerJob(
    image="sha256:" + "a" * 64,
    command=("/kliko",),
    mounts=(
        Mount(source=Path("/c/tmp/k/scratch/parameters.json"), target="/parameters.json",
              read_only=True),
        Mount(source=Path("/c/entries/up"), target="/input/up", read_only=True),
        Mount(source=Path("/c/entries/low"), target="/input/low", read_only=True),
        Mount(source=Path("/c/tmp/k/output"), target="/output"),
    ),
    env={"GREETING": "hello world; $(rm -rf /)"},
    user="1000:1000",
    labels={
        "io.kliko-async.run": "r1",
        "io.kliko-async.step": "merge",
        "io.kliko-async.owner": "login1:4242",
    },
    memory=256 << 20,
    cpus=1.5,
    timeout=30,
)  # fmt: skip


def test_docker_run_has_the_local_runtimes_mounts_user_env_labels_and_limits() -> None:
    args = docker_command(JOB)
    pairs = list(itertools.pairwise(args))
    assert ("-v", "/c/tmp/k/scratch/parameters.json:/parameters.json:ro") in pairs
    assert ("-v", "/c/entries/up:/input/up:ro") in pairs
    assert ("-v", "/c/tmp/k/output:/output:rw") in pairs
    assert ("--user", "1000:1000") in pairs
    assert ("-e", "GREETING=hello world; $(rm -rf /)") in pairs
    assert ("--label", "io.kliko-async.step=merge") in pairs
    assert ("--label", "io.kliko-async.managed=1") in pairs
    # Owned by its job, so that no local run on the node's engine reaps it as a leftover.
    assert ("--label", "io.kliko-async.owner=slurm:$SLURM_JOB_ID") in pairs
    assert ("--label", "io.kliko-async.submitter=login1:4242") in pairs
    assert ("--memory", str(256 << 20)) in pairs and ("--memory-swap", str(256 << 20)) in pairs
    assert "--privileged" not in args
    assert args[-2:] == [JOB.image, "/kliko"]


def test_a_job_without_command_runs_kliko() -> None:
    job = JOB.model_copy(update={"command": None})
    assert docker_command(job)[-1] == "/kliko"
    assert charliecloud_command(job, Path("/img"), Path("/f"))[-2:] == ["--", "/kliko"]


def test_ch_run_binds_every_mount_and_gives_mount_points_for_several_inputs() -> None:
    args = charliecloud_command(JOB, Path("/c/slurm/images/aaa"), Path("/c/tmp/k/scratch/slurm"))
    binds = [b for flag, b in itertools.pairwise(args) if flag == "-b"]
    assert binds[0] == "/c/tmp/k/scratch/slurm/input:/input"  # before /input/<step>
    # ch-run binds read-write only: a read-only mount (a cache entry) is bound as its copy.
    copies = "/c/tmp/k/scratch/slurm/read-only-copies"
    assert f"{copies}/2:/input/low" in binds and "/c/tmp/k/output:/output" in binds
    assert f"{copies}/0:/parameters.json" in binds
    assert not any(b.startswith("/c/entries/") for b in binds)
    assert args[:2] == ["env", "-i"]  # the node's environment does not leak in
    assert ("--uid", "1000") in list(itertools.pairwise(args))


def test_the_job_script_is_valid_bash_and_quotes_what_it_is_given(tmp_path: Path) -> None:
    text = job_script(JOB, folder=tmp_path / "it's here", image_dir=tmp_path / "img",
                      engine="auto", limit=40.0)  # fmt: skip
    script = tmp_path / "job.sh"
    script.write_text(text)
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "'GREETING=hello world; $(rm -rf /)'" in text
    assert '"io.kliko-async.owner=slurm:$SLURM_JOB_ID"' in text  # expanded by the job
    assert "sleep 40.000" in text  # the job's own time limit


def test_the_copies_ch_run_binds_are_copies_never_links_to_the_entry(tmp_path: Path) -> None:
    """A reflink or a full copy (never a hard link) that keeps modes and links: what the
    container writes into it (as WSClean writes into the MS it is given) leaves the entry alone."""
    entry = tmp_path / "entries" / "up"
    (entry / "data.ms").mkdir(parents=True)
    original = entry / "data.ms" / "table.f0"
    original.write_text("visibilities\n")
    original.chmod(0o644)
    (entry / "link").symlink_to("data.ms")
    job = JOB.model_copy(update={"mounts": (Mount(source=entry, target="/input", read_only=True),)})
    folder = tmp_path / "it's the job"

    subprocess.run(["bash", "-c", copy_commands(job, folder)], check=True)

    copy = folder / "read-only-copies" / "0"
    copied = copy / "data.ms" / "table.f0"
    assert copied.read_text() == "visibilities\n"
    assert copied.stat().st_ino != original.stat().st_ino and original.stat().st_nlink == 1
    assert copied.stat().st_mode == original.stat().st_mode
    assert (copy / "link").is_symlink() and str((copy / "link").readlink()) == "data.ms"
    copied.write_text("MODEL_DATA written\n")
    assert original.read_text() == "visibilities\n"


def test_a_changed_read_only_input_is_noticed(tmp_path: Path) -> None:
    entry = tmp_path / "entry"
    (entry / "sub").mkdir(parents=True)
    (entry / "sub" / "a.txt").write_text("a")
    before = tree_state([entry])
    assert changed_paths(before, tree_state([entry])) == []
    with (entry / "sub" / "a.txt").open("a") as opened:  # opened for update, as WSClean does
        opened.write("more")
    (entry / "new.txt").write_text("new")
    assert changed_paths(before, tree_state([entry])) == [
        str(entry),
        str(entry / "new.txt"),
        str(entry / "sub" / "a.txt"),
    ]


@pytest.mark.parametrize(
    ("raw", "code"), [(0, 0), (3 << 8, 3), (137 << 8, 137), (15, 143), (9, 137)]
)
def test_squeue_exit_statuses_read_as_a_shell_reports_them(raw: int, code: int) -> None:
    assert SlurmJob(job_id="1", name="n", state="FAILED", exit_status=raw).exit_code == code


class FakeSlurm:
    """Stands in for Slurm's commands: the states of some jobs, and failures on demand."""

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states
        self.calls: list[list[str]] = []
        self.fail_next = 0
        self.accounting = "completion"  # "storage", "completion" or "none"
        self.finished: dict[str, str] = {}  # left squeue, known to accounting: state
        self.restarts: dict[str, int] = {}  # how often Slurm requeued a job
        self.reasons: dict[str, str] = {}  # why a job is pending

    async def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(list(args))
        if self.fail_next:
            self.fail_next -= 1
            return done(1, err=f"{args[0]}: error: Socket timed out on send/recv operation")
        if args[0] == "squeue":
            wanted = next(a for a in args if a.startswith("--jobs=")).split("=")[1].split(",")
            lines = [
                f"{i}|{i}|{s}|{self.reasons.get(i, 'None')}|node1|0|{self.restarts.get(i, 0)}|"
                f"me|kliko-r-{i}|"
                for i, s in self.states.items()
                if i in wanted
            ]
            if not lines:
                return done(1, err="slurm_load_jobs error: Invalid job id specified")
            return done(0, "\n".join(lines) + "\n")
        if args[0] == "sacct":
            if self.accounting == "none" or (
                self.accounting == "completion" and "--completion" not in args
            ):
                return done(1, "Slurm accounting storage is disabled\n")
            lines = [f"{i}|{s}|3:0|node2|kliko-r-{i}" for i, s in self.finished.items()]
            return done(0, "\n".join(lines) + "\n")
        raise AssertionError(args)


def done(code: int, out: str = "", err: str = "") -> subprocess.CompletedProcess[bytes]:
    return subprocess.CompletedProcess([], code, out.encode(), err.encode())


def test_one_squeue_call_per_poll_asks_for_the_watched_jobs_only_and_slows_down_when_idle() -> None:
    slurm = FakeSlurm({"1": "RUNNING", "2": "PENDING", "3": "RUNNING"})

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.04, command=slurm)
        queue.watch("1")
        queue.watch("2")
        seen: dict[str, str] = {}

        async def wait(job_id: str) -> None:
            info = await queue.next_state(job_id)
            assert info is not None
            seen[job_id] = info.state

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "1")
            tg.start_soon(wait, "2")
        assert seen == {"1": "RUNNING", "2": "PENDING"} and len(slurm.calls) == 1
        (call,) = slurm.calls
        assert "--jobs=1,2" in call and "--me" in call  # never every job on the cluster
        for _ in range(4):  # nothing changes: the interval grows to its slowest
            await queue.next_state("1")
        assert queue.interval == 0.04
        slurm.states["2"] = "RUNNING"
        await queue.next_state("1")
        assert queue.interval == queue.quickest() == 0.02  # a change: fast again (2 jobs)

    anyio.run(main)


def test_a_poll_whose_follower_is_cancelled_lets_its_squeue_end_and_keeps_the_answer() -> None:
    # The follower that polls is cancelled as its job ends (or at Ctrl-C); killing squeue then
    # raced Python's child watcher ("Unknown child process pid ..." on the user's terminal).
    slurm = FakeSlurm({"1": "RUNNING", "2": "PENDING"})
    ended: list[str] = []

    async def slow_squeue(args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        await anyio.sleep(0.3)
        answer = await slurm(args)
        ended.append(args[0])
        return answer

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, command=slow_squeue)
        queue.watch("1")
        queue.watch("2")
        with anyio.move_on_after(0.1):  # the poller, cancelled mid-squeue
            await queue.next_state("1")
            await anyio.sleep(1)  # (the cancellation arrives at the next checkpoint)
        assert ended == ["squeue"], "the squeue call was cut short"
        info = queue.known("2")  # the other jobs' followers get the answer all the same
        assert info is not None and info.state == "PENDING"

    anyio.run(main)


def test_the_more_jobs_a_run_watches_the_less_often_it_polls_at_most() -> None:
    slurm = FakeSlurm({str(i): "RUNNING" for i in range(1, 201)})

    async def main() -> None:
        queue = JobQueue(fastest=0.25, slowest=3.0, command=slurm)
        queue.watch("1")
        assert queue.interval == 0.25  # a small run: as quick as asked
        for i in range(2, 201):
            queue.watch(str(i))
        assert queue.interval == 2.0  # 200 jobs: one call answers for all, every 2 s at most
        queue.hurry()
        assert queue.interval == 2.0
        for i in range(2, 201):
            queue.forget(str(i))
        queue.hurry()
        assert queue.interval == 0.25

    anyio.run(main)


def test_a_failing_squeue_is_retried_with_backoff_and_the_waiters_never_see_it() -> None:
    slurm = FakeSlurm({"1": "RUNNING"})

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.02, command=slurm)
        queue.watch("1")
        assert (await queue.next_state("1")) is not None
        slurm.fail_next = 2
        assert (await queue.next_state("1")).state == "RUNNING"  # type: ignore[union-attr]
        assert queue.interval >= 1.0  # backed off after the failure
        queue.interval = 0.01  # (not to wait in a unit test)
        await queue.next_state("1")
        queue.interval = 0.01
        slurm.states["1"] = "COMPLETED"
        info = await queue.next_state("1")
        assert info is not None and info.state == "COMPLETED"
        assert queue.failed_polls == 2

    anyio.run(main)


def test_a_squeue_that_keeps_failing_fails_the_waiting_steps_with_a_plain_error() -> None:
    slurm = FakeSlurm({"1": "RUNNING"})

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.02, patience=0.0, command=slurm)
        queue.watch("1")
        slurm.fail_next = 1
        with pytest.raises(SlurmCallFailed, match=r"did not answer about its jobs.*timed out"):
            await queue.next_state("1")
        queue.interval = 0.01
        assert (await queue.next_state("1")) is not None  # the next waiter starts afresh

    anyio.run(main)


@pytest.mark.parametrize("accounting", ["storage", "completion"])
def test_a_job_that_left_squeue_is_looked_up_once_in_accounting(accounting: str) -> None:
    slurm = FakeSlurm({"1": "RUNNING"})
    slurm.accounting = accounting

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, command=slurm)
        queue.watch("1")
        await queue.next_state("1")
        del slurm.states["1"]  # MinJobAge passed: the controller forgot it
        slurm.finished["1"] = "FAILED"
        info = await queue.next_state("1")
        assert info is not None and info.state == "FAILED" and info.exit_code == 3
        assert info.from_sacct and info.node == "node2"
        sacct_calls = len([c for c in slurm.calls if c[0] == "sacct"])
        await queue.next_state("1")
        assert len([c for c in slurm.calls if c[0] == "sacct"]) == sacct_calls  # once

    anyio.run(main)


@pytest.mark.parametrize(
    ("seen", "state"),
    [(True, "CANCELLED"), (False, "CANCELLED"), (False, "COMPLETED")],
    ids=["cancelled-pending", "cancelled-never-polled", "ended-between-two-polls"],
)
def test_a_job_the_run_saw_end_is_gone_once_squeue_no_longer_shows_it(
    seen: bool, state: str
) -> None:
    # An array cancelled while pending left squeue at once and accounting never held it: the
    # run waited out the accounting grace (Ctrl-C answered after 11 s, not 1-2 s). A job that
    # ran and ended between two polls (its status file read) held its place the same way.
    slurm = FakeSlurm({"1": "PENDING"})

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, command=slurm, accounting_grace=30)
        queue.watch("1")
        if seen:
            await queue.next_state("1")
        del slurm.states["1"]  # gone from the controller; accounting knows nothing of it
        queue.ended("1", state)
        with anyio.fail_after(2):
            info = await queue.next_state("1")
        assert info is not None and not info.active and info.state == state

    anyio.run(main)


def test_a_job_not_cancelled_by_the_run_waits_out_the_grace_when_squeue_loses_it() -> None:
    slurm = FakeSlurm({"1": "PENDING"})

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, command=slurm, accounting_grace=30)
        queue.watch("1")
        await queue.next_state("1")
        del slurm.states["1"]
        for _ in range(3):  # accounting may lag: still the state last seen
            info = await queue.next_state("1")
            assert info is not None and info.state == "PENDING"

    anyio.run(main)


def test_a_job_that_left_squeue_without_accounting_ends_as_unknown() -> None:
    slurm = FakeSlurm({"1": "RUNNING"})
    slurm.accounting = "none"

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, command=slurm)
        queue.watch("1")
        await queue.next_state("1")
        del slurm.states["1"]
        info = await queue.next_state("1")
        assert info is not None and info.state == "UNKNOWN" and not info.active

    anyio.run(main)


def test_a_job_that_ended_before_any_poll_saw_it_is_read_from_accounting() -> None:
    """A short job (the check of the cache folder) may end between sbatch and the first poll,
    and squeue may show no ended job (MinJobAge, or a site's squeue): it once waited forever."""
    slurm = FakeSlurm({})
    slurm.finished["1"] = "COMPLETED"

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, command=slurm)
        queue.watch("1")
        info = await queue.next_state("1")
        assert info is not None and info.state == "COMPLETED" and info.from_sacct

    anyio.run(main)


def test_a_job_no_one_knows_is_waited_for_only_as_long_as_the_patience_lasts() -> None:
    slurm = FakeSlurm({})

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, patience=0.2, command=slurm)
        queue.watch("1")
        assert await queue.next_state("1") is None  # not shown yet: still waiting
        with anyio.fail_after(5):
            while (info := await queue.next_state("1")) is None:
                pass
        assert info.state == "UNKNOWN" and not info.active

    anyio.run(main)


@pytest.mark.parametrize(
    ("out", "code", "wanted"),
    [("4242\n", 0, "4242"), ("4242;kliko\n", 0, "4242"), ("", 0, None), ("Submitted", 0, None)],
)
def test_sbatch_answers_are_validated(out: str, code: int, wanted: str | None) -> None:
    if wanted is not None:
        assert parse_job_id(done(code, out)) == wanted
    else:
        with pytest.raises(ContainerError, match="where a job ID was expected"):
            parse_job_id(done(code, out))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        ("sbatch: error: Batch job submission failed: Socket timed out on send/recv", True),
        ("sbatch: error: Batch job submission failed: Unable to contact slurm controller", True),
        (
            "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
            "(job submit limit, user's size and/or time limits)",
            True,
        ),
        ("sbatch: error: Memory specification can not be satisfied", False),
        ("sbatch: error: Invalid generic resource (gres) specification", False),
    ],
)
def test_only_sbatch_errors_that_waiting_may_clear_are_retried(error: str, transient: bool) -> None:
    assert sbatch_transient(done(1, err=error)) is transient


def test_squeue_lines_with_a_comment_holding_bars_are_read_whole() -> None:
    text = '7|7|RUNNING|None|node1|0|1|me|kliko-r-a|{"k":"a|b"}|\n'
    (job,) = parse_squeue(text, with_comment=True).values()
    assert job.comment == '{"k":"a|b"}' and job.restarts == 1 and job.node == "node1"


def kliko(cwd: Path, *args: str, config: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_CACHE_HOME=str(cwd / "xdg-cache"))
    if config is not None:
        (cwd / "config.yaml").write_text(config)
        env["KLIKO_ASYNC_CONFIG"] = str(cwd / "config.yaml")
    return subprocess.run(
        [KLIKO_ASYNC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_slurm_options_without_the_slurm_backend_are_refused(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("steps: {a: {image: example/gen}}\n")
    done = kliko(tmp_path, "run", "c.yaml", "--partition", "gpu")
    assert done.returncode == 2  # a usage error
    assert "--partition, --slurm-opt and --slurm-max-jobs need --backend slurm" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_profile_that_does_not_exist_is_named_with_the_ones_that_do(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("steps: {a: {image: example/gen}}\n")
    done = kliko(
        tmp_path, "run", "c.yaml", "--profile", "clutser",
        config="profiles:\n  cluster: {backend: slurm, partition: compute}\n",
    )  # fmt: skip
    assert done.returncode == 2  # a setting that cannot be used
    assert "no profile 'clutser' (profiles: cluster)" in done.stderr
    assert "config.yaml" in done.stderr and "Traceback" not in done.stderr


def test_a_config_file_with_an_unknown_key_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("steps: {a: {image: example/gen}}\n")
    done = kliko(
        tmp_path, "run", "c.yaml",
        config="profiles:\n  cluster: {backend: slurm, partiton: compute}\n",
    )  # fmt: skip
    assert done.returncode == 2
    assert "invalid config file: profiles.cluster.partiton: Extra inputs are not permitted" in (
        done.stderr
    )


@pytest.mark.parametrize(("partition", "rows"), [("kliko", 2), ("bare", 1), (None, 2)])
def test_the_default_partition_may_be_named_as_sinfo_marks_it(
    monkeypatch: pytest.MonkeyPatch, partition: str | None, rows: int
) -> None:
    """sinfo writes the default partition as 'kliko*'; --partition kliko once found none."""
    from kliko_async.runtime.slurm import commands

    async def answer(args: Sequence[str], **options: object) -> subprocess.CompletedProcess[bytes]:
        return done(0, "kliko* node1 idle\nkliko* node2 mix\nbare bare1 idle\n")

    monkeypatch.setattr(commands, "retrying", answer)
    found = anyio.run(lambda: commands.sinfo(partition, "%N %t", per_node=True))
    assert len(found) == rows
    with pytest.raises(RuntimeUnavailable, match=r"no partition 'gpu' \(it has: bare, kliko\)"):
        anyio.run(lambda: commands.sinfo("gpu", "%N %t", per_node=True))


def test_accounting_that_lags_behind_a_job_leaving_squeue_is_waited_for() -> None:
    """A job just cancelled leaves squeue before the completion log has its line: the queue
    waits a grace period for accounting instead of calling it vanished (it once said UNKNOWN
    and the step's 'was cancelled' was lost)."""
    slurm = FakeSlurm({"1": "RUNNING"})

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, accounting_grace=5.0, command=slurm)
        queue.watch("1")
        await queue.next_state("1")
        del slurm.states["1"]  # gone from squeue; accounting has not written it yet
        for _ in range(5):
            info = await queue.next_state("1")
            assert info is not None and info.state == "RUNNING", "still waiting for accounting"
        slurm.finished["1"] = "CANCELLED"
        info = await queue.next_state("1")
        assert info is not None and info.state == "CANCELLED" and info.from_sacct

    anyio.run(main)


def test_a_requeued_job_hidden_from_squeue_for_a_moment_is_not_ended_by_its_first_attempt() -> None:
    """Releasing a requeued job (scontrol update StartTime=now) can hide it from squeue for a
    moment, when the completion log holds only its first attempt's end: that was once read as
    the job's end, and the step failed while its second attempt went on to succeed."""
    slurm = FakeSlurm({"1": "RUNNING"})

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, requeue_blip=30.0, command=slurm)
        queue.watch("1")
        await queue.next_state("1")
        slurm.states["1"], slurm.restarts["1"] = "REQUEUE_HOLD", 1
        info = await queue.next_state("1")
        assert info is not None and info.requeued
        del slurm.states["1"]  # the blip
        slurm.finished["1"] = "FAILED"  # the first attempt's record, all accounting has
        for _ in range(5):
            info = await queue.next_state("1")
            assert info is not None and info.state == "REQUEUE_HOLD", "not its end"
        slurm.states["1"] = "RUNNING"  # back, on its second attempt
        info = await queue.next_state("1")
        assert info is not None and info.state == "RUNNING" and info.restarts == 1
        slurm.states["1"] = "COMPLETED"
        info = await queue.next_state("1")
        assert info is not None and info.state == "COMPLETED"

    anyio.run(main)


def test_a_requeued_job_that_stays_away_from_squeue_is_read_from_accounting() -> None:
    slurm = FakeSlurm({"1": "RUNNING"})
    slurm.restarts["1"] = 1

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, requeue_blip=0.2, command=slurm)
        queue.watch("1")
        await queue.next_state("1")
        del slurm.states["1"]  # its second attempt ended and the controller forgot it
        slurm.finished["1"] = "FAILED"
        started = anyio.current_time()
        info = await queue.next_state("1")
        while info is not None and info.state == "RUNNING":
            info = await queue.next_state("1")
        assert info is not None and info.state == "FAILED" and info.from_sacct
        assert anyio.current_time() - started >= 0.2

    anyio.run(main)


def test_polls_stay_due_when_the_followers_that_wait_for_them_keep_being_cancelled() -> None:
    # Each follower polls for all while it waits, and is cancelled when its own job ends: with
    # jobs ending more often than the interval, a wait that began afresh with each new poller
    # never came due (a 200-way matrix went 30 s without a poll).
    slurm = FakeSlurm({"1": "RUNNING", "2": "RUNNING"})

    async def main() -> None:
        queue = JobQueue(fastest=0.2, slowest=0.2, command=slurm)
        queue.watch("1")
        queue.watch("2")
        for _ in range(12):  # a follower every 0.1 s, each cancelled before 0.2 s passed
            with anyio.move_on_after(0.1):
                await queue.next_state("1")
                await anyio.sleep(1)
        assert len(slurm.calls) >= 4, slurm.calls  # 1.2 s at one poll per 0.2 s: about 6

    anyio.run(main)


def test_hurry_shortens_the_wait_for_the_poll_under_way() -> None:
    # The run's last jobs: the interval had grown while nothing changed; a job that ends asks
    # for the next poll at once rather than when the long wait runs out.
    slurm = FakeSlurm({"1": "RUNNING"})

    async def main() -> None:
        queue = JobQueue(fastest=0.05, slowest=5.0, command=slurm)
        queue.watch("1")
        await queue.next_state("1")
        queue.interval = 5.0  # grown while nothing changed
        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(queue.next_state, "1")
                await anyio.sleep(0.2)
                queue.hurry()
        assert len(slurm.calls) == 2

    anyio.run(main)


def test_a_job_forgotten_while_its_poll_runs_is_not_asked_about() -> None:
    """Steps fail and forget their jobs while a poll's squeue runs (an array cancelled from
    outside): the poll once looked them up all the same, and the KeyError ended the run in a
    traceback."""
    slurm = FakeSlurm({"1": "PENDING", "2": "PENDING"})
    queue = JobQueue(fastest=0.01, slowest=0.01, command=slurm)

    async def forgetting_squeue(args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        if args[0] == "squeue":
            del slurm.states["1"], slurm.states["2"]
            queue.forget("1")  # its step failed meanwhile
        return await slurm(args)

    async def main() -> None:
        queue._command = forgetting_squeue
        queue.watch("1")
        queue.watch("2")
        with anyio.fail_after(5):
            await queue.next_state("2")
        assert queue.known("1") is None

    anyio.run(main)


def test_a_job_scancel_fails_to_cancel_is_told_with_scancels_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing scancel once left the job running without a word: the run named nothing."""
    shims = tmp_path / "shims"
    shims.mkdir()
    scancel = shims / "scancel"
    scancel.write_text(
        "#!/bin/sh\necho 'scancel: error: Unexpected internal failure' >&2\nexit 1\n"
    )
    scancel.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(cancelling, "CLEANUP_DEADLINE_SECONDS", 1)
    runtime = SlurmRuntime(tmp_path / "cache")

    left = anyio.run(runtime._cancels.cancel, "745")

    assert left == "not cancelled, scancel failed: scancel: error: Unexpected internal failure"


def test_a_cancelled_poller_starts_no_further_poll_when_squeue_outlasts_the_interval() -> None:
    """With squeue hanging, each poll outlasted the interval: a cancelled poller (Ctrl-C) went
    from one shielded poll to the next without a checkpoint, for the whole patience."""
    slurm = FakeSlurm({"1": "RUNNING"})
    calls: list[str] = []

    async def slow_squeue(args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        calls.append(args[0])
        assert len(calls) == 1, "a cancelled poller polled again"
        await anyio.sleep(0.3)
        return await slurm(args)

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, command=slow_squeue)
        queue.watch("1")
        with anyio.move_on_after(0.1):
            while True:
                await queue.next_state("1")
        assert calls == ["squeue"]

    anyio.run(main)


def test_a_poll_ends_by_the_cleanups_deadline() -> None:
    """A cleanup's poll ends by the cleanup's deadline, not 30 s later (squeue hanging)."""

    async def hanging(args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        await anyio.sleep(5)
        return done(0)

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, command=hanging)
        queue.watch("1")
        began = anyio.current_time()
        queue.cleanup_by = began + 0.3
        await queue.next_state("1")
        assert anyio.current_time() - began < 1.5
        assert queue.failed_polls == 1

    anyio.run(main)


def test_jobs_cancelled_together_share_one_cleanup_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cancellation had a deadline of its own: the cleanup's, one after the other, took
    their sum. Each job that was left is said so."""
    shims = tmp_path / "shims"
    shims.mkdir()
    scancel = shims / "scancel"
    scancel.write_text("#!/bin/sh\nexec sleep 30\n")  # a controller that does not answer
    scancel.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(inflight, "_under_way", {})  # what this test leaves is its own
    monkeypatch.setattr(cancelling, "CLEANUP_DEADLINE_SECONDS", 1)
    runtime = SlurmRuntime(tmp_path / "cache")

    left: dict[str, str | None] = {}

    async def cancel(job_id: str, after: float) -> None:
        await anyio.sleep(after)
        left[job_id] = await runtime._cancels.cancel(job_id)

    async def main() -> None:
        async with anyio.create_task_group() as tg:  # Ctrl-C: each step cancels its job
            tg.start_soon(cancel, "745", 0)
            tg.start_soon(cancel, "746", 0.5)
        runtime._live.add("747")  # (submitted, its step not yet told)
        await runtime.aclose()

    began = time.monotonic()
    anyio.run(main)

    assert time.monotonic() - began < 1.8
    assert left == dict.fromkeys(["745", "746"], "not cancelled, scancel did not answer within 1 s")
    (item,) = [i for i in left_behind() if i.job_id == "747"]
    assert item.what == "a job of this run, not cancelled: the cleanup's 1 s were over"


def test_a_hanging_poll_is_given_up_when_its_run_is_cancelled() -> None:
    """Ctrl-C while the poller's squeue hangs: the shielded poll held the step's scancel for
    up to 30 s; cut short, it ends at once (a healthy one may finish within a second)."""

    async def hanging(args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        await anyio.sleep(5)
        return done(0)

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.01, command=hanging)
        queue.watch("1")
        began = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(queue.next_state, "1")
            await anyio.sleep(1.2)
            queue.cut_short()
        assert anyio.current_time() - began < 2
        assert queue.failed_polls == 1

    anyio.run(main)
