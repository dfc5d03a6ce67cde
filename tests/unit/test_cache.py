"""Tests of the content-addressed step cache: keys, publishing, locking, gc and verify."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kliko_async.cache import key as key_module
from kliko_async.cache import store as store_module
from kliko_async.cache.entry import CacheEntry, Manifest, Staging
from kliko_async.cache.hashing import sha256_file
from kliko_async.cache.holds import RunHold
from kliko_async.cache.key import CACHE_FORMAT_VERSION, KeyIngredients, cache_key
from kliko_async.cache.processes import host_name
from kliko_async.cache.store import Cache, default_cache_dir
from kliko_async.cache.upkeep import (
    VerifyProblem,
    clean_stale_staging,
    gc,
    remove_entries_with_problems,
    verify,
)
from kliko_async.errors import CacheError, UnpublishableOutput
from kliko_async.model.quantities import parse_age, parse_size

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def ingredients(**changes: Any) -> KeyIngredients:
    fields: dict[str, Any] = {
        "image_id": "sha256:" + "1" * 64,
        "command": ("/kliko",),
        "io": "split",
        "parameters": {"threshold": 5, "name": "m31", "flags": [1, 2]},
        "file_hashes": {"model": "a" * 64},
        "inputs": {"calibrate": "b" * 64, "flag": "c" * 64},
        "input_layout": "folders",
    }
    fields.update(changes)
    return KeyIngredients(**fields)


def manifest_for(key: str, *, step: str = "image", finished_at: datetime = NOW) -> Manifest:
    return Manifest(
        key=key,
        step=step,
        image="kliko/wsclean:1.0",
        ingredients=ingredients(),
        run_id="run-1",
        started_at=finished_at - timedelta(seconds=3),
        finished_at=finished_at,
        duration_s=3.0,
        exit_code=0,
    )


def key_of(n: int) -> str:
    return cache_key(ingredients(parameters={"n": n}))


def stage_files(cache: Cache, key: str, files: dict[str, bytes], log: bytes = b"ok\n") -> Staging:
    staging = cache.stage(key)
    for rel, data in files.items():
        path = staging.output_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    staging.log_path.write_bytes(log)
    return staging


def publish_files(
    cache: Cache, key: str, files: dict[str, bytes], *, finished_at: datetime = NOW
) -> CacheEntry:
    staging = stage_files(cache, key, files)
    return cache.publish(staging, manifest_for(key, finished_at=finished_at))


def make_writable(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)


def tmp_children(cache: Cache) -> list[str]:
    tmp = cache.root / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def open_fd_count() -> int | None:
    fd_dir = Path("/proc/self/fd")
    return len(os.listdir(fd_dir)) if fd_dir.is_dir() else None


def dead_pid() -> int:
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(process.stdout)


# -- keys ----------------------------------------------------------------------------------------


def test_key_is_a_sha256_hex_digest_and_stable() -> None:
    key = cache_key(ingredients())
    assert len(key) == 64
    assert set(key) <= set("0123456789abcdef")
    assert cache_key(ingredients()) == key


CHANGES: dict[str, dict[str, Any]] = {
    "image id": {"image_id": "sha256:" + "2" * 64},
    "io": {"io": "join"},
    "parameter value": {"parameters": {"threshold": 6, "name": "m31", "flags": [1, 2]}},
    "parameter type": {"parameters": {"threshold": 5.0, "name": "m31", "flags": [1, 2]}},
    "parameter list order": {"parameters": {"threshold": 5, "name": "m31", "flags": [2, 1]}},
    "parameter added": {"parameters": {"threshold": 5, "name": "m31", "flags": [1, 2], "x": None}},
    "parameter removed": {"parameters": {"threshold": 5, "name": "m31"}},
    "parameter renamed": {"parameters": {"limit": 5, "name": "m31", "flags": [1, 2]}},
    "file hash": {"file_hashes": {"model": "d" * 64}},
    "file hash name": {"file_hashes": {"sky": "a" * 64}},
    "input key": {"inputs": {"calibrate": "e" * 64, "flag": "c" * 64}},
    "input name": {"inputs": {"calibrated": "b" * 64, "flag": "c" * 64}},
    "input names swapped": {"inputs": {"calibrate": "c" * 64, "flag": "b" * 64}},
    "input dropped": {"inputs": {"calibrate": "b" * 64}},
    "input layout": {"input_layout": "whole"},
    "env": {"env": {"OMP_NUM_THREADS": "4"}},
    "command": {"command": ["wsclean", "-size", "1024"]},
    "empty command": {"command": []},
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_every_ingredient_changes_the_key(change: dict[str, Any]) -> None:
    assert cache_key(ingredients(**change)) != cache_key(ingredients())


def test_all_changed_keys_differ_from_each_other() -> None:
    keys = {cache_key(ingredients(**change)) for change in CHANGES.values()}
    assert len(keys) == len(CHANGES)


def test_env_value_and_command_argument_change_the_key() -> None:
    base_env = cache_key(ingredients(env={"A": "1"}))
    assert cache_key(ingredients(env={"A": "2"})) != base_env
    base_cmd = cache_key(ingredients(command=["run", "a"]))
    assert cache_key(ingredients(command=["run", "b"])) != base_cmd


def test_format_version_changes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache_key(ingredients())
    monkeypatch.setattr(key_module, "CACHE_FORMAT_VERSION", CACHE_FORMAT_VERSION + 1)
    assert cache_key(ingredients()) != before


def test_order_of_inputs_parameters_and_env_does_not_matter() -> None:
    one = ingredients(
        inputs={"a": "1" * 64, "b": "2" * 64},
        parameters={"x": 1, "y": {"p": 1, "q": 2}},
        env={"A": "1", "B": "2"},
    )
    two = ingredients(
        inputs={"b": "2" * 64, "a": "1" * 64},
        parameters={"y": {"q": 2, "p": 1}, "x": 1},
        env={"B": "2", "A": "1"},
    )
    assert cache_key(one) == cache_key(two)


@given(st.dictionaries(st.text(min_size=1), st.text(min_size=64, max_size=64), max_size=6))
def test_any_permutation_of_inputs_keeps_the_key(inputs: dict[str, str]) -> None:
    reordered = dict(reversed(list(inputs.items())))
    assert cache_key(ingredients(inputs=reordered)) == cache_key(ingredients(inputs=inputs))


def test_key_ingredients_are_frozen_and_strict() -> None:
    with pytest.raises(ValueError, match="frozen"):
        ingredients().image_id = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="Extra inputs"):
        ingredients(surprise=1)
    with pytest.raises(ValueError, match="split"):
        ingredients(io="both")


# -- folders -------------------------------------------------------------------------------------


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "kliko-async"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "kliko-async"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "kliko-async"


def test_constructing_a_cache_does_not_touch_disk(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "nowhere")
    assert cache.root == tmp_path / "nowhere"
    assert cache.lookup(key_of(1)) is None
    assert list(cache.entries()) == []
    assert verify(cache) == []
    assert not (tmp_path / "nowhere").exists()


def test_ensure_writable_creates_the_folders(cache: Cache) -> None:
    cache.ensure_writable()
    for name in ("entries", "tmp", "locks"):
        assert (cache.root / name).is_dir()
        assert list((cache.root / name).iterdir()) == []  # the probe file is gone


def test_ensure_writable_raises_a_cache_error_when_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheError, match="is not writable") as caught:
        Cache(blocker).ensure_writable()
    assert str(blocker) in str(caught.value)
    assert caught.value.hint


def test_ensure_writable_notices_a_read_only_folder(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    entries = root / "entries"
    entries.mkdir(parents=True)
    if os.geteuid() == 0:  # root ignores permission bits, but not a read-only mount
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", entries], check=True)
    else:
        entries.chmod(0o555)
    try:
        with pytest.raises(CacheError, match="is not writable"):
            Cache(root).ensure_writable()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", entries], check=True)
        else:
            entries.chmod(0o755)


# -- stage, publish, lookup ----------------------------------------------------------------------


def test_stage_publish_lookup_round_trip(cache: Cache) -> None:
    key = key_of(1)
    staging = stage_files(cache, key, {"a.txt": b"alpha", "sub/b.bin": b"\x00\x01"}, log=b"done\n")
    assert staging.path.parent == cache.root / "tmp"
    assert staging.path.name.startswith(f"{key}.{os.getpid()}.")
    manifest = manifest_for(key)

    published = cache.publish(staging, manifest)

    assert not staging.path.exists()
    assert published.path == cache.root / "entries" / key[:2] / key
    found = cache.lookup(key)
    assert found == published
    assert found.manifest.outputs == {
        "a.txt": sha256_file(found.output_dir / "a.txt"),
        "sub/b.bin": sha256_file(found.output_dir / "sub" / "b.bin"),
    }
    assert found.manifest.model_dump(exclude={"outputs", "log_sha256"}) == manifest.model_dump(
        exclude={"outputs", "log_sha256"}
    )
    assert found.manifest.log_sha256 == sha256_file(found.log_path)
    assert (found.output_dir / "a.txt").read_bytes() == b"alpha"
    assert found.log_path.read_bytes() == b"done\n"
    on_disk = Manifest.model_validate_json((found.path / "manifest.json").read_text())
    assert on_disk == found.manifest
    assert found.size_bytes() >= len(b"alpha") + 2 + len(b"done\n")
    assert list(cache.entries()) == [found]
    assert tmp_children(cache) == []


def test_published_entry_is_writable_by_its_owner_only(cache: Cache) -> None:
    """0644/0755: Kliko's images copy their input (with its modes) and write into the copy.
    Containers see an entry read-only or as a copy; ``cache verify`` notices a change."""
    key = key_of(1)
    staging = stage_files(cache, key, {"a.txt": b"a", "deep/er/b.txt": b"b", "run.sh": b"#!"})
    (staging.output_dir / "run.sh").chmod(0o755)
    (staging.output_dir / "link").symlink_to("a.txt")
    entry = cache.publish(staging, manifest_for(key))

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.lstat().st_mode)

    assert mode(entry.path) == 0o755
    assert mode(entry.output_dir) == 0o755
    assert mode(entry.output_dir / "deep") == 0o755
    assert mode(entry.output_dir / "deep" / "er") == 0o755
    assert mode(entry.output_dir / "a.txt") == 0o644
    assert mode(entry.output_dir / "deep" / "er" / "b.txt") == 0o644
    assert mode(entry.output_dir / "run.sh") == 0o755  # executables stay executable
    assert mode(entry.path / "manifest.json") == 0o644
    assert mode(entry.log_path) == 0o644
    assert (entry.output_dir / "link").is_symlink()
    assert entry.manifest.outputs["link"] == "symlink:a.txt"
    (entry.output_dir / "a.txt").write_text("changed")  # as a tool writing into its input would
    assert [(p.path, p.problem) for p in verify(cache)] == [("output/a.txt", "content changed")]


@pytest.mark.parametrize("kind", ["named pipe", "socket"])
def test_an_output_with_a_pipe_or_socket_is_never_published(
    cache: Cache, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = key_of(1)
    staging = stage_files(cache, key, {"a.txt": b"a"}, log=b"the step's log\n")
    special = staging.output_dir / "sub" / "special"
    special.parent.mkdir()
    if kind == "named pipe":
        os.mkfifo(special)
    else:
        monkeypatch.chdir(special.parent)  # a socket's path must be short
        server = socket.socket(socket.AF_UNIX)
        server.bind(special.name)
        server.close()

    with pytest.raises(UnpublishableOutput) as raised:
        cache.publish(staging, manifest_for(key))

    assert f"a {kind} (output/sub/special)" in str(raised.value)
    assert "nothing of the step was published" in str(raised.value)
    assert cache.lookup(key) is None and list(cache.entry_dirs()) == []
    assert staging.log_path.read_bytes() == b"the step's log\n", "the caller keeps the log"
    cache.discard(staging)
    assert tmp_children(cache) == []


def test_file_names_that_are_not_utf8_are_kept_exactly(cache: Cache) -> None:
    """Names are bytes on Linux: the manifest must hold them losslessly, or verify lies."""
    key = key_of(1)
    staging = stage_files(cache, key, {"plain.txt": b"p"})
    latin1 = os.fsdecode(b"caf\xe9.txt")
    (staging.output_dir / latin1).write_bytes(b"coffee")
    (staging.output_dir / "caf\\xe9.txt").write_bytes(b"a name that reads as the other one")

    entry = cache.publish(staging, manifest_for(key))

    assert verify(cache) == []
    found = cache.lookup(key)
    assert found is not None and found.manifest == entry.manifest
    assert sha256_file(found.output_dir / latin1) == found.manifest.outputs[latin1]
    assert len(found.manifest.outputs) == 3
    (found.output_dir / latin1).chmod(0o644)
    (found.output_dir / latin1).write_bytes(b"tea")
    assert [str(p) for p in verify(cache)] == [f"{key}: output/caf\\xe9.txt: content changed"]


def test_unpublished_staging_is_never_found(cache: Cache) -> None:
    key = key_of(1)
    staging = stage_files(cache, key, {"a.txt": b"a"})
    assert staging.output_dir.is_dir()
    assert cache.lookup(key) is None
    assert list(cache.entries()) == []


def test_discard_removes_staging_even_when_read_only(cache: Cache) -> None:
    key = key_of(1)
    staging = stage_files(cache, key, {"sub/a.txt": b"a"})
    (staging.output_dir / "sub" / "a.txt").chmod(0o444)
    (staging.output_dir / "sub").chmod(0o555)
    staging.output_dir.chmod(0o555)

    cache.discard(staging)

    assert not staging.path.exists()
    assert cache.lookup(key) is None
    cache.discard(staging)  # discarding twice is harmless
    assert tmp_children(cache) == []


def test_discard_refuses_folders_outside_tmp(cache: Cache, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    with pytest.raises(CacheError, match="not a staging folder"):
        cache.discard(Staging(key=key_of(1), path=precious))
    assert precious.is_dir()


def test_stage_gives_a_fresh_folder_each_time(cache: Cache) -> None:
    one = cache.stage(key_of(1))
    two = cache.stage(key_of(1))
    assert one.path != two.path
    assert one.output_dir.is_dir()
    assert two.output_dir.is_dir()
    assert list(one.output_dir.iterdir()) == []


@pytest.mark.parametrize("bad", ["", "a", "../etc", "ab/cd", "a.b", "x" * 200])
def test_malformed_keys_are_rejected(cache: Cache, bad: str) -> None:
    assert cache.lookup(bad) is None
    with pytest.raises(CacheError, match="not a cache key"):
        cache.stage(bad)
    with pytest.raises(CacheError, match="not a cache key"):
        cache.remove(bad)


def test_publish_failure_publishes_nothing(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    key = key_of(1)
    staging = stage_files(cache, key, {"a.txt": b"a"})

    def full_disk(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(os, "rename", full_disk)
    with pytest.raises(CacheError) as caught:
        cache.publish(staging, manifest_for(key, step="image"))
    monkeypatch.undo()

    message = str(caught.value)
    assert "step 'image'" in message
    assert "moving the entry into place failed" in message
    assert os.strerror(errno.ENOSPC) in message
    assert "gc" in message  # the hint says how to free space
    assert not (cache.root / "entries" / key[:2] / key).exists()
    assert cache.lookup(key) is None
    # The staging folder is left to the caller, who keeps the step's log from it.
    assert staging.path.exists()
    cache.discard(staging)
    assert tmp_children(cache) == []


def test_publish_failure_while_writing_the_manifest_publishes_nothing(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = key_of(1)
    staging = stage_files(cache, key, {"a.txt": b"a"})

    def disk_full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)  # only the manifest is written while publishing
    with pytest.raises(CacheError, match=r"writing manifest\.json failed"):
        cache.publish(staging, manifest_for(key, step="calibrate"))
    monkeypatch.undo()

    assert staging.path.exists(), "left to the caller, who keeps the step's log from it"
    cache.discard(staging)
    assert cache.lookup(key) is None
    assert list(cache.entries()) == []


def test_publish_rejects_a_manifest_for_another_key(cache: Cache) -> None:
    staging = stage_files(cache, key_of(1), {"a.txt": b"a"})
    with pytest.raises(CacheError, match="does not match"):
        cache.publish(staging, manifest_for(key_of(2)))
    assert cache.lookup(key_of(1)) is None
    assert cache.lookup(key_of(2)) is None
    assert not staging.path.exists()


def test_publish_returns_the_existing_entry(cache: Cache) -> None:
    key = key_of(1)
    first = publish_files(cache, key, {"a.txt": b"first"})
    late = stage_files(cache, key, {"a.txt": b"second"})

    second = cache.publish(late, manifest_for(key))

    assert second == first
    assert (second.output_dir / "a.txt").read_bytes() == b"first"
    assert not late.path.exists()
    assert tmp_children(cache) == []


def test_publish_returns_the_winner_of_a_race(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = key_of(1)
    mine = stage_files(cache, key, {"a.txt": b"mine"})
    theirs = stage_files(cache, key, {"a.txt": b"theirs"})
    real_seal = store_module.seal_staging_files

    def seal_then_lose_the_race(staging: Staging, manifest: Manifest, barrier: Any) -> Manifest:
        sealed = real_seal(staging, manifest, barrier)
        if staging == mine:  # another process publishes between our sealing and our rename
            cache.publish(theirs, manifest_for(key))
        return sealed

    monkeypatch.setattr(store_module, "seal_staging_files", seal_then_lose_the_race)
    entry = cache.publish(mine, manifest_for(key))

    assert (entry.output_dir / "a.txt").read_bytes() == b"theirs"
    assert not mine.path.exists()
    assert not theirs.path.exists()
    assert cache.lookup(key) == entry


def test_publish_replaces_a_half_written_folder(cache: Cache) -> None:
    key = key_of(1)
    junk = cache.root / "entries" / key[:2] / key / "output"
    junk.mkdir(parents=True)
    (junk / "partial.txt").write_text("half")

    entry = publish_files(cache, key, {"a.txt": b"whole"})

    assert cache.lookup(key) == entry
    assert sorted(p.name for p in entry.output_dir.iterdir()) == ["a.txt"]


def test_half_written_or_foreign_entry_folders_are_not_found(cache: Cache) -> None:
    no_manifest, bad_manifest, wrong_key, no_output = key_of(1), key_of(2), key_of(3), key_of(4)
    for key in (no_manifest, bad_manifest, wrong_key, no_output):
        (cache.root / "entries" / key[:2] / key / "output").mkdir(parents=True)
    (cache.root / "entries" / bad_manifest[:2] / bad_manifest / "manifest.json").write_text("{")
    (cache.root / "entries" / wrong_key[:2] / wrong_key / "manifest.json").write_text(
        manifest_for(key_of(9)).model_dump_json()
    )
    no_output_dir = cache.root / "entries" / no_output[:2] / no_output
    (no_output_dir / "manifest.json").write_text(manifest_for(no_output).model_dump_json())
    (no_output_dir / "output").rmdir()

    for key in (no_manifest, bad_manifest, wrong_key, no_output):
        assert cache.lookup(key) is None
    assert list(cache.entries()) == []


def test_old_format_entries_are_not_found(cache: Cache) -> None:
    key = key_of(1)
    entry = publish_files(cache, key, {"a.txt": b"a"})
    manifest_path = entry.path / "manifest.json"
    make_writable(entry.path)
    make_writable(manifest_path)
    old = entry.manifest.model_copy(update={"format_version": CACHE_FORMAT_VERSION - 1})
    manifest_path.write_text(old.model_dump_json())
    assert cache.lookup(key) is None


def test_lookup_reads_the_manifest_not_the_outputs(cache: Cache) -> None:
    """A lookup costs one manifest read whatever the entry holds (its speed is measured by
    benchmarks/cached.py): an output changed behind the cache's back is found by verify."""
    key = key_of(1)
    entry = publish_files(cache, key, {f"f{i:03}.txt": b"x" * 100 for i in range(100)})
    changed = entry.path / "output" / "f042.txt"
    make_writable(changed)
    changed.write_bytes(b"y" * 100)

    assert cache.lookup(key) is not None
    assert [problem.key for problem in verify(cache)] == [key]


