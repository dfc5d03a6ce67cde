"""One walk seals and hashes a step's output (``seal_and_hash``): it must give what the two walks
it replaced gave (``seal_tree``, then ``hash_tree``), in the same order, for any tree a container
can leave: nested folders, links to folders, to files and to nothing, executables, odd names,
special files, folders it made unreadable, and a depth that would overflow a recursive walk."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from kliko_async.cache.durable import Barrier, seal_tree
from kliko_async.cache.hashing import hash_tree
from kliko_async.cache.sealing import SealingFailed, seal_and_hash


def a_tree(root: Path) -> Path:
    """An output with every kind of member, modes a container might leave, and odd names."""
    (root / "b" / "deeper" / "deepest").mkdir(parents=True)
    (root / "a-folder").mkdir()
    (root / "z.txt").write_text("z")
    (root / "a.txt").write_text("a")
    (root / "b" / "inside.bin").write_bytes(bytes(range(256)) * 10)
    (root / "b" / "deeper" / "deepest" / "leaf").write_text("leaf")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o700)
    (root / "read-only").write_text("r")
    (root / "read-only").chmod(0o400)
    (root / "ünï cødé name").write_text("u")
    (root / "link-to-folder").symlink_to("b")  # among the folders for os.walk, not followed
    (root / "link-to-file").symlink_to("a.txt")
    (root / "dangling").symlink_to("/nowhere/at/all")
    (root / "outside").symlink_to("/etc")
    (root / "b" / "deeper").chmod(0o555)  # a read-only folder
    return root


def modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.lstat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_one_walk_gives_what_the_two_gave(tmp_path: Path) -> None:
    old, new = a_tree(tmp_path / "old"), tmp_path / "new"
    old.mkdir(exist_ok=True)
    shutil.copytree(old, new, symlinks=True)
    (new / "b" / "deeper").chmod(0o555)
    old_barrier, new_barrier = Barrier(tmp_path), Barrier(tmp_path)

    special = seal_tree(old, old_barrier)
    hashes = hash_tree(old)
    outputs, new_special = seal_and_hash(new, new_barrier)

    assert list(outputs.items()) == list(hashes.items()), "the same hashes, in the same order"
    assert new_special == special == []
    assert modes(new) == modes(old), "the same modes: owner-writable, executables kept"
    assert {os.path.relpath(p, new) for p in new_barrier.paths} == {
        os.path.relpath(p, old) for p in old_barrier.paths
    }, "the same files and folders made durable"
    assert outputs["link-to-folder"] == "symlink:b"
    assert outputs["dangling"] == "symlink:/nowhere/at/all"
    assert outputs["b/deeper/deepest/leaf"] == hashes["b/deeper/deepest/leaf"]
    assert "b/deeper/deepest/leaf" not in {k for k in outputs if k.startswith("link-to-folder/")}


def test_special_files_are_named_as_before_and_not_hashed(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for root in (old, new):
        (root / "sub").mkdir(parents=True)
        (root / "data").write_text("d")
        os.mkfifo(root / "sub" / "pipe")
        os.mkfifo(root / "a-pipe")

    special = seal_tree(old, Barrier(tmp_path))
    outputs, new_special = seal_and_hash(new, Barrier(tmp_path))

    assert new_special == special == [("a-pipe", "a named pipe"), ("sub/pipe", "a named pipe")]
    assert list(outputs) == ["data"]


def test_a_folder_made_unreadable_is_read_all_the_same(tmp_path: Path) -> None:
    """Sealed before it is looked into: its files are in the manifest (the two walks left them
    out without a word when the process could not read the folder: root always can)."""
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / "secret").write_text("s")
    (tmp_path / "hidden").chmod(0)

    outputs, _ = seal_and_hash(tmp_path, Barrier(tmp_path))

    assert list(outputs) == ["hidden/secret"]
    assert stat.S_IMODE((tmp_path / "hidden").stat().st_mode) == 0o755


def test_a_tree_deeper_than_the_stack_is_walked(tmp_path: Path) -> None:
    depth = 1_200  # past Python's recursion limit of 1,000
    folder = tmp_path
    for _ in range(depth):
        folder = folder / "d"
        os.mkdir(folder)
    (folder / "bottom").write_text("b")
    try:
        outputs, _ = seal_and_hash(tmp_path, Barrier(tmp_path))
    finally:  # bottom up: pytest's own clean-up of tmp_path recurses, and would overflow
        (folder / "bottom").unlink()
        while folder != tmp_path:
            folder.rmdir()
            folder = folder.parent

    assert list(outputs) == ["d/" * depth + "bottom"]


def test_a_file_that_cannot_be_read_fails_as_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").write_text("f")
    real_open = os.open

    def refuse(path: str, flags: int, *args: int) -> int:
        if str(path).endswith("/f"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(SealingFailed) as failed:
        seal_and_hash(tmp_path, Barrier(tmp_path))
    assert failed.value.action == "hashing the output"
