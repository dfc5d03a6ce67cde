"""The regression guard: the scheduler's per-step cost (fake runtime, 2,000 steps, durable cache
on tmpfs) must not grow past 1.5x the committed baseline (``benchmarks/guard_baseline.json``).

Not a timed test: the cost is CPU time per step divided by the CPU time of a calibration loop
measured in the same process (see ``benchmarks/guard.py``), so a slower or busier machine moves
both alike. After a deliberate change of cost, refresh the baseline with
``python -m benchmarks.guard --update``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_per_step_cost_stays_within_half_again_of_the_baseline(tmp_path: Path) -> None:
    shm = Path("/dev/shm")  # where the guard puts its cache (benchmarks.scheduler.tmpfs_dir)
    if not (shm.is_dir() and os.access(shm, os.W_OK)):  # on a disk, its cost blurs ours
        pytest.skip("no writable /dev/shm, where the guard puts its cache")
    baseline = json.loads((ROOT / "benchmarks" / "guard_baseline.json").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.guard", "--steps", str(baseline["steps"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    now = json.loads(done.stdout.strip().splitlines()[-1])
    limit = 1.5 * baseline["per_step_in_calibrations"]
    assert now["per_step_in_calibrations"] <= limit, (
        f"a scheduler step now costs {now['per_step_in_calibrations']:.1f} calibration loops "
        f"({now['cpu_per_step_s'] * 1e3:.2f} ms of CPU), over 1.5x the baseline's "
        f"{baseline['per_step_in_calibrations']:.1f}: find what made it dearer "
        "(python -m benchmarks --only scheduler; py-spy), or refresh the baseline after a "
        "deliberate change (python -m benchmarks.guard --update)"
    )
