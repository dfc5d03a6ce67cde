"""A step's output may be folders thousands deep. ``os.walk`` and ``shutil.rmtree`` recurse once
a folder and raised RecursionError at about a thousand: a run ended in a traceback when it
copied such an output into ``/work``, exported it with ``--out`` or deleted it. The walk and
the deletion that replace them go as deep as a tree does, and the same way for any other tree.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from kliko_async import api
from kliko_async.cache import treewalk
from kliko_async.cache.durable import remove_tree, tree_size
from kliko_async.cache.hashing import hash_tree
from kliko_async.cache.store import Cache
from kliko_async.cache.treewalk import remove_deep, walk
from kliko_async.cache.upkeep import verify
from kliko_async.model.chain import Chain, parse_chain
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

DEEP = 1_200
"""Past Python's recursion limit (1,000), within the longest path (4,096 bytes) as ``d/``s."""
TOO_DEEP = 2_500
"""``d/`` 2,500 times: 5,000 bytes, past the longest path, reachable only folder by folder."""


def nest(root: Path, depth: int) -> None:
    """``depth`` folders ``d`` one in another under ``root``, a file at the bottom: made folder
    by folder through descriptors, as a container can (no path is ever that long)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def deep_beside_outside(tmp_path: Path) -> tuple[Path, Path]:
    """A tree ``DEEP`` folders deep, and beside it a folder with a file that must be kept."""
    root, outside = tmp_path / "deep", tmp_path / "outside"
    root.mkdir()
    nest(root, DEEP)
    outside.mkdir()
    (outside / "kept.txt").write_text("kept")
    return root, outside


def a_tree(root: Path) -> Path:
    (root / "b" / "c").mkdir(parents=True)
    (root / "a").mkdir()
    for path in ("f", "b/g", "b/c/h", "a/i"):
        (root / path).write_text(path)
    (root / "link-to-b").symlink_to("b")
    (root / "b" / "dangling").symlink_to("/nowhere")
    return root


@pytest.mark.parametrize("topdown", [True, False])
def test_walk_goes_as_os_walk_goes(tmp_path: Path, topdown: bool) -> None:
    a_tree(tmp_path)
    assert list(walk(tmp_path, topdown=topdown)) == list(os.walk(tmp_path, topdown=topdown))


def test_walk_is_steered_by_the_folders_a_caller_leaves(tmp_path: Path) -> None:
    """Top down, sorting the folder names in place orders the walk, removing one skips it."""
    a_tree(tmp_path)

    def steered(walker: object) -> list[str]:
        seen = []
        for folder, folders, _others in walker:  # type: ignore[attr-defined]
            folders.sort(reverse=True)
            if "c" in folders:
                folders.remove("c")
            seen.append(folder)
        return seen

    assert steered(walk(tmp_path)) == steered(os.walk(tmp_path))
    assert str(tmp_path / "b" / "c") not in steered(walk(tmp_path))


def test_walk_and_its_users_go_past_the_recursion_limit(tmp_path: Path) -> None:
    nest(tmp_path, DEEP)
    if sys.version_info < (3, 12):  # what it replaces could not: the test means something
        with pytest.raises(RecursionError):
            list(os.walk(tmp_path))
    assert sum(1 for _ in walk(tmp_path)) == DEEP + 1
    assert list(hash_tree(tmp_path)) == ["d/" * DEEP + "bottom.txt"]
    assert tree_size(tmp_path) == 0
    remove_tree(tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


def test_a_tree_deeper_than_any_path_is_deleted(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    root.mkdir()
    nest(root, TOO_DEEP)
    with pytest.raises(OSError, match="too long"):
        os.stat(root / ("d/" * TOO_DEEP))

    remove_deep(root)

    assert not root.exists()


def test_a_deep_sealed_tree_is_deleted_with_its_read_only_folders(tmp_path: Path) -> None:
    """A sealed entry's folders are 0755, a container's may be 0555: opened up as they go."""
    root, outside = deep_beside_outside(tmp_path)
    (root / "d" / "link-out").symlink_to(outside)
    for folder, _folders, _others in walk(root):
        os.chmod(folder, 0o555)

    remove_tree(root)

    assert not root.exists()
    assert (outside / "kept.txt").read_text() == "kept", "a link is deleted, never followed"


def test_walk_does_not_enter_a_folder_swapped_for_a_link_meanwhile(tmp_path: Path) -> None:
    """As os.walk: a folder is looked at when its turn comes, not when its parent was listed."""
    outside = tmp_path / "outside"
    (outside / "secret").mkdir(parents=True)
    (tmp_path / "tree" / "a").mkdir(parents=True)
    (tmp_path / "tree" / "b").mkdir()

    def walked(walker: Iterator[tuple[str, list[str], list[str]]]) -> list[str]:
        seen = []
        for folder, folders, _others in walker:
            folders.sort()
            seen.append(os.path.relpath(folder, tmp_path))
            if folder.endswith("/a"):  # while a is walked, b becomes a link out of the tree
                (tmp_path / "tree" / "b").rmdir()
                (tmp_path / "tree" / "b").symlink_to(outside)
        (tmp_path / "tree" / "b").unlink()
        (tmp_path / "tree" / "b").mkdir()
        return seen

    assert walked(walk(tmp_path / "tree")) == walked(os.walk(tmp_path / "tree"))
    assert walked(walk(tmp_path / "tree")) == ["tree", "tree/a"]


def test_a_link_deep_in_a_deep_tree_is_deleted_not_followed(tmp_path: Path) -> None:
    root, outside = deep_beside_outside(tmp_path)
    fd = os.open(root / ("d/" * (DEEP - 1)), os.O_RDONLY)  # past where rmtree's recursion ends
    try:
        os.symlink(outside, "link-out", dir_fd=fd)
    finally:
        os.close(fd)

    remove_deep(root)

    assert not root.exists()
    assert (outside / "kept.txt").read_text() == "kept"


def test_a_folder_moved_while_being_deleted_stops_the_deletion_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back up by ``..`` is checked to be the folder it came down from: a folder moved
    elsewhere meanwhile raises, rather than deleting its new neighbours."""
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "s").mkdir()
    (root / "a" / "s" / "precious.txt").write_text("p")
    other = tmp_path / "other"
    (other / "s").mkdir(parents=True)
    (other / "s" / "precious.txt").write_text("theirs")
    real_clear = treewalk._clear
    moved: list[bool] = []

    def clear_then_move(fd: int) -> list[str]:
        folders = real_clear(fd)
        if not moved and os.path.samefile(f"/proc/self/fd/{fd}", root / "a" / "b"):
            moved.append(True)
            (root / "a" / "b").rename(other / "b")  # the race, made to happen here
        return folders

    monkeypatch.setattr(treewalk, "_clear", clear_then_move)
    with pytest.raises(OSError, match="moved while it was being deleted"):
        treewalk._remove_by_descriptors(str(root))
    assert (other / "s" / "precious.txt").read_text() == "theirs"
    monkeypatch.undo()
    remove_deep(root)
    remove_deep(other)