# -- stale staging -------------------------------------------------------------------------------


def test_staging_of_a_dead_process_is_no_entry_and_is_cleaned(cache: Cache) -> None:
    key = key_of(1)
    stale = cache.root / "tmp" / f"{key}.{dead_pid()}.x"
    (stale / "output" / "sub").mkdir(parents=True)
    (stale / "output" / "sub" / "a.txt").write_text("left behind")
    (stale / "manifest.json").write_text(manifest_for(key).model_dump_json())
    (stale / "output" / "sub").chmod(0o555)
    live = cache.stage(key)
    odd = cache.root / "tmp" / "not-a-staging-name"
    odd.mkdir()

    assert cache.lookup(key) is None
    assert list(cache.entries()) == []
    assert clean_stale_staging(cache) == 1

    assert not stale.exists()
    assert live.path.is_dir()  # our own process is alive
    assert odd.is_dir()
    assert clean_stale_staging(cache) == 0


def test_staging_names_carry_the_host_and_only_this_hosts_leftovers_are_cleaned(
    cache: Cache,
) -> None:
    """On a cache shared between hosts, a pid that is dead here may be alive on its own host."""
    live = cache.stage(key_of(1))
    assert live.path.name.endswith(f".{host_name()}")
    pid = dead_pid()
    mine = cache.root / "tmp" / f"{key_of(2)}.{pid}.abc.{host_name()}"
    other_host = cache.root / "tmp" / f"{key_of(3)}.{pid}.abc.other-node.cluster.example"
    earlier_version = cache.root / "tmp" / f"{key_of(4)}.{pid}.abc"
    for folder in (mine, other_host, earlier_version):
        (folder / "output").mkdir(parents=True)

    assert clean_stale_staging(cache) == 2

    assert not mine.exists() and not earlier_version.exists()
    assert other_host.is_dir(), "another host's folder is never deleted from here"
    assert live.path.is_dir()


