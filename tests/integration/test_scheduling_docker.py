"""Scheduling on the real engine: no head-of-line blocking behind another run's lock, and
resources the machine can never give refused before anything runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from kliko_async import api
from kliko_async.cache.store import Cache

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

TWO = """\
steps:
  locked: {image: example/sleep, params: {seconds: 0.1, tag: locked}}
  free: {image: example/sleep, params: {seconds: 0.1, tag: free}}
"""


def test_a_step_waiting_for_another_runs_lock_lets_a_ready_step_run(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    chain, cache, log = tmp_path / "two.yaml", tmp_path / "cache", tmp_path / "run.log"
    chain.write_text(TWO)
    key = anyio.run(lambda: api.dry_run(chain, cache_dir=cache)).steps["locked"].key
    held, release = threading.Event(), threading.Event()

    async def other_run() -> None:  # another kliko-async computing the same step
        async with Cache(cache).lock(key):
            held.set()
            await anyio.to_thread.run_sync(release.wait)

    holder = threading.Thread(target=anyio.run, args=(other_run,))
    holder.start()
    try:
        assert held.wait(10)
        process = kliko.popen("run", chain, "--cache-dir", cache, "--jobs", "1", "--plain", log=log)
        deadline = time.monotonic() + 60
        while "free | done" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        output = log.read_text()
        assert "free | done" in output, "the ready step ran while the other waited for the lock"
        assert "locked | started" not in output
        assert process.poll() is None, "and the locked one still waits"
    finally:
        release.set()
        holder.join()
    assert process.wait(timeout=60) == 0, log.read_text()
    assert "locked | started" in log.read_text()


@pytest.mark.parametrize(
    ("resources", "said"),
    [("{cpus: 4096}", "4096 CPUs"), ("{memory: 1P}", "memory")],
    ids=["cpus", "memory"],
)
def test_resources_the_machine_can_never_give_are_refused_before_anything_runs(
    kliko: KlikoCli, tmp_path: Path, resources: str, said: str
) -> None:
    chain = tmp_path / "big.yaml"
    chain.write_text(
        "steps:\n"
        "  fine: {image: example/sleep, params: {seconds: 0.1}}\n"
        f"  huge: {{image: example/sleep, inputs: [fine], resources: {resources}}}\n"
    )

    done = kliko("run", chain, "--cache-dir", tmp_path / "cache", "--plain")

    assert done.returncode != 0
    assert "step 'huge'" in done.stderr and said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert "started" not in done.stdout, "nothing ran, not even the step that fits"
