"""Group commits: many entries published with one durability barrier, and nothing renamed into
``entries/`` before everything in it is durable."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from kliko_async.cache import durable, groupcommit
from kliko_async.cache.durable import Barrier, remove_small_tree
from kliko_async.cache.entry import Manifest, Staging
from kliko_async.cache.groupcommit import COMMIT_HERE_S, GroupCommit
from kliko_async.cache.key import KeyIngredients, cache_key
from kliko_async.cache.sealing import SMALL_FILES
from kliko_async.cache.store import Cache

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def ingredients(n: int) -> KeyIngredients:
    return KeyIngredients(
        image_id="sha256:" + "1" * 64,
        command=("/kliko",),
        io="split",
        parameters={"n": n},
        file_hashes={},
        inputs={},
        input_layout="whole",
    )


def key_of(n: int) -> str:
    return cache_key(ingredients(n))


def manifest_for(key: str) -> Manifest:
    return Manifest(
        key=key,
        step="image",
        image="kliko/wsclean:1.0",
        ingredients=ingredients(0),
        run_id="run-1",
        started_at=NOW,
        finished_at=NOW,
        duration_s=3.0,
        exit_code=0,
    )


def stage_files(cache: Cache, key: str, files: dict[str, bytes]) -> Staging:
    staging = cache.stage(key)
    for rel, data in files.items():
        path = staging.output_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    staging.log_path.write_bytes(b"ok\n")
    (staging.path / "scratch").mkdir()
    (staging.path / "scratch" / "parameters.json").write_text("{}")
    return staging


class DiskWatch:
    """Records what each barrier made durable, and checks every rename against it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cache: Cache) -> None:
        self.durable: set[str] = set()
        self.barriers = 0
        self.published: list[str] = []
        entries = str(cache.root / "entries")
        wait, rename = Barrier.wait, os.rename

        def watched_wait(barrier: Barrier) -> None:
            paths = list(barrier.paths)
            wait(barrier)
            if paths:
                self.barriers += 1
                self.durable.update(paths)

        def watched_rename(source: str | Path, target: str | Path) -> None:
            if str(target).startswith(entries):
                for folder, _dirs, files in os.walk(source):
                    for name in [*files, "."]:
                        path = os.path.normpath(os.path.join(folder, name))
                        assert path in self.durable, f"{path} renamed into place before durable"
                rename(source, target)
                self.published.append(str(target))
                return
            rename(source, target)

        monkeypatch.setattr(Barrier, "wait", watched_wait)
        monkeypatch.setattr(os, "rename", watched_rename)


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    made = Cache(tmp_path / "cache")
    made.ensure_writable()
    return made


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-each"])
@pytest.mark.parametrize("sealed_where", ["thread", "loop"])
async def test_a_group_is_durable_before_anything_of_it_is_renamed_into_place(
    cache: Cache, monkeypatch: pytest.MonkeyPatch, syncfs: bool, sealed_where: str
) -> None:
    """Sealed in the worker thread (a scratch folder to remove first), or small and sealed in
    the event loop before its group: either way durable at the group's barrier."""
    if not syncfs:
        monkeypatch.setattr(durable, "_syncfs", lambda root: False)
    watch = DiskWatch(monkeypatch, cache)
    commits = GroupCommit(cache)
    keys = [key_of(n) for n in range(20)]

    async def publish(key: str) -> None:
        staging = stage_files(cache, key, {"a.txt": key.encode(), "sub/b.txt": b"b"})
        scratch = staging.path / "scratch"
        if sealed_where == "loop":
            remove_small_tree(scratch)
        await commits.publish(
            staging, manifest_for(key), scratch=scratch if sealed_where == "thread" else None
        )

    async with anyio.create_task_group() as group:
        for key in keys:
            group.start_soon(publish, key)
    await commits.close()

    assert len(watch.published) == 20
    assert 1 <= watch.barriers <= 3, "one barrier per group (and one for the last names)"
    for key in keys:
        entry = cache.lookup(key)
        assert entry is not None and (entry.output_dir / "a.txt").read_bytes() == key.encode()
        assert str(entry.path.parent) in watch.durable, "the entry's name is made durable too"


async def test_a_failing_barrier_publishes_nothing_of_its_group(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(barrier: Barrier) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Barrier, "wait", broken)
    staging = stage_files(cache, key_of(1), {"a.txt": b"a"})
    with pytest.raises(Exception, match="making it durable failed"):
        await GroupCommit(cache).publish(staging, manifest_for(key_of(1)))
    assert cache.lookup(key_of(1)) is None
    assert staging.path.exists(), "left to the caller, who keeps the step's log from it"


