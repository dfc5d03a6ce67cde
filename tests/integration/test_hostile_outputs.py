"""A container's output is someone else's: links in it never widen what the host allows.

A step may leave symbolic links to host folders (the cache root, the user's home) in its output.
Handing that output to a step with its own user, publishing it, exporting it and running
``run-image --work DIR --user`` on a folder holding such a link must leave every host path's mode
and owner as it was, and never make anything world-writable.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import KlikoCli

Builder = Callable[[Path, str, str], str]

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

SPLIT = "schema_version: 3\nname: {name}\nio: split\nsections: []\n"
JOIN = "schema_version: 3\nname: {name}\nio: join\nsections: []\n"

# Leaves links to host paths named in its environment (absolute and relative, folders and a
# file), as a hostile image would, next to one ordinary file. (Links to / or /etc are only
# published and exported here, never handed to another user: on a broken build that would
# change this machine's own modes.)
LINKER = r"""#!/bin/sh
echo data > /output/data.txt
ln -s "$HOST_DIR" /output/host
ln -s "$CACHE_ROOT" /output/cacheroot
ln -s "$HOST_DIR/secret.txt" /output/secret
ln -s .. /output/parent
if [ -n "$ETC" ]; then ln -s /etc /output/etc; fi
mkdir /output/sub
ln -s "$HOST_DIR" /output/sub/host
"""
# Nests $DEPTH folders in /output, as deep as the shell can go by path and then on folder by
# folder (cd), with a file at the bottom: past Python's recursion limit, or past the longest path.
NESTER = r"""#!/bin/sh
echo top > /output/top.txt
cd /output || exit 1
i=0
while [ "$i" -lt "$DEPTH" ]; do mkdir d && cd -P d || exit 1; i=$((i + 1)); done
echo bottom > bottom.txt
"""
# Writes into /work (it must be able to, as its own user) and lists what it was given.
WRITER = r"""#!/bin/sh
echo made > /work/made.txt
ls -la /work
"""


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, kliko_image_builder: Builder
) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile-output-images")
    tags: dict[str, str] = {}
    try:
        made = {"linker": (SPLIT, LINKER), "writer": (JOIN, WRITER), "nester": (SPLIT, NESTER)}
        for name, (spec, script) in made.items():
            tags[name] = kliko_image_builder(root / name, spec.format(name=name), script)
        yield tags
    finally:
        if tags:
            subprocess.run(["docker", "rmi", "-f", *tags.values()], capture_output=True)


State = dict[str, tuple[int, int, int]]


def tree_state(root: Path) -> State:
    """Mode, uid and gid of ``root`` and everything under it, links not followed."""
    found: State = {}
    for path in [root, *root.rglob("*")]:
        info = os.lstat(path)
        found[str(path.relative_to(root))] = (info.st_mode, info.st_uid, info.st_gid)
    return found


def world_writable(root: Path) -> list[str]:
    """Files and folders under ``root`` (not links) that anyone may write."""
    return [
        str(path)
        for path in [root, *root.rglob("*")]
        if not path.is_symlink() and os.lstat(path).st_mode & stat.S_IWOTH
    ]


def host_folder(tmp_path: Path) -> Path:
    """A folder of the user's with a private file: what a link in an output points at."""
    host = tmp_path / "host"
    host.mkdir(mode=0o750)
    host.chmod(0o750)
    (host / "secret.txt").write_text("private\n")
    (host / "secret.txt").chmod(0o600)
    (host / "inner").mkdir(mode=0o700)
    (host / "inner").chmod(0o700)
    return host


def test_links_in_an_output_never_widen_host_modes_for_a_step_with_its_own_user(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    host = host_folder(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o750)
    cache.chmod(0o750)
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "steps:\n"
        "  links:\n"
        f"    image: {images['linker']}\n"
        f"    env: {{HOST_DIR: '{host}', CACHE_ROOT: '{cache}'}}\n"
        "  theirs:\n"
        f"    image: {images['writer']}\n"
        "    inputs: [links]\n"
        '    user: "1234:1234"\n'
    )
    host_before, tmp_before = tree_state(host), os.lstat(tmp_path)

    done = kliko("run", chain, "--cache-dir", cache, "--out", tmp_path / "out", "--plain")

    assert done.returncode == 0, done.stdout + done.stderr
    assert tree_state(host) == host_before, "the linked host folder keeps its modes and owners"
    assert stat.S_IMODE(os.lstat(cache).st_mode) == 0o750, "the cache root keeps its mode"
    assert os.lstat(tmp_path).st_mode == tmp_before.st_mode
    assert world_writable(cache) == [], "nothing in the cache is world-writable"
    assert world_writable(tmp_path / "out") == []
    # The step with its own user could write its work folder, and the links stayed links.
    made = tmp_path / "out" / "theirs"
    assert (made / "made.txt").read_text() == "made\n"
    assert os.readlink(made / "host") == str(host)
    assert os.readlink(made / "sub" / "host") == str(host)
    assert kliko("cache", "verify", "--cache-dir", cache).returncode == 0


