"""Keying a data input (issue 26): a folder of 1,000 files and 2 GB, as a chain's ``data:``.

Per repetition, side by side with the floor, ``sha256sum`` over every file (what hashing the
whole folder each time costs, as tools without a stat cache do), all with a warm page cache:

- the first keying, with an empty stat cache: every file is read (MB/s against sha256sum's);
- a re-run with nothing changed: only ``stat`` calls (target: under 0.3 s);
- a re-run after one file changed: that file is read again, no other (checked), against
  ``sha256sum`` of that one file.

The folder is made once (random bytes, dated back a minute so the stat cache may remember its
files) and removed at the end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks.harness import Config, ScenarioResult, Stopwatch, progress, remove_tree, run_process
from kliko_async.cache.datahash import StatCache, digest_data

NAME = "datainput"
RERUN_TARGET_S = 0.3


def make_folder(root: Path, files: int, total: int) -> list[Path]:
    per_file = total // files
    block = os.urandom(min(per_file, 1 << 20))
    paths = []
    for i in range(files):
        path = root / f"d{i % 10}" / f"f{i:05d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.write(i.to_bytes(8, "little"))  # every file differs
            left = per_file - 8
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)
        paths.append(path)
    date_back(paths)
    return paths


def date_back(paths: list[Path]) -> None:
    old = time.time_ns() - 60 * 10**9
    for path in paths:
        os.utime(path, ns=(old, old))


async def sha256sum(paths: list[Path]) -> float:
    with Stopwatch() as sw:
        done = await run_process(["sha256sum", *map(str, paths)])
    if done.returncode != 0 or done.stdout.count(b"\n") != len(paths):
        raise RuntimeError(f"sha256sum did not hash every file: {done.stderr[-500:]!r}")
    return sw.elapsed


async def run(cfg: Config) -> ScenarioResult:
    files = cfg.size(1000, 200, smoke=20)
    total = cfg.size(2 << 30, 100 << 20, smoke=1 << 20)
    reps = cfg.repeats(3, 1)
    result = ScenarioResult(
        NAME,
        f"a data folder of {files:,} files and {total / 2**30:.2f} GiB: keying it first, "
        "unchanged, after one file changed; floor: sha256sum of every file",
        params={"files": files, "bytes": total, "reps": reps},
    )
    root = cfg.tmp("datainput")
    try:
        progress(f"  writing {files} files, {total / 2**20:,.0f} MiB")
        paths = make_folder(root / "obs", files, total)
        await sha256sum(paths)  # warm the page cache for both
        for rep in range(reps):
            progress(f"  rep {rep + 1}/{reps}")
            stats_file = root / f"hashes-{rep}.json"
            result.add("floor_all_s", await sha256sum(paths))
            with Stopwatch() as first:
                stats = StatCache(stats_file)
                keyed = digest_data(root / "obs", stats)
                stats.save()
            if keyed.hashed_files != files:
                raise RuntimeError(f"the first keying read {keyed.hashed_files} of {files} files")
            result.add("first_s", first.elapsed)
            with Stopwatch() as again:
                unchanged = digest_data(root / "obs", StatCache(stats_file))
            if unchanged.hashed_files != 0 or unchanged.digest != keyed.digest:
                raise RuntimeError("an unchanged folder was read again, or keyed differently")
            result.add("unchanged_s", again.elapsed)
            changed_file = paths[rep % len(paths)]
            with changed_file.open("r+b") as f:
                f.write((rep + 1000).to_bytes(8, "little"))
            date_back([changed_file])
            result.add("floor_one_s", await sha256sum([changed_file]))
            with Stopwatch() as one:
                changed = digest_data(root / "obs", StatCache(stats_file))
            if changed.hashed_files != 1 or changed.digest == keyed.digest:
                raise RuntimeError(f"one changed file read {changed.hashed_files} files")
            result.add("one_s", one.elapsed)
    finally:
        remove_tree(root)
    mb = total / 1e6
    floor_all, first_s = result.median("floor_all_s"), result.median("first_s")
    result.row("first keying: time", "s", floor=floor_all, kliko=first_s)
    result.row(
        "first keying: MB/s (sha256sum: floor)", "MB/s", floor=mb / floor_all, kliko=mb / first_s
    )
    unchanged_s = result.median("unchanged_s")
    result.row(
        "re-run, nothing changed",
        "s",
        floor=floor_all,
        kliko=unchanged_s,
        target=f"< {RERUN_TARGET_S} s",
        ok=unchanged_s < RERUN_TARGET_S,
    )
    result.row(
        "one file changed", "s", floor=result.median("floor_one_s"), kliko=result.median("one_s")
    )
    return result
