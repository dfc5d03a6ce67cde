"""The folders of the jobs a Slurm run follows are looked at together: one worker-thread hop
for all that ask at once, each follower getting its own folder's look (issue 21: a 200-way
matrix spent a quarter of this process's CPU on one hop per job per look)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from kliko_async.runtime.slurm.logfiles import JobFiles, LogFiles, look_at_job_files
from kliko_async.runtime.slurm.looks import FolderLooks

pytestmark = pytest.mark.anyio


def _job_folders(root: Path, count: int) -> list[tuple[Path, LogFiles]]:
    jobs = []
    for n in range(count):
        folder = root / f"job{n}"
        folder.mkdir()
        (folder / "started").write_text(f"node{n} 0\n")
        (folder / "stdout").write_text(f"line of job {n}\n")
        jobs.append((folder, LogFiles(folder, lambda *args: None)))
    return jobs


async def test_jobs_looking_at_once_share_one_hop_and_each_sees_its_own_folder(
    tmp_path: Path,
) -> None:
    jobs = _job_folders(tmp_path, 50)
    looks = FolderLooks()
    seen: dict[int, JobFiles] = {}

    async def follow(n: int) -> None:
        seen[n] = await looks.look(*jobs[n])

    async with anyio.create_task_group() as tg:
        for n in range(len(jobs)):
            tg.start_soon(follow, n)

    assert looks.hops == 1
    for n in range(len(jobs)):
        assert seen[n] == (f"node{n} 0\n", [("stdout", f"line of job {n}\n".encode())], False)


async def test_a_follower_cancelled_while_gathering_leaves_the_others_their_look(
    tmp_path: Path,
) -> None:
    (first, first_logs), (second, second_logs) = _job_folders(tmp_path, 2)
    looks = FolderLooks(gather_s=0.5)
    got: list[JobFiles] = []

    async def second_follower() -> None:
        got.append(await looks.look(second, second_logs))

    async with anyio.create_task_group() as tg:
        with anyio.move_on_after(0.1):  # the first asked first: it gathers, and is cancelled
            tg.start_soon(second_follower)
            await looks.look(first, first_logs)
    assert got == [("node1 0\n", [("stdout", b"line of job 1\n")], False)]
    assert looks.hops == 1, "the second follower looked for itself, once"


def test_a_log_that_did_not_grow_is_not_read_again(tmp_path: Path) -> None:
    (tmp_path / "stdout").write_text("one\n")
    logs = LogFiles(tmp_path, lambda *args: None)
    assert look_at_job_files(tmp_path, logs).chunks == [("stdout", b"one\n")]
    # The listing says how big each file is: one that has not grown is not opened (a look at
    # a quiet job costs one listing); with no listing given, fetch opens and finds nothing new.
    assert logs.fetch({"stdout": 4}) == []
    with (tmp_path / "stdout").open("a") as handle:
        handle.write("two\n")
    assert logs.fetch({"stdout": 4}) == [], "the listing said it had not grown"
    assert look_at_job_files(tmp_path, logs).chunks == [("stdout", b"two\n")]