def test_clean_stale_staging_without_tmp_folder(cache: Cache) -> None:
    assert clean_stale_staging(cache) == 0
    assert not cache.root.exists()


# -- locking -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lock_excludes_a_second_task(cache: Cache) -> None:
    key = key_of(1)
    events: list[str] = []
    first_holds = anyio.Event()

    async def first() -> None:
        async with cache.lock(key, poll=0.01):
            events.append("first in")
            first_holds.set()
            await anyio.sleep(0.2)
            events.append("first out")

    async def second() -> None:
        await first_holds.wait()
        async with cache.lock(key, poll=0.01):
            events.append("second in")
        events.append("second out")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(first)
            group.start_soon(second)

    assert events == ["first in", "first out", "second in", "second out"]


@pytest.mark.anyio
async def test_locks_of_different_keys_do_not_interfere(cache: Cache) -> None:
    with anyio.fail_after(2):
        async with cache.lock(key_of(1)), cache.lock(key_of(2)):
            held = True
    assert held
    assert (cache.root / "locks" / f"{key_of(1)}.lock").exists()


@pytest.mark.anyio
async def test_waiting_for_a_lock_is_cancellable(cache: Cache) -> None:
    key = key_of(1)
    fds_before = open_fd_count()
    acquired = False
    async with cache.lock(key):
        with anyio.move_on_after(0.2) as scope:
            async with cache.lock(key, poll=0.01):
                acquired = True
    assert scope.cancelled_caught
    assert not acquired
    if fds_before is not None:
        assert open_fd_count() == fds_before  # nothing leaked
    with anyio.fail_after(2):
        async with cache.lock(key):
            acquired = True
    assert acquired


