"""A ``build:`` folder's ``.dockerignore`` is honoured as ``docker build`` honours it.

What it lists never reaches the engine: it is not in the image (``COPY . /ctx/``), changing it
rebuilds nothing and re-runs no step, and a large listed file costs no memory, because it is
not read and the context is streamed, never held whole.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from kliko_async.runtime.docker import DockerRuntime

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.load, pytest.mark.usefixtures("example_images")]

KLIKO_YML = "schema_version: 3\nio: split\nsections: []\n"
KLIKO = "#!/bin/sh\ncd /ctx && find . | sort > /output/listing.txt\n"
DOCKERFILE = "FROM kliko-async/busybox\nCOPY kliko.yml kliko /\nCOPY . /ctx/\n"
DOCKERIGNORE = """\
# what the image must not hold
secret.txt
big.bin
data
!data/keep.txt
"""
CHAIN = "steps:\n  look: {build: tool}\n"
BIG = 192 << 20
"""The large ignored file: random bytes, so that holding it (even gzipped) would show."""


@pytest.fixture
def tool(tmp_path: Path) -> Iterator[Path]:
    """A build folder whose image lists what it received; its images are removed afterwards."""
    folder = tmp_path / "tool"
    (folder / "data").mkdir(parents=True)
    (folder / "kliko.yml").write_text(KLIKO_YML)
    (folder / "kliko").write_text(KLIKO)
    (folder / "kliko").chmod(0o755)
    (folder / "Dockerfile").write_text(DOCKERFILE)
    (folder / ".dockerignore").write_text(DOCKERIGNORE)
    (folder / "kept.txt").write_text("sent\n")
    (folder / "secret.txt").write_text("password=hunter2\n")
    (folder / "data" / "drop.txt").write_text("raw data\n")
    (folder / "data" / "keep.txt").write_text("the one kept\n")
    yield folder
    listed = subprocess.run(
        ["docker", "image", "ls", "-q", "--filter", f"label=io.kliko-async.build-context={folder}"],
        capture_output=True,
        text=True,
    )
    if listed.stdout.split():
        subprocess.run(["docker", "rmi", "-f", *listed.stdout.split()], capture_output=True)


def step_state(stdout: str) -> str:
    """The last state the --plain display reported for the step 'look'."""
    found = re.findall(r"^look \| (started|cached|done|FAILED)\b", stdout, re.MULTILINE)
    assert found, stdout
    return found[-1]


def run_chain(kliko: KlikoCli, tmp_path: Path, out: str) -> tuple[str, list[str]]:
    chain = tmp_path / "chain.yaml"
    chain.write_text(CHAIN)
    done = kliko("run", chain, "--cache-dir", tmp_path / "cache", "--out", out, "--plain")
    assert done.returncode == 0, done.stdout + done.stderr
    listing = (tmp_path / out / "look" / "listing.txt").read_text().split()
    return step_state(done.stdout), listing


def test_ignored_files_and_folders_stay_out_of_the_image_and_exceptions_come_in(
    kliko: KlikoCli, tmp_path: Path, tool: Path
) -> None:
    _, listing = run_chain(kliko, tmp_path, "out")

    assert "./kept.txt" in listing
    assert "./data/keep.txt" in listing, "'!data/keep.txt' brings it back"
    assert "./secret.txt" not in listing
    assert "./data/drop.txt" not in listing, "the folder 'data' is excluded, all it holds too"
    assert "./Dockerfile" in listing, "not listed: sent, and copied as docker build does"


def test_changing_an_ignored_file_rebuilds_nothing_and_reruns_no_step(
    kliko: KlikoCli, tmp_path: Path, tool: Path
) -> None:
    first, _ = run_chain(kliko, tmp_path, "first")
    (tool / "secret.txt").write_text("password=changed\n")
    (tool / "data" / "drop.txt").write_text("other raw data\n")
    (tool / "data" / "new.txt").write_text("a new ignored file\n")
    again, _ = run_chain(kliko, tmp_path, "again")
    (tool / "kept.txt").write_text("a change that is sent\n")
    changed, _ = run_chain(kliko, tmp_path, "changed")

    assert first == "done"
    assert again == "cached", "same image, same key: the step is not run again"
    assert changed == "done", "a file that is sent still changes the image and the key"


def peak_memory(process: subprocess.Popen[bytes]) -> int:
    """The largest resident set (VmHWM, bytes) ``process`` reached, read until it ends."""
    peak = 0
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            text = status.read_text()
        except OSError:
            break  # it ended between the poll and the read
        found = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
        if found:
            peak = max(peak, int(found.group(1)) * 1024)
        time.sleep(0.02)
    process.wait()
    return peak


def test_a_large_ignored_file_is_neither_read_nor_held_in_memory(
    kliko: KlikoCli, tmp_path: Path, tool: Path
) -> None:
    with (tool / "big.bin").open("wb") as handle:
        for _ in range(BIG >> 20):
            handle.write(os.urandom(1 << 20))
    chain = tmp_path / "chain.yaml"
    chain.write_text(CHAIN)
    log = tmp_path / "run.log"

    process = kliko.popen("run", chain, "--cache-dir", tmp_path / "cache", "--out", "out", log=log)
    peak = peak_memory(process)

    assert process.returncode == 0, log.read_text()
    print(f"peak resident memory of kliko-async run: {peak >> 20} MiB")
    assert 0 < peak < BIG // 2, f"peak resident memory {peak >> 20} MiB for a {BIG >> 20} MiB file"
    assert "./big.bin" not in (tmp_path / "out" / "look" / "listing.txt").read_text().split()


TRICKY_FILES = [
    "temp", "tempa", "temporary.txt", "important.txt", "x/y/z", "x/yy", "abs/f", "abs2",
    "somedir/temp/in", "somedir/temporary.txt", "somedir/sub/temp1", "somedir/sub/deep/temp2",
    "a.log", "keep/a.log", "keep/deep/b.log", "other/c.log", "data/keep.txt", "data/drop.txt",
    "data/sub/keep.txt", "src/main.c", "src/lib/util.c", "a/node_modules/pkg/i.js",
    "a/node_modules/other/j.js", "node_modules/x.js", "secret1", "secret-ok", "b/keep",
    "b/keep2", "c/d/keep", "emptydir/",
]  # fmt: skip


@pytest.mark.parametrize(
    "ignore",
    [
        "# c\n*/temp*\n*/*/temp*\ntemp?\n**/*.log\n!keep/**/*.log\ndata\n!data/keep.txt\n"
        "./x//y/\n/abs\n**/node_modules\n!a/node_modules/pkg\nsecret*\n!secret-ok\n",
        "**\n!**/keep\n!b/keep2\n!src\nDockerfile\n.dockerignore\n",
    ],
    ids=["patterns", "allow-list"],
)
def test_the_context_is_the_one_docker_build_sends(tmp_path: Path, ignore: str) -> None:
    """The same folder built by the docker command (its classic builder, which sends the
    context it made with moby's own matcher) and by kliko-async: the same files arrive."""
    for name in TRICKY_FILES:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not name.endswith("/"):
            path.write_text(name)
    (tmp_path / "Dockerfile").write_text("FROM kliko-async/busybox\nCOPY . /ctx/\n")
    (tmp_path / ".dockerignore").write_text(ignore)
    theirs, ours = (f"kliko-async-test/context-{who}-{uuid.uuid4().hex[:10]}" for who in "ab")

    async def build() -> None:
        runtime = DockerRuntime()
        try:
            await runtime.build_image(tmp_path, tag=ours)
        finally:
            await runtime.aclose()

    def received(tag: str) -> list[str]:
        found = subprocess.run(
            ["docker", "run", "--rm", tag, "find", "/ctx"], capture_output=True, text=True
        )
        assert found.returncode == 0, found.stderr
        return sorted(found.stdout.split())

    try:
        subprocess.run(
            ["docker", "build", "-q", "-t", theirs, str(tmp_path)],
            check=True,
            capture_output=True,
            env=dict(os.environ, DOCKER_BUILDKIT="0"),
        )
        anyio.run(build)
        assert received(ours) == received(theirs)
    finally:
        subprocess.run(["docker", "rmi", "-f", theirs, ours], capture_output=True)
