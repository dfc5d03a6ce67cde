"""The cache on big outputs: one step writing 1 GiB in 1,000 files.

The step's image is built here, from a temporary folder (``FROM kliko-async/busybox`` plus its
own kliko.yml and a /kliko that writes ``files`` files of ``bytes_per_file`` bytes from
/dev/zero into /output/d<k>/), and removed at the end. Per repetition:

- bare run: the same container with bare aiodocker, writing into a plain folder;
- kliko-async run into a fresh cache: the step's run time and its publish time (the step's
  ``StepFinished.duration_s`` minus the container part recorded in its manifest: making the tree
  read-only with an fsync per file and folder, hashing every file, the manifest, the rename);
- ``cp -r`` of the published output tree (the floor for publish and re-use), and the same copy
  followed by an fsync of every file (the floor for a *durable* copy);
- re-use: the fully cached re-run with ``out=`` (export of the output, as ``--out`` does);
- ``hash_tree`` of the tree alone (kliko-async's own SHA-256 pass), to split the publish time.

Before every timed action the filesystem is flushed (``sync -f``), so that the writeback of one
action is not billed to the next; every tree stays until the repetition ends.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from benchmarks.engine import Engine
from benchmarks.harness import (
    Config,
    EventClock,
    ScenarioResult,
    Stopwatch,
    progress,
    remove_tree,
    run_process,
    tree_stats,
)
from kliko_async import api
from kliko_async.cache.hashing import hash_tree
from kliko_async.cache.provenance import EXPORT_MARKER
from kliko_async.cache.store import Cache
from kliko_async.model.chain import parse_chain

NAME = "bigoutput"
TAG = "kliko-async-bench/bigoutput:latest"

DOCKERFILE = """\
FROM kliko-async/busybox
COPY kliko.yml /kliko.yml
COPY kliko /kliko
CMD ["/kliko"]
"""

KLIKO_YML = """\
schema_version: 3
name: kliko-async-bench/bigoutput
description: Writes many big files, for the cache benchmark.
io: split
sections:
  - name: size
    description: How much
    fields:
      - name: files
        type: int
        initial: 1000
      - name: bytes_per_file
        type: int
        initial: 1073741
      - name: tag
        type: str
        initial: ""
"""

KLIKO_SCRIPT = """\
#!/bin/sh
set -eu
p() { sed -n "s/^  \\"$1\\": //p" /parameters.json | sed 's/,$//; s/^"//; s/"$//'; }
files=$(p files)
size=$(p bytes_per_file)
i=0
while [ "$i" -lt "$files" ]; do
    d=/output/d$((i / 100))
    [ -d "$d" ] || mkdir "$d"
    head -c "$size" /dev/zero > "$d/f$i.bin"
    i=$((i + 1))
done
echo "bigoutput: wrote $files files of $size bytes ($(p tag))"
"""


def write_context(folder: Path) -> None:
    """The image's build context: Dockerfile, kliko.yml and an executable /kliko."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Dockerfile").write_text(DOCKERFILE)
    (folder / "kliko.yml").write_text(KLIKO_YML)
    script = folder / "kliko"
    script.write_text(KLIKO_SCRIPT)
    script.chmod(0o755)


async def build_image(folder: Path) -> None:
    write_context(folder)
    await run_process(["docker", "build", "-q", "-t", TAG, str(folder)])


async def remove_image() -> None:
    await run_process(["docker", "rmi", "-f", TAG], check=False)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (what a durable copy costs on top of cp)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def run(cfg: Config) -> ScenarioResult:
    files = cfg.size(1000, 1000, smoke=20)
    total = cfg.size(1 << 30, 64 << 20, smoke=1 << 20)
    per_file = total // files
    reps = cfg.repeats(5, 1)
    result = ScenarioResult(
        NAME,
        f"one step writing {total / 2**20:,.0f} MiB in {files:,} files: publish and re-use "
        "vs cp -r",
        params={"files": files, "bytes_per_file": per_file, "reps": reps, "image": TAG},
    )
    progress(f"  building {TAG}")
    await build_image(cfg.tmp("bigoutput-image"))
    try:
        async with Engine() as engine:
            image_id = await engine.image_id(TAG)
            for rep in range(reps):
                await one_rep(cfg, engine, image_id, result, rep, files, per_file)
    finally:
        await remove_image()
        remove_tree(cfg.workdir / "bigoutput-image")

    cp = result.median("cp_s")
    result.row(
        "run + publish vs bare run",
        "s",
        floor=result.median("bare_run_s"),
        kliko=result.median("kliko_run_s"),
    )
    result.row("publish vs cp -r", "s", floor=cp, kliko=result.median("publish_s"))
    result.row(
        "publish vs cp -r + fsync",
        "s",
        floor=result.median("cp_fsync_s"),
        kliko=result.median("publish_s"),
    )
    result.row("  hash_tree alone (SHA-256)", "s", kliko=result.median("hash_s"))
    result.row(
        "re-use (cached re-run + export) vs cp -r",
        "s",
        floor=cp,
        kliko=result.median("reuse_s"),
    )
    return result