@pytest.mark.anyio
@pytest.mark.parametrize(("held_s", "told"), [(0.0, 0), (0.05, 0), (0.4, 1)])
async def test_a_lock_tells_once_that_it_is_waited_for_past_its_patience(
    cache: Cache, held_s: float, told: int
) -> None:
    key = key_of(1)
    waits: list[float] = []
    first_holds = anyio.Event()

    async def other() -> None:
        async with cache.lock(key):
            first_holds.set()
            await anyio.sleep(held_s)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(other)
            await first_holds.wait()
            on_wait = lambda: waits.append(anyio.current_time())  # noqa: E731
            async with cache.lock(key, poll=0.01, on_wait=on_wait, patience=0.2):
                pass
    assert len(waits) == told


@pytest.mark.anyio
async def test_lock_is_released_when_the_body_raises(cache: Cache) -> None:
    key = key_of(1)
    with pytest.raises(RuntimeError, match="boom"):
        async with cache.lock(key):
            raise RuntimeError("boom")
    with anyio.fail_after(2):
        async with cache.lock(key):
            reacquired = True
    assert reacquired


HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""

TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(3)
"""


@pytest.fixture
def other_process_lock() -> Iterator[Callable[[Path], Callable[[], None]]]:
    """Take a flock in a child process; returns a function that makes the child release it."""
    children: list[subprocess.Popen[str]] = []

    def hold(path: Path) -> Callable[[], None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        child = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "locked"

        def release() -> None:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=10)

        return release

    yield hold
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.anyio
async def test_lock_waits_for_another_process(
    cache: Cache, other_process_lock: Callable[[Path], Callable[[], None]]
) -> None:
    key = key_of(1)
    release = other_process_lock(cache.root / "locks" / f"{key}.lock")
    acquired = False
    with anyio.move_on_after(0.3):
        async with cache.lock(key, poll=0.01):
            acquired = True
    assert not acquired

    release()
    with anyio.fail_after(5):
        async with cache.lock(key, poll=0.01):
            acquired = True
    assert acquired


@pytest.mark.anyio
async def test_lock_excludes_another_process(cache: Cache) -> None:
    key = key_of(1)
    path = cache.root / "locks" / f"{key}.lock"
    async with cache.lock(key):
        held = await anyio.run_process([sys.executable, "-c", TRY_LOCK, str(path)], check=False)
    free = await anyio.run_process([sys.executable, "-c", TRY_LOCK, str(path)], check=False)
    assert held.returncode == 3
    assert free.returncode == 0


# -- removal and gc ------------------------------------------------------------------------------


def test_remove(cache: Cache) -> None:
    key = key_of(1)
    publish_files(cache, key, {"a.txt": b"a"})
    assert cache.remove(key) is True
    assert cache.lookup(key) is None
    assert not (cache.root / "entries" / key[:2] / key).exists()
    assert tmp_children(cache) == []
    assert cache.remove(key) is False


def test_gc_by_age(cache: Cache) -> None:
    old = publish_files(cache, key_of(1), {"a": b"1"}, finished_at=NOW - timedelta(days=10))
    middle = publish_files(cache, key_of(2), {"a": b"2"}, finished_at=NOW - timedelta(days=2))
    young = publish_files(cache, key_of(3), {"a": b"3"}, finished_at=NOW - timedelta(hours=1))

    removed = gc(cache, older_than=timedelta(days=3), now=NOW)

    assert removed == [old]
    assert cache.lookup(old.key) is None
    assert cache.lookup(middle.key) == middle
    assert cache.lookup(young.key) == young
    assert gc(cache, older_than=timedelta(days=3), now=NOW) == []


def test_gc_by_size_removes_oldest_first(cache: Cache) -> None:
    entries = [
        publish_files(cache, key_of(n), {"data": b"x" * 1000}, finished_at=NOW - timedelta(days=n))
        for n in range(4)
    ]  # entries[3] is the oldest
    sizes = {entry.key: entry.size_bytes() for entry in entries}
    total = cache.total_size()
    assert total == sum(sizes.values())
    limit = total - sizes[entries[3].key] - 1  # the oldest alone is not quite enough

    removed = gc(cache, max_size=limit, now=NOW)

    assert removed == [entries[3], entries[2]]
    assert cache.total_size() <= limit
    assert {entry.key for entry in cache.entries()} == {entries[0].key, entries[1].key}
    assert gc(cache, max_size=0, now=NOW) == [entries[1], entries[0]]
    assert cache.total_size() == 0


@pytest.mark.anyio
async def test_gc_keeps_entries_that_a_run_is_reading_or_computing(cache: Cache) -> None:
    read = publish_files(cache, key_of(1), {"a": b"1"}, finished_at=NOW - timedelta(days=9))
    computed = publish_files(cache, key_of(2), {"a": b"2"}, finished_at=NOW - timedelta(days=9))
    idle = publish_files(cache, key_of(3), {"a": b"3"}, finished_at=NOW - timedelta(days=9))

    async with cache.lock(read.key, shared=True), cache.lock(computed.key):
        assert gc(cache, older_than=timedelta(days=1), now=NOW) == [idle]
        assert gc(cache, max_size=0, now=NOW) == []
        assert cache.lookup(read.key) == read
        assert cache.lookup(computed.key) == computed

    removed = gc(cache, max_size=0, now=NOW)  # as old as each other: in no promised order
    assert sorted(removed, key=lambda e: e.key) == sorted([read, computed], key=lambda e: e.key)


@pytest.mark.anyio
async def test_gc_removes_old_run_logs_unheld_lock_files_and_empty_shard_folders(
    cache: Cache,
) -> None:
    old = publish_files(cache, key_of(1), {"a": b"1"}, finished_at=NOW - timedelta(days=9))
    young = publish_files(cache, key_of(2), {"a": b"2"}, finished_at=NOW)
    logs = cache.root / "logs"
    for run, age in (("old-run", timedelta(days=9)), ("new-run", timedelta(hours=1))):
        (logs / run).mkdir(parents=True)
        (logs / run / "step.log").write_bytes(b"failed\n")
        moment = (NOW - age).timestamp()
        os.utime(logs / run / "step.log", (moment, moment))
        os.utime(logs / run, (moment, moment))
    for n in (1, 2, 3, 4):
        async with cache.lock(key_of(n)):
            pass
    assert len(list((cache.root / "locks").glob("*.lock"))) == 4

    records = cache.root / "records"  # a 10,000-step run's is a few MB: never removed before
    records.mkdir()
    for run, age in (("old-run", timedelta(days=9)), ("new-run", timedelta(hours=1))):
        (records / f"{run}.json").write_text("{}")
        moment = (NOW - age).timestamp()
        os.utime(records / f"{run}.json", (moment, moment))
    async with cache.lock(key_of(4), shared=True):  # a run reading key 4 right now
        removed = gc(cache, older_than=timedelta(days=3), now=NOW)

        assert removed == [old]
        assert (removed.run_logs, removed.lock_files, removed.shard_folders) == (1, 3, 1)
        assert removed.run_records == 1
        assert sorted(p.name for p in records.iterdir()) == ["new-run.json"]
        assert sorted(p.name for p in logs.iterdir()) == ["new-run"]
        assert [p.name for p in (cache.root / "locks").iterdir()] == [f"{key_of(4)}.lock"]
        assert sorted(p.name for p in (cache.root / "entries").iterdir()) == [young.key[:2]]
    assert cache.lookup(young.key) == young
    assert gc(cache, older_than=timedelta(days=3), now=NOW).lock_files == 1


@pytest.mark.anyio
async def test_a_lock_file_deleted_by_gc_while_a_run_opens_it_is_never_held_twice(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that opened the lock file just before gc deleted it must not lock the orphan."""
    key = key_of(1)
    async with cache.lock(key):
        pass
    locks = cache.locks
    real_open = locks._open
    opened: list[int] = []

    def open_then_gc(k: str) -> int:
        fd = real_open(k)
        if not opened:  # the first open races with gc deleting the file
            assert locks.remove_unheld() == 1
        opened.append(fd)
        return fd

    monkeypatch.setattr(locks, "_open", open_then_gc)

    async with cache.lock(key):
        monkeypatch.setattr(locks, "_open", real_open)
        assert len(opened) == 2, "the holder noticed and locked the file at the path"
        with locks.try_exclusive(key) as free:
            assert not free, "a second holder is refused"


