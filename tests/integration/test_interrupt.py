"""Stopping kliko-async: Ctrl-C and SIGTERM remove running containers; after kill -9, the next run
cleans up the leftovers and reuses every finished step."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

KLIKO_ASYNC = str(Path(sys.executable).parent / "kliko-async")

SLEEPS = """\
steps:
  - image: example/sleep
    params: {seconds: 600, tag: first}
  - image: example/sleep
    params: {seconds: 600, tag: second}
"""


def owner_filter(pid: int) -> str:
    """Containers started by the kliko-async process ``pid`` carry this label."""
    return f"label=io.kliko-async.owner={socket.gethostname()}:{pid}"


def containers(*filters: str, running_only: bool = False) -> list[str]:
    args = ["docker", "ps", "-q", "--no-trunc"]
    if not running_only:
        args.append("-a")
    for item in filters:
        args += ["--filter", item]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()


def wait_for_running_container(process: subprocess.Popen[bytes], *filters: str) -> str:
    """The ID of the first running container matching ``filters`` of ``process``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"kliko-async ended early with {process.returncode}"
        found = containers(owner_filter(process.pid), *filters, running_only=True)
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError("no container started within 60 s")


@pytest.fixture
def remove_afterwards() -> Iterator[list[str]]:
    """Filters of containers to force-remove after the test, should it fail halfway."""
    filters: list[str] = []
    yield filters
    for item in filters:
        leftover = containers(item)
        if leftover:
            subprocess.run(["docker", "rm", "-f", *leftover], capture_output=True)


def stop_with(process: subprocess.Popen[bytes], signum: signal.Signals) -> int:
    """Send ``signum``; the exit code. Its 30 s are a guard against a hang, not a measure: the
    steps stopped here would run for 10 minutes."""
    process.send_signal(signum)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"kliko-async did not end within 30 s of {signum.name}") from None


@pytest.mark.parametrize(
    ("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"]
)
def test_a_signal_stops_the_run_and_removes_its_containers(
    kliko: KlikoCli,
    tmp_path: Path,
    remove_afterwards: list[str],
    signum: signal.Signals,
    exit_code: int,
) -> None:
    chain = tmp_path / "sleeps.yaml"
    chain.write_text(SLEEPS)
    log = tmp_path / "run.log"
    cache = tmp_path / "cache"
    process = kliko.popen("run", chain, "--cache-dir", cache, "--plain", log=log)
    remove_afterwards.append(owner_filter(process.pid))

    wait_for_running_container(process)
    code = stop_with(process, signum)

    assert code == exit_code, log.read_text()
    assert containers(owner_filter(process.pid)) == [], "its containers are removed"
    assert list((cache / "tmp").iterdir()) == [], "the interrupted step's staging is deleted"
    assert not list((cache / "entries").rglob("manifest.json")), "and nothing counts as cached"
    output = log.read_text()
    assert "interrupted" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"]
)
def test_a_signal_stops_run_image_and_removes_its_container(
    kliko: KlikoCli,
    tmp_path: Path,
    remove_afterwards: list[str],
    signum: signal.Signals,
    exit_code: int,
) -> None:
    log = tmp_path / "run.log"
    process = kliko.popen(
        "run-image", "example/sleep", "--seconds", "600", "--output", tmp_path / "out", log=log
    )
    remove_afterwards.append(owner_filter(process.pid))

    wait_for_running_container(process)
    code = stop_with(process, signum)

    assert code == exit_code, log.read_text()
    assert containers(owner_filter(process.pid)) == [], "its container is removed"
    assert "Traceback" not in log.read_text()


def many_files(root: Path, folders: int = 20, each: int = 1000) -> None:
    """``folders`` x ``each`` files, all links to one of 4 KiB: written in a fraction of a second,
    copied one by one into /work in seconds (20,000 took 2 s on a quick disk)."""
    root.mkdir()
    (root / "one").write_bytes(b"x" * 4096)
    for folder in range(folders):
        (root / f"d{folder:02d}").mkdir()
        for index in range(each):
            os.link(root / "one", root / f"d{folder:02d}" / f"f{index:04d}")