async def one_rep(
    cfg: Config,
    engine: Engine,
    image_id: str,
    result: ScenarioResult,
    rep: int,
    files: int,
    per_file: int,
) -> None:
    work = cfg.tmp(f"bigoutput-{rep}")
    params = {"files": files, "bytes_per_file": per_file, "tag": uuid.uuid4().hex[:8]}
    chain = parse_chain(
        {"steps": {"big": {"image": TAG, "params": params}}},
        source="benchmarks/bigoutput",
        base_dir=work,
    )
    cache_dir = work / "cache"
    published: list[Path] = []

    async def bare() -> None:
        progress(f"  rep {rep + 1}: bare aiodocker run")
        config = engine.kliko_config(image_id, params, work / "bare")
        done = await engine.run(config)
        assert done.exit_code == 0, "the bare run failed"
        written = tree_stats(work / "bare" / "output")
        assert written[0] == files, f"the bare run wrote {written[0]} files, not {files}"
        result.add("bare_run_s", done.wall_s)

    async def kliko() -> None:
        progress(f"  rep {rep + 1}: kliko-async run into a fresh cache")
        clock = EventClock()
        started = time.perf_counter()
        outcome = await api.run(chain, cache_dir=cache_dir, jobs=1, on_event=clock)
        result.add("kliko_run_s", time.perf_counter() - started)
        step = outcome.steps["big"]
        assert outcome.ok and step.output is not None, "the kliko-async run failed"
        finished = next(e for e in clock.events if e.kind == "step_finished")
        entry = Cache(cache_dir).lookup(step.key)
        assert entry is not None, "the step is not in the cache"
        result.add("publish_s", finished.duration_s - entry.manifest.duration_s)
        published.append(step.output)

    # The bare run and the kliko-async run alternate which goes first. Before each timed action
    # the disk settles (syncfs of this filesystem): the writeback, and the discards of deleted
    # trees ("discard" mounts), of one action must not be billed to the next.
    for action in (bare, kliko) if rep % 2 == 0 else (kliko, bare):
        await settle(work)
        await action()

    output = published[0]
    count, size = tree_stats(output)
    result.params["measured_files"] = count
    result.params["measured_bytes"] = size

    async def copy() -> None:
        progress(f"  rep {rep + 1}: cp -r (+ fsync)")
        target = work / "cp"
        with Stopwatch() as sw:
            await run_process(["cp", "-r", str(output), str(target)])
        result.add("cp_s", sw.elapsed)
        with Stopwatch() as sync:
            fsync_tree(target)
        result.add("cp_fsync_s", sw.elapsed + sync.elapsed)

    async def reuse() -> None:
        progress(f"  rep {rep + 1}: cached re-run with out=")
        out = work / "out"
        started = time.perf_counter()
        outcome = await api.run(chain, cache_dir=cache_dir, jobs=1, out=out)
        result.add("reuse_s", time.perf_counter() - started)
        assert outcome.count("cached") == 1, "the re-run was not cached"
        marker = out / "big" / EXPORT_MARKER  # kliko-async's own: not the step's output
        exported = tree_stats(out / "big")
        if marker.is_file():
            exported = (exported[0] - 1, exported[1] - marker.stat().st_size)
        assert exported == (count, size), (
            f"the export {exported} differs from the entry {(count, size)}"
        )

    for action in (copy, reuse) if rep % 2 == 0 else (reuse, copy):
        await settle(work)
        await action()
    await settle(work)
    with Stopwatch() as sw:
        hash_tree(output)
    result.add("hash_s", sw.elapsed)
    remove_tree(work)
    await settle(cfg.workdir)


async def settle(path: Path) -> None:
    """Flush the filesystem holding ``path`` (``sync -f``: syncfs), outside any timing."""
    await run_process(["sync", "-f", str(path)])