@pytest.mark.anyio
async def test_shared_locks_admit_each_other_but_not_an_exclusive_one(cache: Cache) -> None:
    key = key_of(1)
    async with cache.lock(key, shared=True), cache.lock(key, shared=True):
        with anyio.move_on_after(0.2) as waited:
            async with cache.lock(key):
                pytest.fail("an exclusive lock was granted beside shared ones")
        assert waited.cancelled_caught
    async with cache.lock(key):
        pass  # free again


def test_gc_applies_age_then_size(cache: Cache) -> None:
    old = publish_files(cache, key_of(1), {"a": b"1"}, finished_at=NOW - timedelta(days=30))
    young = publish_files(cache, key_of(2), {"a": b"2"}, finished_at=NOW)
    removed = gc(cache, older_than=timedelta(days=7), max_size=10**9, now=NOW)
    assert removed == [old]
    assert list(cache.entries()) == [young]


def test_gc_tidies_invalid_folders_and_stale_staging(cache: Cache) -> None:
    good = publish_files(cache, key_of(1), {"a": b"1"})
    invalid = cache.root / "entries" / key_of(2)[:2] / key_of(2)
    (invalid / "output").mkdir(parents=True)
    (invalid / "output").chmod(0o555)
    stale = cache.root / "tmp" / f"{key_of(3)}.{dead_pid()}.abc"
    (stale / "output").mkdir(parents=True)
    spec = cache.root / "specs" / "sha256-1111" / "kliko.yml"
    spec.parent.mkdir(parents=True)
    spec.write_text("schema_version: 3\n")

    removed = gc(cache, now=NOW)

    assert removed == []  # nothing valid was removed
    assert not invalid.exists()
    assert not stale.exists()
    assert cache.lookup(good.key) == good
    assert spec.read_text() == "schema_version: 3\n"


