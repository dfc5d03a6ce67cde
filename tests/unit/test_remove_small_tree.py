"""Deleting a step's scratch folder in a few calls, and the long way whenever it holds more."""

from __future__ import annotations

import os
from pathlib import Path

from kliko_async.cache.durable import remove_if_small, remove_small_tree
from kliko_async.engine.workspace import remove_scratch


def test_a_scratch_folder_of_files_and_empty_folders_goes(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    (scratch / "empty-input").mkdir(parents=True)
    (scratch / "parameters.json").write_text("{}")
    remove_small_tree(scratch)
    assert not scratch.exists() and tmp_path.exists()


def test_nested_and_read_only_folders_go_the_long_way(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    files = scratch / "param_files" / "sky"
    files.mkdir(parents=True)
    (files / "model.txt").write_text("model")
    files.chmod(0o500)  # as a read-only mount's copy may be
    remove_small_tree(scratch)
    assert not scratch.exists()


def test_a_link_in_it_goes_and_what_it_points_at_stays(tmp_path: Path) -> None:
    scratch, kept = tmp_path / "scratch", tmp_path / "kept"
    (kept / "inside").mkdir(parents=True)
    scratch.mkdir()
    os.symlink(kept, scratch / "to-folder")
    os.symlink(kept / "inside", scratch / "to-inside")
    remove_small_tree(scratch)
    assert not scratch.exists() and (kept / "inside").is_dir()


def test_a_missing_folder_is_fine(tmp_path: Path) -> None:
    remove_small_tree(tmp_path / "never-made")
    assert list(tmp_path.iterdir()) == []


def test_only_a_small_folder_goes_at_once_anything_more_is_left_for_the_long_way(
    tmp_path: Path,
) -> None:
    """What the event loop tries before it hands a scratch folder to the worker thread: a Slurm
    job's folder of files inside it (on a shared file system) is not deleted there."""
    small, big = tmp_path / "small", tmp_path / "big"
    (small / "empty-input").mkdir(parents=True)
    (small / "parameters.json").write_text("{}")
    (big / "slurm").mkdir(parents=True)
    for name in ("job.sh", "stdout", "stderr", "status"):
        (big / "slurm" / name).write_text(name)
    assert remove_if_small(small) and not small.exists()
    assert not remove_if_small(big)
    assert sorted(p.name for p in (big / "slurm").iterdir()) == [
        "job.sh",
        "status",
        "stderr",
        "stdout",
    ]
    remove_small_tree(big)
    assert not big.exists()


def test_the_scratch_folder_of_a_step_goes_without_being_listed(tmp_path: Path) -> None:
    for empty_input in (False, True):
        scratch = tmp_path / f"scratch{empty_input}"
        scratch.mkdir()
        (scratch / "parameters.json").write_text("{}")
        if empty_input:
            (scratch / "empty-input").mkdir()
        assert remove_scratch(scratch)
        assert not scratch.exists()


def test_a_scratch_folder_holding_more_is_left_for_the_long_way(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    (scratch / "job").mkdir(parents=True)  # a Slurm job's folder, say
    (scratch / "job" / "out.log").write_text("log")
    (scratch / "parameters.json").write_text("{}")
    assert not remove_scratch(scratch)
    assert (scratch / "job" / "out.log").read_text() == "log"
    remove_small_tree(scratch)
    assert not scratch.exists()
    scratch.mkdir()  # no parameters.json: not what a step's scratch folder is
    assert not remove_scratch(scratch)
    assert scratch.is_dir()