def test_ctrl_c_while_a_join_step_copies_its_input_stops_the_copy_and_starts_no_container(
    kliko: KlikoCli,
    tmp_path: Path,
    remove_afterwards: list[str],
    container_creations: Callable[..., list[dict[str, str]]],
) -> None:
    """Ctrl-C once waited for the whole copy of a join step's inputs into /work (minutes for a
    huge input) and then created and started the step's container all the same."""
    many_files(tmp_path / "big")
    chain = tmp_path / "join.yaml"
    chain.write_text(
        "data:\n  big: {path: big}\nsteps:\n  merge: {image: example/merge, inputs: [big]}\n"
    )
    cache, log = tmp_path / "cache", tmp_path / "run.log"
    since = time.time()
    process = kliko.popen("run", chain, "--cache-dir", cache, "--plain", log=log)
    remove_afterwards.append(owner_filter(process.pid))
    deadline = time.monotonic() + 60
    while "merge | preparing: copying big into /work" not in log.read_text():
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()
        time.sleep(0.02)

    asked = time.monotonic()
    code = stop_with(process, signal.SIGINT)
    took = time.monotonic() - asked
    output = log.read_text()

    assert code == 130, output
    created = container_creations(since, time.time() + 0.5, owner_pid=process.pid)
    assert [c for c in created if "io.kliko-async.step" in c] == [], "only the image's probe"
    assert list((cache / "tmp").iterdir()) == [], "the half-filled /work is deleted"
    assert "Traceback" not in output and "merge | started" not in output
    assert took < 5, f"the copy went on for {took:.1f} s after Ctrl-C"


def event_times(*filters: str, since: float, until: float) -> list[int]:
    """Nanosecond times of the engine's events matching ``filters``, between two times."""
    args = ["docker", "events", "--since", f"{since:.6f}", "--until", f"{until:.6f}"]
    for item in filters:
        args += ["--filter", item]
    done = subprocess.run(
        [*args, "--format", "{{.TimeNano}}"], capture_output=True, text=True, check=True
    )
    return [int(t) for t in done.stdout.split()]


def test_after_kill_9_a_rerun_removes_leftovers_and_reuses_finished_steps(
    kliko: KlikoCli, tmp_path: Path, remove_afterwards: list[str]
) -> None:
    chain = tmp_path / "two.yaml"
    chain.write_text(
        """\
steps:
  quick:
    image: example/sleep
    params: {seconds: 0.1, tag: quick}
  long:
    image: example/sleep
    params: {seconds: 4, tag: long}
    inputs: [quick]
"""
    )
    cache, out = tmp_path / "cache", tmp_path / "out"
    killed = kliko.popen("run", chain, "--cache-dir", cache, "--plain", log=tmp_path / "1.log")
    remove_afterwards.append(owner_filter(killed.pid))
    leftover = wait_for_running_container(killed, "label=io.kliko-async.step=long")
    killed.kill()
    killed.wait()
    assert containers(owner_filter(killed.pid)) == [leftover], "kill -9 leaves its container"
    assert list((cache / "tmp").iterdir()), "and the killed step's half-written staging folder"

    since = time.time()
    log = tmp_path / "2.log"
    rerun = kliko.popen("run", chain, "--cache-dir", cache, "--out", out, "--plain", log=log)
    code = rerun.wait(timeout=120)
    until = time.time() + 0.5
    output = log.read_text()

    assert code == 0, output
    assert "quick | cached" in output, "the step that finished before the kill is a cache hit"
    assert "long | started" in output, "the killed step's half-written output is not cached"
    assert "1 ran, 1 cached" in output
    assert (out / "long" / "slept.txt").read_text() == "slept 4.0 long\n"
    assert containers(owner_filter(killed.pid)) == [], "the dead run's container is removed"
    assert list((cache / "tmp").iterdir()) == [], "and the dead run's staging folder"
    removed = event_times(f"container={leftover}", "event=destroy", since=since, until=until)
    created = event_times(owner_filter(rerun.pid), "event=create", since=since, until=until)
    assert len(removed) == 1
    assert created, "the re-run started the long step"
    assert removed[0] < min(created), "leftovers are removed when the re-run starts"