def test_gc_takes_naive_times_as_local(cache: Cache) -> None:
    naive_now = datetime(2024, 6, 1, 12, 0)
    entry = publish_files(cache, key_of(1), {"a": b"1"}, finished_at=naive_now - timedelta(days=2))
    assert gc(cache, older_than=timedelta(days=3), now=naive_now) == []
    assert gc(cache, older_than=timedelta(days=1), now=naive_now.astimezone(UTC)) == [entry]


# -- verify --------------------------------------------------------------------------------------


def test_verify_of_a_sound_cache_finds_nothing(cache: Cache) -> None:
    publish_files(cache, key_of(1), {"a.txt": b"a", "sub/b.txt": b"b"})
    assert verify(cache) == []


def test_verify_finds_changed_missing_and_extra_files(cache: Cache) -> None:
    key = key_of(1)
    entry = publish_files(cache, key, {"a.txt": b"a", "b.txt": b"b", "sub/c.txt": b"c"})
    make_writable(entry.output_dir / "a.txt")
    (entry.output_dir / "a.txt").write_bytes(b"tampered")
    make_writable(entry.output_dir / "sub")
    (entry.output_dir / "sub" / "c.txt").unlink()
    make_writable(entry.output_dir)
    (entry.output_dir / "extra.txt").write_bytes(b"new")

    problems = verify(cache)

    assert problems == [
        VerifyProblem(key=key, path="output/a.txt", problem="content changed"),
        VerifyProblem(key=key, path="output/extra.txt", problem="unexpected file"),
        VerifyProblem(key=key, path="output/sub/c.txt", problem="missing"),
    ]
    assert str(problems[0]) == f"{key}: output/a.txt: content changed"