def test_a_link_to_etc_is_published_and_exported_as_a_link(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    host = host_folder(tmp_path)
    cache, out = tmp_path / "cache", tmp_path / "out"
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "steps:\n"
        "  links:\n"
        f"    image: {images['linker']}\n"
        f"    env: {{HOST_DIR: '{host}', CACHE_ROOT: '{cache}', ETC: '1'}}\n"
    )
    host_before, etc_before = tree_state(host), os.lstat("/etc")

    done = kliko("run", chain, "--cache-dir", cache, "--out", out, "--plain")

    assert done.returncode == 0, done.stdout + done.stderr
    exported = out / "links"
    for name in ("etc", "host", "cacheroot", "parent", "secret", "sub/host"):
        assert (exported / name).is_symlink(), f"{name} is exported as the link it was"
    assert os.readlink(exported / "etc") == "/etc"
    [entry] = [m.parent for m in (cache / "entries").rglob("manifest.json")]
    assert (entry / "output" / "etc").is_symlink(), "the cache keeps the link, not /etc"
    assert not (entry / "output" / "passwd").exists()
    assert tree_state(host) == host_before
    etc_after = os.lstat("/etc")
    assert (etc_after.st_mode, etc_after.st_uid) == (etc_before.st_mode, etc_before.st_uid)


def test_run_image_with_another_user_leaves_the_users_folder_and_links_out_of_it_alone(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    outside = host_folder(tmp_path)
    work = tmp_path / "project"
    work.mkdir(mode=0o755)
    work.chmod(0o755)
    (work / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (work / "key.pem").chmod(0o600)
    (work / "notes").mkdir(mode=0o700)
    (work / "notes").chmod(0o700)
    (work / "notes" / "todo.txt").write_text("todo\n")
    (work / "notes" / "todo.txt").chmod(0o640)
    (work / "outside").symlink_to(outside)
    work_before, outside_before = tree_state(work), tree_state(outside)

    done = kliko("run-image", images["writer"], "--work", work, "--user", "1234:1234")

    assert done.returncode == 0, done.stdout + done.stderr
    assert (work / "made.txt").read_text() == "made\n", "the other user could write /work"
    work_after = tree_state(work)
    made = work_after.pop("made.txt")
    assert work_after == work_before, "the user's files keep their modes and owners"
    assert tree_state(outside) == outside_before, "a link in the folder is never followed"
    assert not made[0] & stat.S_IWOTH
    if os.geteuid() != 0:  # and what the step made is the invoking user's to change
        assert made[1:] == (os.getuid(), os.getgid())


def test_an_output_past_the_recursion_limit_is_kept_handed_on_exported_and_collected(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    """1,200 folders deep: the run crashed in a RecursionError traceback (copying it into the
    next step's /work, exporting it, deleting it). A tree past the longest path a system takes
    fails its own step, clearly, and the rest of the run goes on."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "steps:\n"
        f"  deep:\n    image: {images['nester']}\n    env: {{DEPTH: '1200'}}\n"
        f"  theirs:\n    image: {images['writer']}\n    inputs: [deep]\n"
        f"  too-deep:\n    image: {images['nester']}\n    env: {{DEPTH: '2500'}}\n"
    )

    try:
        deep_run_checked(kliko, chain, cache, out)
    finally:  # pytest's own clean-up of tmp_path recurses, and would fail on what is left
        subprocess.run(["rm", "-rf", str(out), str(cache)], check=True)


def deep_run_checked(kliko: KlikoCli, chain: Path, cache: Path, out: Path) -> None:
    done = kliko("run", chain, "--cache-dir", cache, "--out", out, "--plain", "--keep-going")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "too-deep | FAILED: its output holds folders nested so deep" in done.stdout, done.stdout[
        -3000:
    ]
    bottom = "d/" * 1200 + "bottom.txt"
    assert (out / "deep" / bottom).read_text() == "bottom\n"
    assert (out / "theirs" / bottom).read_text() == "bottom\n", "copied into /work, and out"
    assert (out / "theirs" / "made.txt").is_file()
    assert list((cache / "tmp").iterdir()) == [], "the failed step's staging folder is gone"
    verified = kliko("cache", "verify", "--cache-dir", cache)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    tidied = kliko("cache", "gc", "--max-size", "0", "--cache-dir", cache)
    assert tidied.returncode == 0, tidied.stdout + tidied.stderr
    assert not [p for p in (cache / "entries").glob("*/*") if p.is_dir()], "all collected"