def test_a_second_ctrl_c_says_what_it_leaves_and_the_next_run_removes_it(
    kliko: KlikoCli, tmp_path: Path, remove_afterwards: list[str]
) -> None:
    """The first Ctrl-C stops the containers gracefully (their shell ignores SIGTERM, so that
    takes the grace period); a second one exits at once, listing each container and staging
    folder it leaves. The next run removes exactly those."""
    chain = tmp_path / "parallel.yaml"
    chain.write_text(
        "steps:\n"
        "  one: {image: example/sleep, params: {seconds: 600, tag: one}}\n"
        "  two: {image: example/sleep, params: {seconds: 600, tag: two}}\n"
    )
    cache, log = tmp_path / "cache", tmp_path / "run.log"
    process = kliko.popen("run", chain, "--cache-dir", cache, "--plain", "--jobs", "2", log=log)
    remove_afterwards.append(owner_filter(process.pid))
    deadline = time.monotonic() + 60
    while len(containers(owner_filter(process.pid), running_only=True)) < 2:
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()
        time.sleep(0.1)

    process.send_signal(signal.SIGINT)
    while "kliko-async: stopping" not in log.read_text():  # the graceful stop is under way
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()
        time.sleep(0.05)
    code = stop_with(process, signal.SIGINT)
    output = log.read_text()

    assert code == 130, output
    assert "forced to stop; left behind:" in output
    left = containers(owner_filter(process.pid))
    assert left, "it exited at once: the containers were still being stopped"
    for container_id in left:
        assert f"container {container_id[:12]} (step " in output, output
    staging = sorted((cache / "tmp").iterdir())
    assert len(staging) == 2
    for folder in staging:
        assert f"folder {folder} (staging folder of step " in output, output
    assert "the next 'kliko-async run' on this host removes them" in output
    assert "docker rm -f" in output and "Traceback" not in output

    quick = tmp_path / "quick.yaml"
    quick.write_text("steps:\n  q: {image: example/sleep, params: {seconds: 0.1, tag: q}}\n")
    done = kliko("run", quick, "--cache-dir", cache, "--plain")
    assert done.returncode == 0, done.stderr
    assert containers(owner_filter(process.pid)) == [], "the next run removed the containers"
    assert [f for f in staging if f.exists()] == [], "and the staging folders"


@pytest.mark.parametrize("after_s", [1.0, 6.0])
def test_ctrl_c_while_a_huge_chain_is_read_or_planned_ends_the_dry_run(
    tmp_path: Path, after_s: float
) -> None:
    """A 100,000-step dry run takes half a minute to read and plan; Ctrl-C in the middle once
    waited for a worker thread to read the whole file and for planning to finish (8-23 s).
    Reading (1 s in) and planning (6 s in: reading 7 MB of YAML takes a few seconds) must both
    give way: the process ends interrupted, without its plan, instead of printing it."""
    chain = tmp_path / "huge.yaml"
    with chain.open("w") as out:
        out.write("steps:\n")
        for i in range(100_000):
            inputs = f", inputs: [s{i - 1:06d}]" if i % 10 else ""
            out.write(f"  s{i:06d}: {{image: example/sleep, params: {{tag: t{i}}}{inputs}}}\n")
    process = subprocess.Popen(
        [KLIKO_ASYNC, "run", "--dry-run", str(chain), "--cache-dir", str(tmp_path / "cache")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # SIGINT as a terminal's Ctrl-C finds it (a suite started in the background inherits it
        # ignored, and Python keeps an ignored SIGINT ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(after_s)
    assert process.poll() is None, "the dry run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()
    assert b"interrupted" in err and b"Traceback" not in err
    assert b"to run" not in out  # no plan: it stopped, it did not finish first