def test_verify_checks_the_saved_log_against_its_recorded_hash(cache: Cache) -> None:
    changed, removed = key_of(1), key_of(2)
    logs = {}
    for key in (changed, removed):
        entry = publish_files(cache, key, {"a.txt": b"a"})
        assert entry.manifest.log_sha256 == sha256_file(entry.log_path)
        make_writable(entry.path)
        make_writable(entry.log_path)
        logs[key] = entry.log_path
    logs[changed].write_bytes(b"ok\nok\n")  # a line saved twice
    logs[removed].unlink()

    assert sorted(verify(cache), key=lambda p: p.key) == sorted(
        [
            VerifyProblem(key=changed, path="log.txt", problem="content changed"),
            VerifyProblem(key=removed, path="log.txt", problem="missing"),
        ],
        key=lambda p: p.key,
    )  # entries are listed by key, whatever the keys' order


def test_verify_reports_unreadable_and_missing_manifests(cache: Cache) -> None:
    missing, broken = key_of(1), key_of(2)
    (cache.root / "entries" / missing[:2] / missing / "output").mkdir(parents=True)
    (cache.root / "entries" / broken[:2] / broken / "output").mkdir(parents=True)
    (cache.root / "entries" / broken[:2] / broken / "manifest.json").write_text("not json")

    problems = {(p.key, p.problem) for p in verify(cache)}

    assert problems == {(missing, "manifest missing"), (broken, "manifest unreadable")}


