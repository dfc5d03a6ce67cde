"""The host paths a step's container is given: absolute and normalised (Docker wants both),
without a new Path for each mount when the cache's own paths are already so."""

from __future__ import annotations

import os
from pathlib import Path

from kliko_async.engine.workspace import absolute


def test_a_relative_path_is_made_absolute_from_the_working_folder() -> None:
    assert absolute(Path("c/tmp/x")) == Path(os.getcwd(), "c/tmp/x")


def test_parent_steps_are_taken_out_without_touching_the_disk() -> None:
    assert absolute(Path("/no/such/folder/../other")) == Path("/no/such/other")
    assert str(absolute(Path("/a/./b//c/"))) == "/a/b/c"


def test_an_absolute_normal_path_is_given_back_as_it_is() -> None:
    path = Path("/cache/tmp/k.1.ab.host/output")
    assert absolute(path) is path


def test_a_name_that_only_starts_with_two_dots_is_kept() -> None:
    assert absolute(Path("/data/..hidden/x")) == Path("/data/..hidden/x")
    assert absolute(Path("/data/x/..")) == Path("/data")
