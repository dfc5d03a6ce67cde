"""The Slurm backend's parts that need no cluster: the job script, squeue's answers, the poll
shared by all of a run's jobs, and the profiles that say how to submit. The backend itself is
tested on a real cluster in tests/integration/test_slurm.py."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from kliko_async.runtime.base import ContainerJob, Mount
from kliko_async.runtime.slurm import queue as slurmqueue
from kliko_async.runtime.slurm.queue import JobQueue, SlurmJob
from kliko_async.runtime.slurm.script import charliecloud_command, docker_command, job_script

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
    assert "/c/entries/low:/input/low" in binds and "/c/tmp/k/output:/output" in binds
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


@pytest.mark.parametrize(
    ("raw", "code"), [(0, 0), (3 << 8, 3), (137 << 8, 137), (15, 143), (9, 137)]
)
def test_squeue_exit_statuses_read_as_a_shell_reports_them(raw: int, code: int) -> None:
    assert SlurmJob(job_id="1", name="n", state="FAILED", exit_status=raw).exit_code == code


def test_one_squeue_call_answers_every_waiting_job_and_polls_slow_down_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []
    states = {"1": "RUNNING", "2": "PENDING"}

    async def fake_all_jobs() -> dict[str, SlurmJob]:
        calls.append(anyio.current_time())
        return {i: SlurmJob(job_id=i, name="kliko-x", state=s) for i, s in states.items()}

    monkeypatch.setattr(slurmqueue, "all_jobs", fake_all_jobs)

    async def main() -> None:
        queue = JobQueue(fastest=0.01, slowest=0.04)
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
        assert seen == {"1": "RUNNING", "2": "PENDING"} and len(calls) == 1
        for _ in range(4):  # nothing changes: the interval grows to its slowest
            await queue.next_state("1")
        assert queue.interval == 0.04
        states["2"] = "RUNNING"
        await queue.next_state("1")
        assert queue.interval == 0.01  # a change: fast again

    anyio.run(main)


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
    assert done.returncode == 1
    assert "--partition and --slurm-opt need --backend slurm" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_profile_that_does_not_exist_is_named_with_the_ones_that_do(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("steps: {a: {image: example/gen}}\n")
    done = kliko(
        tmp_path, "run", "c.yaml", "--profile", "clutser",
        config="profiles:\n  cluster: {backend: slurm, partition: compute}\n",
    )  # fmt: skip
    assert done.returncode == 1
    assert "no profile 'clutser' (profiles: cluster)" in done.stderr
    assert "config.yaml" in done.stderr and "Traceback" not in done.stderr


def test_a_config_file_with_an_unknown_key_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("steps: {a: {image: example/gen}}\n")
    done = kliko(
        tmp_path, "run", "c.yaml",
        config="profiles:\n  cluster: {backend: slurm, partiton: compute}\n",
    )  # fmt: skip
    assert done.returncode == 1
    assert "invalid config file: profiles.cluster.partiton: Extra inputs are not permitted" in (
        done.stderr
    )
