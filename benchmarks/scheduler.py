"""The scheduler alone: a big random DAG planned and run on the fake runtime.

No Docker: ``kliko_async.runtime.fake.FakeRuntime`` plays every container with a coroutine that
writes one small file and one log line. The cache is real (a temporary folder), so every step is
staged, published (fsync, hash, manifest, rename) and locked as with real containers. The chain
is a seeded random DAG: step i reads up to three random earlier steps.

Each measurement runs in a fresh subprocess (``python -m benchmarks.scheduler --steps N``) so that
its peak RSS (VmHWM, not ``ru_maxrss``) is its own; the Python start-up and imports are in that
peak but not in the times. Times: building the Chain (``parse_chain``), planning (until
``RunStarted``), and running (the scheduler, until ``api.run`` returns). Targets: plan + run
< 5 s with the cache on disk, < 2 s with the in-memory cache stub; peak < 200 MB. Each is
shown beside its floor (:func:`file_floor`): the bare file work of as many steps in the same
folder, which no scheduler can skip and which the file system alone sets (on this project's
test VM, a few times the 5 s target on its disk; about 1 s on tmpfs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from pathlib import Path
from typing import Any

import anyio

from benchmarks.harness import (
    ROOT,
    Config,
    EventClock,
    ScenarioResult,
    progress,
    remove_tree,
    run_process,
)
from kliko_async import api
from kliko_async.cache.entry import CacheEntry, Manifest, Staging
from kliko_async.cache.sealing import Sealed
from kliko_async.cache.store import Cache
from kliko_async.collector import fewer_collections
from kliko_async.engine.bus import EventBus
from kliko_async.engine.images import ImageResolver
from kliko_async.engine.plan import plan_chain
from kliko_async.engine.resources import machine_cpus
from kliko_async.engine.scheduler import Scheduler
from kliko_async.errors import CacheError
from kliko_async.events import RunStarted
from kliko_async.model.chain import parse_chain
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

NAME = "scheduler"
IMAGE = "bench/noop"
TARGET_S = 5.0
"""Plan + run with the durable cache on disk (DESIGN.md: group commits allowed)."""
TARGET_MEMORY_S = 2.0
"""Plan + run with the in-memory cache stub: the scheduler alone."""
TARGET_MB = 200.0

NOOP_KLIKO_YML = """\
schema_version: 3
name: bench/noop
description: Writes one small file; for the scheduler benchmark.
io: split
sections:
  - name: noop
    description: Which step
    fields:
      - name: i
        type: int
        initial: 0
