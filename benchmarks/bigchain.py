"""Big chains through the CLI, as a user runs them: start-up, dry runs, Ctrl-C, a cached sweep.

Every figure is a whole ``kliko-async`` process, timed from outside (and its peak memory read
through a small launcher, since a child of this process would inherit this process's memory
high-water mark in ``ru_maxrss``):

- ``kliko-async --version`` and ``--help`` against ``python -c pass`` (the same interpreter);
  target <= 150 ms each;
- ``run --dry-run`` of a 10,000-way ``matrix:`` chain (example/sleep); target <= 3 s, < 200 MB;
- ``run --dry-run`` of plain chains of 10,000 and 100,000 steps (a step per line, every tenth
  starting a new line of ten): the time per step at 100,000 against at 10,000 says whether
  planning scales linearly (target <= 1.5x);
- Ctrl-C (SIGINT) halfway through the 100,000-step dry run: seconds until the process has
  exited; target <= 2 s;
- a 300-way matrix run once on the real engine, then again fully cached with ``--out``: the
  whole process (target <= 2.5 s) and the containers created (from the engine's events; 0).
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio

from benchmarks.cached import cli_command, ours, owner_label, run_cli
from benchmarks.harness import (
    MANAGED_LABEL,
    Config,
    EngineEvents,
    ScenarioResult,
    interleaved,
    progress,
    remove_tree,
)

NAME = "bigchain"
IMAGE = "example/sleep"

STARTUP_TARGET_S = 0.150
MATRIX_TARGET_S = 3.0
MATRIX_TARGET_MB = 200.0
LINEAR_TARGET = 1.5
INTERRUPT_TARGET_S = 2.0
CACHED_TARGET_S = 2.5

PEAK = Path(__file__).with_name("peak.py")
"""The launcher that reads a command's own peak memory (see benchmarks/peak.py)."""


def measured(command: list[str]) -> tuple[float, float]:
    """Run ``command`` (stdout discarded; its first word an absolute path) through the
    launcher: wall seconds (the launcher's bare interpreter start included) and peak MB."""
    with tempfile.NamedTemporaryFile("r") as peak:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(PEAK), peak.name, *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{command[:3]} failed: {done.stderr.decode()[-1000:]}")
        return wall, int(peak.read()) / 1024


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed: {done.stderr.decode()[-1000:]}")
    return time.perf_counter() - started


def matrix_chain(path: Path, ways: int, nonce: str) -> Path:
    """A ``ways``-way matrix step and its consumer. The nonce is quoted: a hex nonce of digits
    only (85648048) would be a YAML integer, which a str parameter refuses."""
    tags = ", ".join(f"{nonce}-{i}" for i in range(ways))
    path.write_text(
        "steps:\n"
        f"  s:\n    image: {IMAGE}\n    matrix: {{tag: [{tags}]}}\n    params: {{seconds: 0}}\n"
        f"  all: {{image: {IMAGE}, inputs: [s], params: {{seconds: 0, tag: '{nonce}'}}}}\n"
    )
    return path


def plain_chain(path: Path, steps: int) -> Path:
    with path.open("w") as out:
        out.write("steps:\n")
        for i in range(steps):
            inputs = f", inputs: [s{i - 1:06d}]" if i % 10 else ""
            out.write(f"  s{i:06d}: {{image: {IMAGE}, params: {{tag: t{i}}}{inputs}}}\n")
    return path


