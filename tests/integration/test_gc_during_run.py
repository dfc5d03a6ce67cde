"""`cache gc` while a run is under way leaves alone everything that run holds.

A run holds the entries of its finished and cached steps until it has exported them: `cache gc`
with options that would remove everything (``--older-than 0s --max-size 0``) run meanwhile keeps
them, the run completes and its export is whole; once the run has ended, gc removes them.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_interrupt import wait_for_running_container

from conftest import KlikoCli

pytestmark = pytest.mark.docker

KLIKO_YML = """\
schema_version: 3
name: tagger
io: split
sections:
  - name: main
    fields:
      - {name: tag, type: str, initial: x}
"""
# Writes its tag; the step tagged "long" then waits until the test drops /output/go.
SCRIPT = r"""#!/bin/sh
tag=$(sed -n 's/.*"tag": *"\([^"]*\)".*/\1/p' /parameters.json)
echo "$tag" > /output/made.txt
if [ "$tag" = long ]; then
  until [ -f /output/go ]; do sleep 0.05; done
fi
"""


def staging_output(cache: Path, process: subprocess.Popen[bytes]) -> Path:
    """The /output folder of the run's one running step (its staging folder, named after its
    process)."""
    (found,) = [p / "output" for p in (cache / "tmp").iterdir() if f".{process.pid}." in p.name]
    return found


def test_gc_during_a_run_keeps_what_the_run_holds_and_the_export_completes(
    kliko: KlikoCli, tmp_path: Path, kliko_image_builder: Callable[[Path, str, str], str]
) -> None:
    image = kliko_image_builder(tmp_path / "tagger", KLIKO_YML, SCRIPT)
    cache, out = tmp_path / "cache", tmp_path / "out"
    first = tmp_path / "first.yaml"
    first.write_text(f"steps:\n  early:\n    image: {image}\n    params: {{tag: early}}\n")
    done = kliko("run", first, "--cache-dir", cache, "--plain")
    assert done.returncode == 0, done.stdout + done.stderr

    chain = tmp_path / "chain.yaml"
    chain.write_text(
        f"""\
steps:
  early:   # a cache hit: made by the run before
    image: {image}
    params: {{tag: early}}
  fresh:   # made by this run, read by no other step
    image: {image}
    params: {{tag: fresh}}
  long:
    image: {image}
    params: {{tag: long}}
"""
    )
    log = tmp_path / "run.log"
    run = kliko.popen(
        "run", chain, "--cache-dir", cache, "--out", out, "--plain", "--jobs", "2", log=log
    )
    try:
        wait_for_running_container(run, "label=io.kliko-async.step=long")
        deadline = time.monotonic() + 60
        while "fresh | done" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            assert run.poll() is None, log.read_text()
            time.sleep(0.05)

        gc = kliko("cache", "gc", "--cache-dir", cache, "--older-than", "0s", "--max-size", "0")
        assert gc.returncode == 0, gc.stdout + gc.stderr
        assert gc.stdout.startswith("removed 0 entries"), gc.stdout

        (staging_output(cache, run) / "go").write_text("")
        code = run.wait(timeout=120)
    finally:
        if run.poll() is None:  # the test failed halfway: stop the run as Ctrl-C would
            run.terminate()
            run.wait(timeout=60)
    output = log.read_text()
    assert code == 0, output
    for step in ("early", "fresh", "long"):
        assert (out / step / "made.txt").read_text() == f"{step}\n", output

    verify = kliko("cache", "verify", "--cache-dir", cache)
    assert verify.returncode == 0, verify.stdout
    after = kliko("cache", "gc", "--cache-dir", cache, "--older-than", "0s", "--max-size", "0")
    assert after.stdout.startswith("removed 3 entries"), "the run has ended: nothing is held"