"""


async def noop_program(container: FakeContainer) -> int:
    """A trivial step: one small output file, one log line."""
    (container.path("/output") / "out.txt").write_text("ok\n")
    container.log("noop: done")
    return 0


def random_dag(steps: int, seed: int = 1, max_inputs: int = 3) -> dict[str, Any]:
    """Chain file data: ``steps`` steps, each reading 0..max_inputs random earlier steps."""
    rng = random.Random(seed)
    data: dict[str, Any] = {}
    for i in range(steps):
        step: dict[str, Any] = {"image": IMAGE, "params": {"i": i}}
        if i > 0:
            inputs = rng.sample(range(i), rng.randint(0, min(max_inputs, i)))
            step["inputs"] = [f"s{j:05d}" for j in sorted(inputs)]
        data[f"s{i:05d}"] = step
    return {"steps": data}


def tmpfs_dir() -> Path | None:
    """/dev/shm when it is there and writable: a cache there costs no disk I/O and no fsync."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def _status_mb(field: str) -> float:
    """A field of /proc/self/status in MB, 0 when /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mb() -> float:
    """Current resident set size in MB (VmRSS)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB: VmHWM, which belongs to this process's own
    memory; ``ru_maxrss`` would also hold the parent's peak, which Linux keeps across fork and
    exec (getrusage where /proc is not there)."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def file_floor(steps: int, folder: Path, *, publish: bool) -> float:
    """Seconds for the file work ``steps`` steps cannot do without, in ``folder``: the floor
    that plan + run is read against (on a slow file system it alone exceeds the targets).

    Each step: its staging folder with ``output/`` and ``scratch/``, ``parameters.json``, the
    log, the fake container's one output file, then ``scratch/`` removed. With ``publish`` (the
    cache on disk) also its manifest and the rename into ``entries/``, and one ``syncfs``
    barrier per 64 steps (a group commit's). No Python beyond the loop: no hashing, no models.
    """
    root = folder / "floor"
    tmp, entries = root / "tmp", root / "entries"
    tmp.mkdir(parents=True)
    entries.mkdir()
    sync = getattr(os, "syncfs", None)
    started = time.perf_counter()
    for i in range(steps):
        staging = f"{tmp}/s{i}"
        os.mkdir(staging)
        os.mkdir(f"{staging}/output")
        os.mkdir(f"{staging}/scratch")
        with open(f"{staging}/scratch/parameters.json", "w") as out:
            out.write(json.dumps({"noop": {"i": i}}))
        with open(f"{staging}/log", "w") as out:
            out.write("2026-12-05T00:00:00.000000Z stdout noop: done\n")
        with open(f"{staging}/output/out.txt", "w") as out:
            out.write("ok\n")
        os.unlink(f"{staging}/scratch/parameters.json")
        os.rmdir(f"{staging}/scratch")
        if publish:
            with open(f"{staging}/manifest.json", "w") as out:
                out.write(json.dumps({"key": f"{i:064x}", "outputs": {"out.txt": "0" * 64}}))
            os.rename(staging, f"{entries}/s{i}")
            if i % 64 == 63 and sync is not None:
                fd = os.open(entries, os.O_RDONLY)
                try:
                    sync(fd)
                finally:
                    os.close(fd)
    elapsed = time.perf_counter() - started
    remove_tree(root)
    return elapsed


_NO_LOCK = nullcontext()


