"""``kliko-async run ... | head``: when stdout closes under a run, it stops as ``docker compose
logs | head`` does: no traceback, its containers removed, the steps it finished kept, exit 141
(what a shell reports for a program ended by SIGPIPE, so ``set -o pipefail`` sees it)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

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
    params: {seconds: 30, tag: long}
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
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} {display} | head -{lines}"],
        cwd=tmp_path,
        env=kliko.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started

    assert len(done.stdout.splitlines()) == lines
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr, done.stderr
    assert done.returncode == 141, done.stderr
    assert "the output was closed" in done.stderr
    assert took < 20, f"it waited {took:.0f} s for the 30 s step instead of stopping it"
    assert list((cache / "tmp").iterdir()) == [], "the stopped step's staging is deleted"
    plan = kliko("run", chain, "--cache-dir", cache, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    (quick,) = [line for line in plan.stdout.splitlines() if line.startswith("quick ")]
    (long,) = [line for line in plan.stdout.splitlines() if line.startswith("long ")]
    assert "cached" in quick, "the step finished before the pipe closed is kept"
    assert "cached" not in long
