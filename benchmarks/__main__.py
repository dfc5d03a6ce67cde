"""``python -m benchmarks [--quick] [--only NAME ...] [--json-out FILE]``: run the suite.

Prints a table of medians (floor, kliko-async, ratio, target) and writes every sample to
``benchmarks/results/latest.json`` (gitignored). ``--quick`` is a smoke run of under a minute.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from benchmarks import (
    bigchain,
    bigoutput,
    cached,
    datainput,
    fanout,
    logflood,
    overhead,
    scheduler,
    slurmfanout,
    slurmmatrix,
)
from benchmarks.harness import (
    RESULTS_DIR,
    Config,
    ScenarioResult,
    engine_available,
    engine_version,
    ensure_example_images,
    machine_info,
    managed_containers,
    progress,
    remove_bench_containers,
    table,
    write_json,
)

Scenario = Callable[[Config], Awaitable[ScenarioResult]]

SCENARIOS: dict[str, tuple[Scenario, bool]] = {
    # name: (run, needs a Docker Engine)
    overhead.NAME: (overhead.run, True),
    fanout.NAME: (fanout.run, True),
    cached.NAME: (cached.run, True),
    scheduler.NAME: (scheduler.run, False),
    logflood.NAME: (logflood.run, True),
    bigoutput.NAME: (bigoutput.run, True),
    bigchain.NAME: (bigchain.run, True),
    datainput.NAME: (datainput.run, False),
    slurmfanout.NAME: (slurmfanout.run, True),  # only with --only: needs scripts/slurm-cluster
    slurmmatrix.NAME: (slurmmatrix.run, True),  # only with --only: needs scripts/slurm-cluster
}
OPT_IN = {slurmfanout.NAME, slurmmatrix.NAME}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="kliko-async benchmarks: each scenario against its own floor, interleaved.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 repeat")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=list(SCENARIOS),
        help=f"run only these scenarios ({', '.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--json-out",
        type=Path,
        default=RESULTS_DIR / "latest.json",
        help="where to write the results (default: benchmarks/results/latest.json)",
    )
    parser.add_argument("--reps", type=int, help="repetitions of every scenario (override)")
    parser.add_argument(
        "--tmp-dir", type=Path, help="parent of the temporary work folder (default: $TMPDIR)"
    )
    return parser.parse_args(argv)


async def run_all(names: list[str], cfg: Config) -> list[ScenarioResult]:
    results: list[ScenarioResult] = []
    docker = engine_available()
    if docker and any(SCENARIOS[n][1] for n in names):
        ensure_example_images()
    for name in names:
        run, needs_docker = SCENARIOS[name]
        progress(f"== {name}")
        started = time.perf_counter()
        if needs_docker and not docker:
            error = "no Docker Engine answers (scripts/ensure-docker)"
            result = ScenarioResult(name, "", error=error)
        else:
            try:
                result = await run(cfg)
            except Exception as error:  # one broken scenario must not hide the others
                traceback.print_exc()
                result = ScenarioResult(name, "", error=f"{type(error).__name__}: {error}")
        result.wall_s = time.perf_counter() - started
        results.append(result)
        progress(table([result]))
        progress(f"   ({result.wall_s:.1f} s)")
    return results


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    names = options.only or [n for n in SCENARIOS if n not in OPT_IN]
    meta = machine_info()
    meta["command"] = shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]])
    meta["quick"] = options.quick
    if engine_available():
        meta["docker"] = engine_version()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kliko-bench-", dir=options.tmp_dir) as folder:
        cfg = Config(quick=options.quick, reps=options.reps, workdir=Path(folder))
        try:
            results = anyio.run(run_all, names, cfg)
        finally:
            if engine_available():
                left = remove_bench_containers()
                if left:
                    progress(f"removed {left} leftover floor container(s)")
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    meta["load_avg_end"] = machine_info()["load_avg"]
    write_json(options.json_out, results, meta)

    print()
    print(
        f"kliko-async benchmarks, {meta['date']}, {meta['cpus']} CPUs, "
        f"load {meta['load_avg']} -> {meta['load_avg_end']}, git {meta['git_commit']}, "
        f"{'quick' if options.quick else 'full'} run in {meta['wall_s']} s"
    )
    print(f"command: {meta['command']}")
    print(f"kliko_async: {meta['kliko_async']} ({meta['kliko_async_from']})")
    print()
    print(table(results))
    notes = [f"{r.name}: {note}" for r in results for note in r.notes]
    for note in notes:
        print(f"note: {note}")
    print(f"\nresults: {options.json_out}")
    if engine_available() and managed_containers():
        print("warning: kliko-async containers exist on the engine (maybe someone else's)")
    failed = [r for r in results if r.error is not None]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
