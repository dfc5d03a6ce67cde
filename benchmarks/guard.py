"""The CI's guard against scheduler regressions: per-step cost against a committed baseline.

``python -m benchmarks.guard`` runs a 2,000-step random DAG on the fake runtime (the
``scheduler`` scenario's, with a durable cache on tmpfs, ``/dev/shm``: on this project's VM the
same run with the cache on disk cost 0.07 to 0.26 calibration loops a step in three runs in a
row, the disk's work and not ours, so a doubling of ours could hide in it; on tmpfs 0.045 to
0.047 in four) and measures the process's CPU time per
step (``time.process_time``: all threads, not the time spent waiting for the disk or for a CPU
another process holds). It divides that by the CPU time of a fixed calibration loop measured in
the same process, just before and after (the better of the two), so that the figure is the same
on a slower or busier machine. ``--update`` writes it to ``benchmarks/guard_baseline.json``;
``tests/test_scheduler_guard.py`` fails when it grows past 1.5x that baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks.harness import ROOT
from benchmarks.scheduler import measure, tmpfs_dir

BASELINE = ROOT / "benchmarks" / "guard_baseline.json"
STEPS = 2_000
LIMIT = 1.5
"""Fail when the normalised per-step cost exceeds the baseline's by more than half."""


def calibration_s(rounds: int = 5) -> float:
    """CPU seconds of a fixed loop of the kinds of work a step costs (dicts, JSON, hashing,
    small objects); the best of ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for i in range(4_000):
            record = {"step": f"s{i:05d}", "inputs": [f"s{j:05d}" for j in range(i % 4)], "i": i}
            text = json.dumps(record, sort_keys=True)
            hashlib.sha256(text.encode()).hexdigest()
            sorted(record.items(), key=lambda item: item[0])
        best = min(best, time.process_time() - started)
    return best


def measure_guard(steps: int = STEPS, tmp_root: Path | None = None) -> dict[str, Any]:
    """One guard measurement in this process: CPU per step, calibration, their ratio."""
    before = calibration_s()
    with tempfile.TemporaryDirectory(prefix="kliko-guard-", dir=tmp_root) as folder:
        started = time.process_time()
        numbers = anyio.run(lambda: measure(steps, workdir=Path(folder)))
        cpu = time.process_time() - started
    after = calibration_s()
    if not numbers["ok"] or numbers["done"] != steps:
        raise RuntimeError(f"the fake run did not finish every step: {numbers}")
    calibration = min(before, after)
    per_step = cpu / steps
    return {
        "steps": steps,
        "cpu_per_step_s": per_step,
        "calibration_s": calibration,
        "per_step_in_calibrations": per_step / calibration,
        "wall_total_s": numbers["total_s"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guard")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--update", action="store_true", help=f"write {BASELINE.name}")
    options = parser.parse_args(argv)
    shm = tmpfs_dir()
    if shm is None:
        sys.exit("benchmarks.guard: needs a writable /dev/shm (the cache goes on tmpfs)")
    result = measure_guard(options.steps, shm)
    print(json.dumps(result))
    if options.update:
        result["command"] = "python -m benchmarks.guard --update"
        BASELINE.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {BASELINE}", file=sys.stderr)


if __name__ == "__main__":
    main()
