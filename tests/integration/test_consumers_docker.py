"""Event consumers on the real engine: a pipe nobody reads never holds up the run, a consumer
that raises changes nothing, and ``kliko-async run ... | head`` stops as ``docker compose logs |
head`` does: no traceback, its containers removed, the steps it finished kept, exit 141 (what a
shell reports for a program ended by SIGPIPE, so ``set -o pipefail`` sees it)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import kliko_async
from kliko_async.events import Event

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

KLIKO_ASYNC = Path(sys.executable).parent / "kliko-async"

CHAIN = """\
steps:
  quick:
    image: example/sleep
    params: {seconds: 0.1, tag: quick}
  long:
    image: example/sleep
    params: {seconds: 600, tag: long}
    inputs: [quick]
"""


@pytest.mark.parametrize(("display", "lines"), [("--json", 5), ("--plain", 3)])
def test_a_run_piped_into_head_stops_cleanly_and_keeps_what_it_finished(
    kliko: KlikoCli, tmp_path: Path, display: str, lines: int
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(CHAIN)
    cache = tmp_path / "cache"
    command = f"{KLIKO_ASYNC} run chain.yaml --cache-dir cache"
    done = subprocess.run(  # a 10-minute step: had it waited for it, the timeout fails the test
        ["bash", "-c", f"set -o pipefail; {command} {display} | head -{lines}"],
        cwd=tmp_path,
        env=kliko.env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert len(done.stdout.splitlines()) == lines
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr, done.stderr
    assert done.returncode == 141, done.stderr
    assert "the output was closed" in done.stderr
    assert list((cache / "tmp").iterdir()) == [], "the stopped step's staging is deleted"
    plan = kliko("run", chain, "--cache-dir", cache, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    (quick,) = [line for line in plan.stdout.splitlines() if line.startswith("quick ")]
    (long,) = [line for line in plan.stdout.splitlines() if line.startswith("long ")]
    assert "cached" in quick, "the step finished before the pipe closed is kept"
    assert "cached" not in long


def test_a_pipe_nobody_reads_never_holds_up_the_run(kliko: KlikoCli, tmp_path: Path) -> None:
    """200,000 log lines into a pipe that is not read: the pipe fills after 64 KiB, yet the step
    finishes and is published; the output read afterwards ends in the summary."""
    chain = tmp_path / "flood.yaml"
    chain.write_text("steps:\n  flood: {image: example/flood, params: {lines: 200000}}\n")
    cache = tmp_path / "cache"
    process = subprocess.Popen(
        [str(KLIKO_ASYNC), "run", chain, "--cache-dir", cache, "--plain"],
        cwd=tmp_path,
        env=kliko.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list((cache / "entries").rglob("manifest.json")):
            assert time.monotonic() < deadline, "the step never finished behind the full pipe"
            time.sleep(0.2)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, stderr
    assert stdout.splitlines()[-1].startswith("run "), "the summary still comes, last"
    assert "flood | done" in stdout
    assert "log line(s) were not shown" in stderr, "and the lines it skipped are counted"
    entry = kliko("logs", chain, "flood", "--cache-dir", cache)
    assert len(entry.stdout.splitlines()) == 200000, "the saved log has every line"


@pytest.mark.anyio
async def test_a_consumer_that_raises_changes_nothing_on_the_real_engine(tmp_path: Path) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(CHAIN.replace("seconds: 600", "seconds: 0.1"))
    errors: list[BaseException] = []

    def broken(event: Event) -> None:
        if event.kind == "log_line":
            raise BrokenPipeError(32, "Broken pipe")

    result = await kliko_async.run(
        chain, cache_dir=tmp_path / "cache", on_event=broken, on_event_error=errors.append
    )

    assert result.ok, "not 'no Docker Engine answers', nor any other failure"
    assert [type(e) for e in errors] == [BrokenPipeError]
    long = result.steps["long"].output
    assert long is not None and (long / "slept.txt").read_text() == "slept 0.1 long\n"
