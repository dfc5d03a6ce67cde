"""Instructions a scheduler step costs, counted (not timed): for A/B work on the hot path.

``python -m benchmarks.instructions`` runs the ``scheduler`` scenario's in-memory measurement
(:func:`benchmarks.scheduler.measure` with the cache stub, staging on tmpfs) under Valgrind's
cachegrind at two sizes, in a process that ends as soon as it is measured (its folder is removed
afterwards, uncounted), and prints the user-space instructions of the larger run less the
smaller's, a step: start-up, imports and the run's fixed costs cancel out. The count is the
same to a few parts in ten thousand from run to run, where wall time on this project's VM moves
by 10%, so a change worth 2% shows at once. It includes building and planning the chain (about
a quarter) and leaves out the kernel's time (system calls, about a quarter of the wall time:
count those with ``strace -c``). About 20 s; needs ``valgrind`` (Debian's package). Figures:
benchmarks/README.md, "eighth session".
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

from benchmarks.harness import ROOT, remove_tree
from benchmarks.scheduler import measure, tmpfs_dir

_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(steps: int, *, real_cache: bool = False) -> int:
    """User-space instructions of one process measuring ``steps`` steps (:func:`_child`)."""
    folder = Path(tempfile.mkdtemp(prefix="kliko-bench-instr-", dir=tmpfs_dir()))
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "benchmarks.instructions", "--child", str(steps), str(folder)]
    command += ["--real-cache"] if real_cache else []
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    finally:
        remove_tree(folder)
    found = _REFS.search(done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def _child(steps: int, folder: Path, *, real_cache: bool = False) -> None:
    """The measured process: the in-memory run (or the real cache's, in ``folder``), then out at
    once (no clean-up counted)."""
    numbers = anyio.run(lambda: measure(steps, workdir=folder, memory_cache=not real_cache))
    os._exit(0 if numbers["ok"] and numbers["done"] == steps else 1)


def per_step(small: int, large: int, *, real_cache: bool = False) -> float:
    """Instructions a step: the ``large`` run's less the ``small`` one's, over the difference."""
    more = instructions(large, real_cache=real_cache) - instructions(small, real_cache=real_cache)
    return more / (large - small)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("--small", type=int, default=200, help="steps of the smaller run")
    parser.add_argument("--large", type=int, default=1200, help="steps of the larger run")
    parser.add_argument(
        "--real-cache",
        action="store_true",
        help="the real cache on tmpfs (sealing, manifests, lock files) instead of the stub",
    )
    parser.add_argument("--child", nargs=2, metavar=("STEPS", "FOLDER"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        _child(int(options.child[0]), Path(options.child[1]), real_cache=options.real_cache)
    if shutil.which("valgrind") is None:
        parser.exit(2, "benchmarks.instructions: valgrind is missing (apt install valgrind)\n")
    if options.large <= options.small:
        parser.error("--large must be more steps than --small")
    count = per_step(options.small, options.large, real_cache=options.real_cache)
    where = "the real cache on tmpfs" if options.real_cache else "the in-memory cache stub"
    print(f"{count:,.0f} instructions a step ({where})")


if __name__ == "__main__":
    main()