async def test_a_waiter_cancelled_before_its_group_leaves_its_staging_folder_alone(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = GroupCommit(cache)
    release = anyio.Event()
    busy = anyio.Event()
    publish_many = cache.publish_many

    def slow_publish_many(staged):  # type: ignore[no-untyped-def]
        anyio.from_thread.run_sync(busy.set)
        anyio.from_thread.run(release.wait)
        return publish_many(staged)

    monkeypatch.setattr(cache, "publish_many", slow_publish_many)
    first = stage_files(cache, key_of(1), {"a.txt": b"a"})
    second = stage_files(cache, key_of(2), {"b.txt": b"b"})
    async with anyio.create_task_group() as group:
        group.start_soon(commits.publish, first, manifest_for(key_of(1)))
        await busy.wait()  # the first group is being committed; the second one waits
        with anyio.move_on_after(0) as scope:
            scope.cancel()
            await commits.publish(second, manifest_for(key_of(2)))
        release.set()
    assert cache.lookup(key_of(1)) is not None
    assert cache.lookup(key_of(2)) is None
    assert (second.output_dir / "b.txt").read_bytes() == b"b", "left to its caller, untouched"


def test_publish_alone_makes_its_name_durable(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = DiskWatch(monkeypatch, cache)
    staging = stage_files(cache, key_of(3), {"a.txt": b"a"})
    entry = cache.publish(staging, manifest_for(key_of(3)))
    assert str(entry.path.parent) in watch.durable


class FakeClock:
    """The group commit's clock (``time.perf_counter``), standing still unless moved: how long
    a commit took is then what the test says, not what a busy machine or its disk made it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0.0
        monkeypatch.setattr(groupcommit.time, "perf_counter", lambda: self.now)


async def test_fast_commits_move_into_the_loop_and_a_slow_one_sends_the_rest_to_the_thread(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread round trip costs more than a commit on a fast file system (tmpfs): after three
    fast commits in the thread, commits run in the loop; the first slow one there (a disk's
    barrier) sends every later one back to the thread, for good."""
    loop_thread = threading.get_ident()
    where: list[str] = []
    slow = {6}  # the 7th commit takes longer than COMMIT_HERE_S
    publish_many = cache.publish_many
    clock = FakeClock(monkeypatch)  # a commit takes no time, but the slow one

    def watched(staged):  # type: ignore[no-untyped-def]
        where.append("loop" if threading.get_ident() == loop_thread else "thread")
        if len(where) - 1 in slow:
            clock.now += COMMIT_HERE_S * 3
        return publish_many(staged)

    monkeypatch.setattr(cache, "publish_many", watched)
    commits = GroupCommit(cache)
    for n in range(10):
        staging = stage_files(cache, key_of(n), {"a.txt": b"a"})
        remove_small_tree(staging.path / "scratch")
        await commits.publish(staging, manifest_for(key_of(n)))
    await commits.close()
    assert where == ["thread"] * 3 + ["loop"] * 4 + ["thread"] * 3
    assert all(cache.lookup(key_of(n)) is not None for n in range(10))


@pytest.mark.parametrize("slow_work", ["a scratch folder to remove", "a big output to seal"])
async def test_a_group_with_slow_work_left_is_committed_in_the_thread(
    cache: Cache, monkeypatch: pytest.MonkeyPatch, slow_work: str
) -> None:
    """Removing a scratch folder (copies of file parameters, a Slurm job's files) or sealing and
    hashing a big output (not sealed in the loop) may take seconds: never in the loop, however
    fast the commits before were."""
    loop_thread = threading.get_ident()
    where: list[str] = []
    publish_many = cache.publish_many
    FakeClock(monkeypatch)  # every commit is fast, whatever the disk under the test

    def watched(staged):  # type: ignore[no-untyped-def]
        where.append("loop" if threading.get_ident() == loop_thread else "thread")
        return publish_many(staged)

    monkeypatch.setattr(cache, "publish_many", watched)
    commits = GroupCommit(cache)
    for n in range(5):
        last = n == 4
        files = {"a.txt": b"a"}
        if last and slow_work == "a big output to seal":
            files = {f"f{i}.txt": b"x" for i in range(SMALL_FILES + 1)}
        staging = stage_files(cache, key_of(n), files)
        scratch = staging.path / "scratch"
        keep_scratch = last and slow_work == "a scratch folder to remove"
        if not keep_scratch:
            remove_small_tree(scratch)
        await commits.publish(
            staging, manifest_for(key_of(n)), scratch=scratch if keep_scratch else None
        )
    assert where == ["thread"] * 3 + ["loop", "thread"]
    assert cache.lookup(key_of(4)) is not None
