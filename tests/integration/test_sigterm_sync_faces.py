"""SIGTERM to a program that runs a chain through a synchronous face (Kliko's ``run_chain``, a
Luigi ``KlikoTask``): its containers are stopped and removed before the process ends, by the
signal as before. Luigi stops a task this way (``worker_timeout``, a worker shutting down after
Ctrl-C); Python's default had ended the process at once, the container running on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker]

RUN_CHAIN = """\
import sys
from kliko_async import run_chain
run_chain([(sys.argv[1], {{"tag": "run_chain"}})], cache_dir={cache!r})
"""

LUIGI_TASK = """\
import sys
import luigi
from kliko_async.luigi import KlikoTask

class Held(KlikoTask):
    cache_dir = {cache!r}

    @classmethod
    def image_name(cls):
        return sys.argv[1]

luigi.build([Held(tag="luigi")], local_scheduler=True)
"""


def containers_of(pid: int, *states: str) -> list[str]:
    owner = f"label=io.kliko-async.owner={socket.gethostname()}:{pid}"
    filters = [arg for state in states for arg in ("--filter", f"status={state}")]
    return subprocess.run(
        ["docker", "ps", "-aq", "--filter", owner, *filters],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip


@pytest.mark.parametrize("program", [RUN_CHAIN, LUIGI_TASK], ids=["run_chain", "luigi"])
def test_sigterm_stops_and_removes_the_container_then_ends_the_process(
    program: str, held_image: str, tmp_path: Path
) -> None:
    script = tmp_path / "pipeline.py"
    script.write_text(program.format(cache=str(tmp_path / "cache")))
    log = tmp_path / "pipeline.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(script), held_image], stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while not containers_of(process.pid, "running"):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no container ran:\n{log.read_text()}"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == -signal.SIGTERM, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert containers_of(process.pid) == [], log.read_text()