class MemoryCache(Cache):
    """Entries and locks in memory; staging folders stay real (the scheduler writes into them).

    With it the scheduler's own cost shows without the cache's file work (manifest reads,
    sealing, fsync, hashing, renames): what the "scheduler alone" target can be held to.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._entries: dict[str, CacheEntry] = {}

    def lookup(self, key: str) -> CacheEntry | None:
        return self._entries.get(key)

    def publish(self, staging: Staging, manifest_without_outputs: Manifest) -> CacheEntry:
        entry = CacheEntry(key=staging.key, path=staging.path, manifest=manifest_without_outputs)
        self._entries[staging.key] = entry
        return entry

    def publish_many(
        self, staged: Sequence[tuple[Staging, Manifest] | Sealed]
    ) -> list[CacheEntry | CacheError]:
        entries: list[CacheEntry | CacheError] = []
        for item in staged:
            if isinstance(item, Sealed):
                self._entries[item.staging.key] = item.entry
                entries.append(item.entry)
            else:
                entries.append(self.publish(*item))
        return entries

    def seal_small(self, staging: Staging, manifest_without_outputs: Manifest) -> Sealed:
        """Sealed as the real cache seals a small output (every one here), without its file
        work: publish_many keeps the entry in memory."""
        entry = CacheEntry(key=staging.key, path=staging.path, manifest=manifest_without_outputs)
        return Sealed(staging, entry, [])

    def sync(self) -> None:
        pass

    def lock(
        self,
        key: str,
        *,
        shared: bool = False,
        poll: float = 0.05,
        on_wait: Callable[[], None] | None = None,
        patience: float = 0.0,
    ) -> AbstractAsyncContextManager[None]:
        return _NO_LOCK  # one process, one run: nothing to hold


async def measure(
    steps: int,
    *,
    workdir: Path,
    seed: int = 1,
    jobs: int | None = None,
    memory_cache: bool = False,
) -> dict[str, Any]:
    """Build, plan and run a random DAG of ``steps`` fake steps with a cache under ``workdir``.

    Returns the times (``load_s``, ``plan_s``, ``run_s``, ``total_s`` = plan + run) and counts.
    ``memory_cache`` runs the plan and the scheduler directly (as ``api.run`` does) with a
    :class:`MemoryCache`.
    """
    data = random_dag(steps, seed)
    edges = sum(len(s.get("inputs", [])) for s in data["steps"].values())
    runtime = FakeRuntime(keep_jobs=False)  # as an engine: nothing of a job kept here
    runtime.add_image(IMAGE, NOOP_KLIKO_YML, noop_program)
    started = time.perf_counter()
    chain = parse_chain(data, source="benchmarks/scheduler", base_dir=workdir)
    loaded = time.perf_counter()
    clock = EventClock(keep=False)
    if memory_cache:
        cache = MemoryCache(workdir / "cache")
        cache.ensure_writable()
        bus = EventBus()
        bus.on_event(clock)
        resolver = ImageResolver(runtime, None)
        with fewer_collections():  # as api.run
            async with bus.delivering():
                plan = await plan_chain(chain, resolver=resolver, cache=cache, emit=bus.emit)
                clock(RunStarted(run_id="bench", steps=[], jobs=0))  # marks the end of planning
                scheduler = Scheduler(
                    plan,
                    runtime=runtime,
                    cache=cache,
                    emit=bus.emit,
                    run_id="bench",
                    jobs=jobs or machine_cpus(),
                    wants_log_lines=bus.wants_log_lines,
                )
                outcome = await scheduler.run()
    else:
        outcome = await api.run(
            chain, runtime=runtime, cache_dir=workdir / "cache", jobs=jobs, on_event=clock
        )
    ended = time.perf_counter()
    planned = clock.first["run_started"]
    return {
        "steps": steps,
        "edges": edges,
        "done": outcome.count("done"),
        "ok": outcome.ok,
        "containers": runtime.started,
        "max_running": runtime.max_running,
        "load_s": loaded - started,
        "plan_s": planned - loaded,
        "run_s": ended - planned,
        "total_s": ended - loaded,
    }


def main(argv: list[str] | None = None) -> None:
    """The subprocess: one measurement, printed as one JSON object on stdout."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scheduler")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--tmp-root", type=Path, default=None, help="where the cache goes")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations")
    parser.add_argument("--memory-cache", action="store_true", help="entries and locks in memory")
    parser.add_argument(
        "--file-floor", action="store_true", help="then time the bare file work, in the same folder"
    )
    options = parser.parse_args(argv)
    baseline = rss_mb()
    if options.tracemalloc:
        tracemalloc.start()
    with tempfile.TemporaryDirectory(prefix="kliko-bench-sched-", dir=options.tmp_root) as folder:
        numbers = anyio.run(
            lambda: measure(
                options.steps,
                workdir=Path(folder),
                seed=options.seed,
                jobs=options.jobs,
                memory_cache=options.memory_cache,
            )
        )
        if options.tracemalloc:
            numbers["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        numbers["peak_rss_mb"] = peak_rss_mb()
        remove_tree(Path(folder) / "cache")
        if options.file_floor:
            numbers["floor_s"] = file_floor(
                options.steps, Path(folder), publish=not options.memory_cache
            )
    numbers["rss_before_mb"] = baseline
    print(json.dumps(numbers))


async def measure_in_subprocess(
    steps: int,
    *,
    tmp_root: Path | None = None,
    seed: int = 1,
    trace: bool = False,
    memory_cache: bool = False,
    floor: bool = False,
) -> dict[str, Any]:
    """One measurement in a fresh ``python -m benchmarks.scheduler`` process."""
    command = [sys.executable, "-m", "benchmarks.scheduler", "--steps", str(steps)]
    command += ["--seed", str(seed)] + (["--tracemalloc"] if trace else [])
    command += ["--memory-cache"] if memory_cache else []
    command += ["--file-floor"] if floor else []
    if tmp_root is not None:
        command += ["--tmp-root", str(tmp_root)]
    done = await run_process(command, cwd=ROOT)
    numbers: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if not numbers["ok"] or numbers["done"] != steps:
        raise RuntimeError(f"the fake run did not finish every step: {numbers}")
    return numbers


async def run(cfg: Config) -> ScenarioResult:
    return await scenario(cfg, cfg.size(10_000, 1_000))


async def scenario(cfg: Config, steps: int, *, variants: bool = True) -> ScenarioResult:
    """The scenario for a DAG of ``steps`` steps (the smoke test uses a tiny one).

    Without ``variants`` only the run with the cache in the tmp folder is measured (no tmpfs,
    no in-memory cache): one subprocess per repetition.
    """
    reps = cfg.repeats(3, 1)
    tmpfs = tmpfs_dir() if variants else None
    result = ScenarioResult(
        NAME,
        f"{steps}-step random DAG on the fake runtime, real cache in a tmp folder",
        params={
            "steps": steps,
            "reps": reps,
            "max_inputs": 3,
            "seed": 1,
            "jobs": "CPUs",
            "tmp_folder": str(cfg.workdir),
            "tmpfs_folder": str(tmpfs),
        },
    )
    for rep in range(reps):
        progress(f"  rep {rep + 1}/{reps}: cache in {cfg.workdir}")
        numbers = await measure_in_subprocess(steps, tmp_root=cfg.workdir, floor=True)
        for key in ("load_s", "plan_s", "run_s", "total_s", "peak_rss_mb", "rss_before_mb"):
            result.add(key, float(numbers[key]))
        result.add("floor_s", float(numbers["floor_s"]))
        result.params["edges"] = numbers["edges"]
        if tmpfs is not None:
            progress(f"  rep {rep + 1}/{reps}: cache in {tmpfs} (tmpfs: no disk, no fsync cost)")
            numbers = await measure_in_subprocess(steps, tmp_root=tmpfs, floor=True)
            for key in ("plan_s", "run_s", "total_s", "floor_s"):
                result.add(f"tmpfs_{key}", float(numbers[key]))
        if variants:
            where = tmpfs or cfg.workdir
            progress(f"  rep {rep + 1}/{reps}: in-memory cache (staging in {where})")
            numbers = await measure_in_subprocess(
                steps, tmp_root=where, memory_cache=True, floor=True
            )
            for key in ("plan_s", "run_s", "total_s", "peak_rss_mb", "floor_s"):
                result.add(f"memory_{key}", float(numbers[key]))
    if variants and not cfg.quick:
        progress("  one more run under tracemalloc (slower; memory only)")
        traced = await measure_in_subprocess(steps, tmp_root=tmpfs or cfg.workdir, trace=True)
        result.add("tracemalloc_peak_mb", float(traced["tracemalloc_peak_mb"]))

    total = result.median("total_s")
    peak = result.median("peak_rss_mb")
    result.row(
        "plan + run (floor: the bare file work of as many steps, same folder)",
        "s",
        floor=result.median("floor_s"),
        kliko=total,
        target=f"< {TARGET_S:g} s",
        ok=total < TARGET_S,
    )
    result.row("  plan", "s", kliko=result.median("plan_s"))
    result.row("  run", "s", kliko=result.median("run_s"))
    if tmpfs is not None:
        result.row(
            "plan + run, cache on tmpfs",
            "s",
            floor=result.median("tmpfs_floor_s"),
            kliko=result.median("tmpfs_total_s"),
        )
        result.row("  run, cache on tmpfs", "s", kliko=result.median("tmpfs_run_s"))
    if variants:
        memory = result.median("memory_total_s")
        result.row(
            "plan + run, in-memory cache stub",
            "s",
            floor=result.median("memory_floor_s"),
            kliko=memory,
            target=f"< {TARGET_MEMORY_S:g} s",
            ok=memory < TARGET_MEMORY_S,
        )
        result.row("  run, in-memory cache stub", "s", kliko=result.median("memory_run_s"))
    result.row("building the Chain (parse_chain)", "s", kliko=result.median("load_s"))
    result.row(
        "peak RSS (VmHWM); floor: RSS after imports",
        "MB",
        floor=result.median("rss_before_mb"),
        kliko=peak,
        target=f"< {TARGET_MB:g} MB",
        ok=peak < TARGET_MB,
    )
    if "tracemalloc_peak_mb" in result.samples:
        result.row(
            "tracemalloc peak (Python heap)", "MB", kliko=result.median("tracemalloc_peak_mb")
        )
    return result


if __name__ == "__main__":
    main()
