"""Jobs ready together go into Slurm as one job array: the gathering, the array's script and
how the queue follows an array's tasks. On the real cluster: tests/integration/test_slurm_faults.py
(the 40-way matrix under --slurm-max-jobs)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from kliko_async.errors import ContainerError
from kliko_async.runtime.base import ContainerJob
from kliko_async.runtime.slurm.arrays import Gatherer, Submission, array_script, shared_labels
from kliko_async.runtime.slurm.endings import ended_without_status
from kliko_async.runtime.slurm.jobstates import NOT_IN_ACCOUNTING, SlurmJob, parse_squeue
from kliko_async.runtime.slurm.queue import JobQueue

pytestmark = pytest.mark.anyio


def job(step: str, **labels: str) -> ContainerJob:
    return ContainerJob(
        image="sha256:" + "a" * 64,
        command=("/kliko",),
        labels={"io.kliko-async.run": "r1", "io.kliko-async.step": step, **labels},
    )


def submission(
    step: str, options: tuple[str, ...] = ("--nodes=1",), family: str | None = "m"
) -> Submission:
    folder = Path(f"/jobs/{step}")
    return Submission(job(step), folder, folder / "job.sh", options, step, family)


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    async def one(self, group: Sequence[Submission]) -> None:
        self.calls.append([s.step for s in group])
        if self.fail:
            raise ContainerError("Slurm refused the job: no")
        group[0].job_id = str(100 + len(self.calls))

    async def many(self, group: Sequence[Submission]) -> None:
        self.calls.append([s.step for s in group])
        if self.fail:
            raise ContainerError("Slurm refused the job: no")
        for task, each in enumerate(group):
            each.job_id = f"{100 + len(self.calls)}_{task}"


async def test_jobs_alike_ready_together_go_in_as_one_array_and_others_alone() -> None:
    slurm = Recorder()
    gatherer = Gatherer(slurm.one, slurm.many, gather_s=0.05)
    ids: dict[str, str] = {}

    async def submit(each: Submission) -> None:
        ids[each.step] = await gatherer.submit(each)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(submit, submission(f"m{i}"))
        tg.start_soon(submit, submission("big", ("--nodes=1", "--mem=4096M")))
    assert sorted(map(sorted, slurm.calls)) == [["big"], ["m0", "m1", "m2", "m3", "m4"]]
    array = ids["m0"].split("_")[0]
    assert sorted(ids[f"m{i}"] for i in range(5)) == [f"{array}_{t}" for t in range(5)]
    assert "_" not in ids["big"]
    assert gatherer.arrays == 1

    later = await gatherer.submit(submission("later"))  # alone in its window: a plain job
    assert "_" not in later and slurm.calls[-1] == ["later"]


async def test_expansions_of_another_matrix_step_or_of_none_never_share_an_array() -> None:
    slurm = Recorder()
    gatherer = Gatherer(slurm.one, slurm.many, gather_s=5)
    with anyio.fail_after(2):  # a step of no matrix goes in at once, with no gathering
        assert "_" not in await gatherer.submit(submission("plain", family=None))
    gatherer = Gatherer(slurm.one, slurm.many, gather_s=0.05)
    async with anyio.create_task_group() as tg:
        for i in range(2):
            tg.start_soon(gatherer.submit, submission(f"a{i}", family="a"))
            tg.start_soon(gatherer.submit, submission(f"b{i}", family="b"))
    assert sorted(map(sorted, slurm.calls[1:])) == [["a0", "a1"], ["b0", "b1"]]


async def test_an_array_holds_at_most_so_many_tasks() -> None:
    slurm = Recorder()
    gatherer = Gatherer(slurm.one, slurm.many, gather_s=0.05, most=3)
    async with anyio.create_task_group() as tg:
        for i in range(7):
            tg.start_soon(gatherer.submit, submission(f"m{i}"))
    assert sorted(len(c) for c in slurm.calls) == [1, 3, 3]


async def test_a_refused_array_fails_each_of_its_jobs_with_slurms_words() -> None:
    gatherer = Gatherer(Recorder(fail=True).one, Recorder(fail=True).many, gather_s=0.05)
    errors: list[str] = []

    async def submit(each: Submission) -> None:
        try:
            await gatherer.submit(each)
        except ContainerError as error:
            errors.append(str(error))

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(submit, submission(f"m{i}"))
    assert errors == ["Slurm refused the job: no"] * 3


async def test_tasks_cancelled_while_their_array_goes_in_know_the_job_ids_it_got() -> None:
    """Ctrl-C cancels every expansion: the others stopped waiting at once, so a task that went
    in as the array's sbatch answered was known to no step, and none cancelled it."""
    slurm = Recorder()

    async def answering_late(group: Sequence[Submission]) -> None:
        with anyio.CancelScope(shield=True):  # sbatch answers within its grace
            await anyio.sleep(0.2)
        await slurm.many(group)

    gatherer = Gatherer(slurm.one, answering_late, gather_s=0.01, cancelled_wait=5)
    known: dict[str, str] = {}

    async def submit(each: Submission) -> None:
        try:
            await gatherer.submit(each)
        finally:
            known[each.step] = each.job_id

    with anyio.fail_after(2), anyio.move_on_after(0.1):  # Ctrl-C, while sbatch runs
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(submit, submission(f"m{i}"))
    assert known == {"m0": "101_0", "m1": "101_1", "m2": "101_2"}