def test_a_failed_deletion_leaves_no_folder_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tree").mkdir()

    def refuse(fd: int) -> list[str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(treewalk, "_clear", refuse)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(PermissionError):
            treewalk._remove_by_descriptors(str(tmp_path / "tree"))
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_deep_tree_with_closed_folders_is_deleted(tmp_path: Path) -> None:
    """Folders not writable, and one not even searchable, past the longest path: opened up as
    the deletion comes to them (for anyone but root; root passes them anyway)."""
    root = tmp_path / "closed"
    root.mkdir()
    nest(root, TOO_DEEP)
    (root / "d").chmod(0o555)
    fd = os.open(root / ("d/" * 1500), os.O_RDONLY)
    try:
        os.chmod("d", 0o000, dir_fd=fd)
    finally:
        os.close(fd)

    remove_tree(root)

    assert not root.exists()


KLIKO_SPLIT = "schema_version: 3\nio: split\nsections:\n  - name: m\n    fields:\n"
KLIKO_SPLIT += "      - {name: depth, type: int, initial: 0}\n"
KLIKO_JOIN = "schema_version: 3\nio: join\nsections: []\n"


async def nester(container: FakeContainer) -> int:
    params = json.loads(container.path("/parameters.json").read_text())
    nest(container.path("/output"), params["depth"])
    return 0


async def reader(container: FakeContainer) -> int:
    return 0 if any(walk(container.path("/work"))) else 1


def deep_chain(tmp_path: Path, depth: int) -> Chain:
    steps = {
        "deep": {"image": "x/nester", "params": {"depth": depth}},
        "joined": {"image": "x/reader", "inputs": ["deep"]},
        "apart": {"image": "x/nester", "params": {"depth": 1}},
    }
    return parse_chain({"steps": steps}, source="c", base_dir=tmp_path)


def runtime() -> FakeRuntime:
    fake = FakeRuntime()
    fake.add_image("x/nester", KLIKO_SPLIT, nester)
    fake.add_image("x/reader", KLIKO_JOIN, reader)
    return fake


def test_a_deep_output_is_published_copied_exported_verified_and_collected(
    tmp_path: Path,
) -> None:
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    chain = deep_chain(tmp_path, DEEP)

    result = anyio.run(lambda: api.run(chain, runtime=runtime(), cache_dir=cache_dir, out=out))

    assert result.ok, {n: s.reason for n, s in result.steps.items()}
    bottom = "d/" * DEEP + "bottom.txt"
    assert (out / "deep" / bottom).is_file(), "exported whole"
    assert (out / "joined" / bottom).is_file(), "copied into the next step's /work, and on"
    cache = Cache(cache_dir)
    assert verify(cache) == []
    remove_tree(out)  # as a user would, before the cache is emptied
    for entry in cache.entries():
        remove_tree(entry.path)
    assert list(cache.entries()) == []


def test_an_output_deeper_than_any_path_fails_its_step_clearly(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    chain = deep_chain(tmp_path, TOO_DEEP)

    result = anyio.run(
        lambda: api.run(chain, runtime=runtime(), cache_dir=cache_dir, keep_going=True)
    )

    deep = result.steps["deep"]
    assert deep.state == "failed"
    assert "nested so deep that their path is longer than this system allows" in (deep.reason or "")
    assert result.steps["joined"].state == "skipped"
    assert result.steps["apart"].state == "done", "the rest of the run went on"
    assert list((cache_dir / "tmp").iterdir()) == [], "its staging folder was deleted"