def interrupted(command: list[str], after_s: float) -> float:
    """Seconds from SIGINT, sent ``after_s`` into ``command``, until it has exited."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # SIGINT as a terminal's Ctrl-C would find it: a benchmark started in the background
        # (`&`) inherits SIGINT ignored, and Python keeps an ignored SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(after_s)
    if process.poll() is not None:
        raise RuntimeError("the dry run ended before it could be interrupted: give it more steps")
    process.send_signal(signal.SIGINT)
    sent = time.perf_counter()
    process.wait()
    return time.perf_counter() - sent


async def run(cfg: Config) -> ScenarioResult:
    ways = cfg.size(10_000, 2_000, smoke=50)
    small, big = cfg.size(10_000, 2_000, smoke=200), cfg.size(100_000, 20_000, smoke=2_000)
    cached_ways = cfg.size(300, 30, smoke=4)
    reps = cfg.repeats(5, 1)
    result = ScenarioResult(
        NAME,
        f"the CLI on big chains: start-up, dry runs ({ways}-way matrix, {small} and {big} "
        f"steps), Ctrl-C, a {cached_ways}-way cached re-run with --out",
        params={"ways": ways, "small": small, "big": big, "cached_ways": cached_ways},
    )
    work = cfg.tmp("bigchain")
    cache = work / "cache"
    cli = cli_command()
    nonce = uuid.uuid4().hex[:8]
    matrix = matrix_chain(work / "matrix.yaml", ways, nonce)
    small_chain, big_chain = (
        plain_chain(work / "small.yaml", small),
        plain_chain(work / "big.yaml", big),
    )
    dry = ["run", "--dry-run", "--cache-dir", str(cache)]

    async def startup(rep: int) -> None:
        result.add("python_s", await anyio.to_thread.run_sync(timed, [sys.executable, "-c", "0"]))
        result.add("version_s", await anyio.to_thread.run_sync(timed, [*cli, "--version"]))
        result.add("help_s", await anyio.to_thread.run_sync(timed, [*cli, "--help"]))

    async def dry_runs(rep: int) -> None:
        wall, peak = await anyio.to_thread.run_sync(measured, [*cli, *dry, str(matrix)])
        result.add("matrix_s", wall)
        result.add("matrix_mb", peak)
        result.add("small_s", await anyio.to_thread.run_sync(timed, [*cli, *dry, str(small_chain)]))

    await interleaved(reps, [("start-up", startup), ("dry runs", dry_runs)])
    progress(f"  {big} steps, dry run and Ctrl-C")
    big_reps = max(1, reps // 2)
    for _ in range(big_reps):
        seconds = await anyio.to_thread.run_sync(timed, [*cli, *dry, str(big_chain)])
        result.add("big_s", seconds)
        interrupt = functools.partial(interrupted, [*cli, *dry, str(big_chain)], seconds / 2)
        result.add("interrupt_s", await anyio.to_thread.run_sync(interrupt))

    progress(f"  {cached_ways}-way matrix: first run on the engine, then cached with --out")
    sweep = matrix_chain(work / "sweep.yaml", cached_ways, f"{nonce}-sweep")
    first = [*cli, "run", str(sweep), "--plain", "--jobs", "4", "--cache-dir", str(cache)]
    await anyio.to_thread.run_sync(timed, first)
    owners: set[str] = set()

    async def cached_rerun(rep: int) -> None:
        out = work / f"out-{rep}"
        command = [*cli, "run", str(sweep), "--plain", "--cache-dir", str(cache), "--out", str(out)]
        started = time.perf_counter()
        pid, code, errors = await anyio.to_thread.run_sync(run_cli, command)
        result.add("cached_s", time.perf_counter() - started)
        owners.add(owner_label(pid))
        if code != 0:
            raise RuntimeError(f"the cached re-run failed: {errors.decode()[-2000:]}")
        if not (out / "all").is_dir():
            raise RuntimeError(f"the cached re-run exported no output to {out}")
        remove_tree(out)

    async with EngineEvents("event=create", f"label={MANAGED_LABEL}") as watch:
        await interleaved(reps, [("cached re-run", cached_rerun)])
        await anyio.sleep(1)  # the event stream may bring the last creations a moment late
    made = ours(watch.events, set(), owners, "")
    remove_tree(work)

    startup_rows = [("kliko-async --version", "version_s"), ("kliko-async --help", "help_s")]
    for metric, sample in startup_rows:
        seconds = result.median(sample)
        result.row(
            f"{metric} (floor: python -c 0)",
            "s",
            floor=result.median("python_s"),
            kliko=seconds,
            target=f"<= {STARTUP_TARGET_S * 1000:.0f} ms",
            ok=seconds <= STARTUP_TARGET_S,
        )
    seconds, peak = result.median("matrix_s"), max(result.samples["matrix_mb"])
    result.row(
        f"dry run, {ways:,}-way matrix",
        "s",
        kliko=seconds,
        target=f"<= {MATRIX_TARGET_S:g} s",
        ok=seconds <= MATRIX_TARGET_S,
    )
    result.row(
        f"dry run, {ways:,}-way matrix: peak memory",
        "MB",
        kliko=peak,
        target=f"< {MATRIX_TARGET_MB:.0f} MB",
        ok=peak < MATRIX_TARGET_MB,
    )
    per_small = result.median("small_s") / small
    per_big = result.median("big_s") / big
    result.row(f"dry run, {small:,} steps", "s", kliko=result.median("small_s"))
    result.row(f"dry run, {big:,} steps", "s", kliko=result.median("big_s"))
    result.row(
        f"  per step at {big:,} (floor: at {small:,})",
        "ms",
        floor=per_small * 1000,
        kliko=per_big * 1000,
        target=f"<= {LINEAR_TARGET:g}x",
        ok=per_big <= LINEAR_TARGET * per_small,
    )
    answer = max(result.samples["interrupt_s"])
    result.row(
        f"Ctrl-C halfway through the {big:,}-step dry run: exited after",
        "s",
        kliko=answer,
        target=f"<= {INTERRUPT_TARGET_S:g} s",
        ok=answer <= INTERRUPT_TARGET_S,
    )
    seconds = result.median("cached_s")
    result.row(
        f"{cached_ways}-way matrix, cached re-run with --out",
        "s",
        kliko=seconds,
        target=f"<= {CACHED_TARGET_S:g} s",
        ok=seconds <= CACHED_TARGET_S,
    )
    result.row(
        "  containers created",
        "count",
        kliko=len(made),
        target="0",
        ok=not made,
    )
    return result