# -- sizes and ages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("123", 123),
        ("0", 0),
        ("10b", 10),
        ("100k", 100 * 1024),
        ("100K", 100 * 1024),
        ("500M", 500 * 1024**2),
        ("2G", 2 * 1024**3),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("1T", 1024**4),
        ("10MB", 10 * 1000**2),
        ("3kb", 3000),
        (" 7 MiB ", 7 * 1024**2),
        ("0.5k", 512),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "-1G", "1.2.3G", "12 apples", "1e3", "G2", "1 G B"])
def test_parse_size_rejects_nonsense(text: str) -> None:
    with pytest.raises(CacheError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("90m", timedelta(minutes=90)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1d 12h", timedelta(days=1, hours=12)),
        (" 3 days ", timedelta(days=3)),
        ("2H", timedelta(hours=2)),
    ],
)
def test_parse_age(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "3y", "-2d", "2d-", "ten days", "1d,2h"])
def test_parse_age_rejects_nonsense(text: str) -> None:
    with pytest.raises(CacheError, match="is not an age"):
        parse_age(text)


def test_a_copy_of_a_staging_folder_with_another_path_has_that_paths_folders(
    tmp_path: Path,
) -> None:
    staging = Staging(key="k", path=tmp_path / "a")
    assert (staging.output_dir, staging.log_path) == (tmp_path / "a/output", tmp_path / "a/log.txt")
    moved = staging.model_copy(update={"path": tmp_path / "b"})
    assert moved.output_dir == tmp_path / "b/output"
    assert moved.log_path == tmp_path / "b/log.txt"
    assert moved.scratch_dir == tmp_path / "b/scratch"
    assert staging.output_dir == tmp_path / "a/output"


def test_a_staging_folder_is_its_fields_whatever_subfolders_were_asked_for(
    tmp_path: Path,
) -> None:
    staging = Staging(key="k", path=tmp_path / "a")
    fresh = dict(staging)
    assert (staging.output_dir, staging.log_path, staging.scratch_dir) != ()  # made and kept

    assert dict(staging) == fresh == {"key": "k", "path": tmp_path / "a"}
    assert Staging(**dict(staging)) == staging
    assert staging.model_dump() == fresh


def tampered_entry(cache: Cache, n: int) -> CacheEntry:
    entry = publish_files(cache, key_of(n), {"a.txt": b"a"})
    make_writable(entry.output_dir / "a.txt")
    (entry.output_dir / "a.txt").write_bytes(b"tampered")
    return entry


def test_verify_remove_takes_out_the_entries_with_problems_and_only_those(cache: Cache) -> None:
    """A run takes an entry by its manifest, without re-hashing it: one that verify found
    tampered with is removed, so that the next run computes it again."""
    bad = tampered_entry(cache, 1)
    good = publish_files(cache, key_of(2), {"a.txt": b"a"})
    misplaced = cache.root / "entries" / "zz" / "not-a-key"
    misplaced.mkdir(parents=True)

    removed, in_use = remove_entries_with_problems(cache, verify(cache))

    assert sorted(removed) == sorted([bad.key, "not-a-key"]) and in_use == []
    assert cache.lookup(bad.key) is None and not misplaced.exists()
    assert cache.lookup(good.key) == good
    assert verify(cache) == []


def test_verify_remove_leaves_an_entry_a_live_run_is_using(cache: Cache) -> None:
    bad = tampered_entry(cache, 1)
    hold = RunHold(cache.root, "run-reading-it")
    hold.note(bad.key)
    try:
        removed, in_use = remove_entries_with_problems(cache, verify(cache))
    finally:
        hold.close()
    assert (removed, in_use) == ([], [bad.key])
    assert cache.lookup(bad.key) is not None, "left until that run has ended"
    assert remove_entries_with_problems(cache, verify(cache)) == ([bad.key], [])


def test_verify_remove_leaves_an_entry_made_again_since_it_was_verified(cache: Cache) -> None:
    bad = tampered_entry(cache, 1)
    problems = verify(cache)
    (bad.output_dir / "a.txt").write_bytes(b"a")  # sound again (as if published anew)
    assert remove_entries_with_problems(cache, problems) == ([], [])
    assert cache.lookup(bad.key) is not None