async def test_an_array_cancelled_while_it_gathers_leaves_none_of_its_tasks_waiting() -> None:
    slurm = Recorder()
    gatherer = Gatherer(slurm.one, slurm.many, gather_s=5, cancelled_wait=60)
    errors: list[str] = []

    async def first() -> None:
        with anyio.move_on_after(0.1):  # cancelled in the window (only its step)
            await gatherer.submit(submission("m0"))

    async def second() -> None:
        await anyio.sleep(0.02)
        try:
            await gatherer.submit(submission("m1"))
        except ContainerError as error:
            errors.append(str(error))

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
    assert errors == ["not submitted: its job array was cancelled"]
    assert slurm.calls == []


def test_each_task_of_the_array_script_runs_its_own_folders_job(tmp_path: Path) -> None:
    folders = []
    for name in ("a", "b b", "it's"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "job.sh").write_text('#!/bin/sh\necho "ran $0"\n')
        (folder / "job.sh").chmod(0o755)
        folders.append(folder)
    script = tmp_path / "array.sh"
    script.write_text(array_script(folders))
    for task, name in enumerate(("a", "b b", "it's")):
        done = subprocess.run(
            ["bash", str(script)],
            env={"SLURM_ARRAY_TASK_ID": str(task), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"ran {tmp_path / name / 'job.sh'}\n", done.stdout
    (folders[1] / "job.sh").unlink()  # a node that cannot see the folder says so
    done = subprocess.run(
        ["bash", str(script)], env={"SLURM_ARRAY_TASK_ID": "1"}, capture_output=True, text=True
    )
    assert done.returncode == 97 and "cannot see" in done.stderr


def test_an_arrays_comment_holds_the_labels_all_its_tasks_share() -> None:
    assert shared_labels([job("a", owner="me"), job("b", owner="me")]) == {
        "io.kliko-async.run": "r1",
        "owner": "me",
    }


def test_squeue_shows_each_task_with_its_own_job_id_once_it_started() -> None:
    text = (
        "104_0|105|RUNNING|None|node1|0|0|me|kliko-r1-m+2|\n"
        "104_1|104|PENDING|Resources||0|0|me|kliko-r1-m+2|\n"
        "104_2|104|RUNNING|None|node2|0|0|me|kliko-r1-m+2|\n"
        "104_[3-5%2]|104|PENDING|JobArrayTaskLimit||0|0|me|kliko-r1-m+2|\n"  # not with --array
    )
    found = parse_squeue(text)
    assert sorted(found) == ["104_0", "104_1", "104_2"]
    assert found["104_0"].raw_id == "105"
    assert found["104_1"].raw_id == "104_1", "a pending task shows its array's ID, not its own"
    assert found["104_2"].raw_id == "104"


class ArraySlurm:
    """squeue and the job completion log for one array whose tasks come and go."""

    def __init__(self) -> None:
        self.squeue: list[str] = []
        self.completion: dict[str, str] = {}  # by the job ID of its own
        self.sacct_asked: list[str] = []

    async def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        if args[0] == "squeue":
            assert "--array" in args
            out = "".join(f"{line}\n" for line in self.squeue)
            if not out:
                return subprocess.CompletedProcess([], 1, b"", b"Invalid job id specified")
            return subprocess.CompletedProcess([], 0, out.encode(), b"")
        if args[0] == "sacct":
            if "--completion" not in args:
                return subprocess.CompletedProcess([], 1, b"", b"accounting storage is disabled")
            ids = next(a for a in args if a.startswith("--jobs=")).split("=")[1].split(",")
            self.sacct_asked += ids
            lines = [f"{i}|{self.completion[i]}|0:0|node1|x" for i in ids if i in self.completion]
            return subprocess.CompletedProcess([], 0, "\n".join(lines).encode(), b"")
        raise AssertionError(args)


async def test_a_task_that_left_squeue_is_read_from_accounting_by_its_own_job_id() -> None:
    slurm = ArraySlurm()
    queue = JobQueue(fastest=0.01, slowest=0.01, accounting_grace=0.5, command=slurm)
    queue.watch("104_0")
    queue.watch("104_1")
    slurm.squeue = [
        "104_0|105|RUNNING|None|node1|0|0|me|k|",
        "104_1|104|PENDING|Priority||0|0|me|k|",
    ]
    assert (await queue.next_state("104_0")).state == "RUNNING"  # type: ignore[union-attr]
    slurm.squeue = ["104_1|104|PENDING|Priority||0|0|me|k|"]
    slurm.completion = {"105": "FAILED", "104": "COMPLETED"}
    with anyio.fail_after(5):
        while (info := await queue.next_state("104_0")).state == "RUNNING":  # type: ignore[union-attr]
            pass
    assert info is not None and info.job_id == "104_0" and info.state == "FAILED"
    assert "104" not in slurm.sacct_asked, "the array's ID is another task's own job ID"
    assert queue.known("104_1").state == "PENDING"  # type: ignore[union-attr]


async def test_tasks_cancelled_while_pending_are_read_from_their_arrays_one_record() -> None:
    """``scancel '104_[0-2]'`` on a pending array: the completion log holds one line for the
    array (``104|CANCELLED``), none per task; each task once ended as 'the cluster keeps no
    accounting', though it does, and not as cancelled."""
    slurm = ArraySlurm()
    queue = JobQueue(fastest=0.01, slowest=0.01, accounting_grace=0.5, command=slurm)
    for task in range(3):
        queue.watch(f"104_{task}")
    slurm.squeue = [f"104_{t}|104|PENDING|BeginTime||0|0|me|k|" for t in range(3)]
    assert (await queue.next_state("104_0")).state == "PENDING"  # type: ignore[union-attr]
    slurm.squeue = []
    slurm.completion = {"104": "CANCELLED"}
    with anyio.fail_after(5):
        while (info := await queue.next_state("104_0")).state == "PENDING":  # type: ignore[union-attr]
            pass
    assert "104" in slurm.sacct_asked
    for task in range(3):
        info = queue.known(f"104_{task}")
        assert info is not None and info.job_id == f"104_{task}" and info.state == "CANCELLED"


async def test_the_last_tasks_record_is_not_taken_for_a_task_never_seen_started() -> None:
    """The array's ID is also its last task's own job ID: that record is not a pending task's
    end (only a CANCELLED array record is)."""
    slurm = ArraySlurm()
    queue = JobQueue(fastest=0.01, slowest=0.01, accounting_grace=0.2, command=slurm)
    queue.watch("104_0")
    slurm.squeue = ["104_0|104|PENDING|Priority||0|0|me|k|"]
    assert (await queue.next_state("104_0")).state == "PENDING"  # type: ignore[union-attr]
    slurm.squeue = []
    slurm.completion = {"104": "COMPLETED"}
    with anyio.fail_after(5):
        while (info := await queue.next_state("104_0")).state == "PENDING":  # type: ignore[union-attr]
            pass
    assert info.state == "UNKNOWN" and info.reason == NOT_IN_ACCOUNTING


async def test_a_task_cancelled_on_its_own_while_pending_says_accounting_has_no_record() -> None:
    info = SlurmJob(job_id="104_1", state="UNKNOWN", reason=NOT_IN_ACCOUNTING, from_sacct=True)
    with pytest.raises(ContainerError) as caught:
        ended_without_status("104_1", Path("/nowhere"), info)
    assert "holds no record of it" in str(caught.value)
    assert "keeps no accounting" not in str(caught.value)
