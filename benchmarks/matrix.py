"""A 1,000-way ``matrix:`` loaded and planned on the fake runtime (no Docker).

``python -m benchmarks.matrix [--ways 1000] [--repeats 5]`` writes a chain file whose one step
has a matrix of 4 weightings x N/4 values of ``robust`` (the values from a file), plus a consumer
of every expansion, and times loading it (``load_chain``: YAML, expansion, DAG checks) and
planning it (``api.dry_run``: kliko.yml validation of every combination, keys, cache lookups in
a real, empty cache folder). Target: well under a second for both together.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from kliko_async import api
from kliko_async.model.chain import load_chain
from kliko_async.runtime.fake import FakeRuntime

IMAGER_KLIKO_YML = """\
schema_version: 3
io: split
sections:
  - name: main
    fields:
      - {name: weight, type: choice, choices: {natural: n, uniform: u, briggs: b, super: s}}
      - {name: robust, type: float, initial: 0.0}
"""
MERGE_KLIKO_YML = "schema_version: 3\nio: split\nsections: []\n"
WEIGHTS = ("natural", "uniform", "briggs", "super")


def write_chain(folder: Path, ways: int) -> Path:
    per_weight = ways // len(WEIGHTS)
    (folder / "robust.yml").write_text("".join(f"- {n / 1000}\n" for n in range(per_weight)))
    chain = folder / "chain.yml"
    chain.write_text(
        "steps:\n"
        "  image:\n"
        "    image: bench/imager\n"
        f"    matrix: {{weight: [{', '.join(WEIGHTS)}], robust: {{from-file: robust.yml}}}}\n"
        "  report: {image: bench/merge, inputs: [image]}\n"
    )
    return chain


async def measure(folder: Path, ways: int) -> tuple[float, float, int]:
    runtime = FakeRuntime()
    runtime.add_image("bench/imager", IMAGER_KLIKO_YML)
    runtime.add_image("bench/merge", MERGE_KLIKO_YML)
    path = write_chain(folder, ways)
    started = time.perf_counter()
    chain = load_chain(path)
    loaded = time.perf_counter()
    plan = await api.dry_run(chain, runtime=runtime, cache_dir=folder / "cache")
    planned = time.perf_counter()
    return loaded - started, planned - loaded, len(plan.order)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.matrix", description=__doc__)
    parser.add_argument("--ways", type=int, default=1000, help="expansions (a multiple of 4)")
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    loads: list[float] = []
    plans: list[float] = []
    steps = 0
    for _ in range(options.repeats):
        with tempfile.TemporaryDirectory(prefix="kliko-bench-matrix-") as folder:
            load_s, plan_s, steps = anyio.run(measure, Path(folder), options.ways)
        loads.append(load_s)
        plans.append(plan_s)
    total = [a + b for a, b in zip(loads, plans, strict=True)]
    print(
        f"{options.ways}-way matrix ({steps} steps), median of {options.repeats}: "
        f"load {statistics.median(loads):.3f} s, plan {statistics.median(plans):.3f} s, "
        f"together {statistics.median(total):.3f} s (max {max(total):.3f} s)"
    )


if __name__ == "__main__":
    main()
