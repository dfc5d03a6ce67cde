"""A run never blocks its event loop, however big the cache folder it works in.

A host application runs kliko-async on its own event loop, next to its own tasks: clean-up of
stale staging folders, the ETA's look at past durations and the removal of folders must not
hold that loop. A watchdog task measures how long the loop was kept busy between two of its
turns (the loop thread's CPU time, so a machine busy with other processes does not count, less
the garbage collector's, which grows with the whole process's heap); a run in a cache folder
with a thousand entries and as many stale staging folders keeps it under 50 ms.
"""

from __future__ import annotations

import gc
import json
import shutil
import threading
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from kliko_async import api
from kliko_async.cache.processes import host_name
from kliko_async.cache.store import Cache
from kliko_async.events import Event, RunStarted
from kliko_async.model.chain import parse_chain
from kliko_async.runtime.fake import FakeContainer, FakeRuntime

pytestmark = pytest.mark.anyio

KLIKO_YML = """\
schema_version: 3
io: split
sections:
  - name: main
    fields:
      - {name: n, type: int, initial: 0}
"""
ENTRIES = 1000
STALE = 1000
DEAD_PID = 4_194_304 + 1  # above Linux's largest pid: no process has it
LIMIT_S = 0.050
"""10 ms here; 93 ms when the stale staging folders are removed on the loop."""


async def write_one(container: FakeContainer) -> int:
    await anyio.sleep(0.02)
    (container.path("/output") / "n.txt").write_text("x\n")
    return 0


class LoopWatchdog:
    """Wakes every 10 ms and notes the longest time the loop thread was busy in between.

    Less the time the cyclic garbage collector took in that thread meanwhile: a full collection
    goes over every object of the process, and in a test session that has run a thousand tests
    one took 106 ms, none of it the run's own work (a collection of two million objects here:
    half a second)."""

    def __init__(self) -> None:
        self.worst_s = 0.0
        self._thread = threading.get_ident()
        self._collecting_since = 0.0
        self.collected_s = 0.0

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != self._thread:
            return
        if phase == "start":
            self._collecting_since = time.thread_time()
        else:
            self.collected_s += time.thread_time() - self._collecting_since

    async def watch(self, until: anyio.Event) -> None:
        gc.callbacks.append(self._on_collection)
        try:
            while not until.is_set():
                busy, collected = time.thread_time(), self.collected_s
                await anyio.sleep(0.01)
                spent = time.thread_time() - busy - (self.collected_s - collected)
                self.worst_s = max(self.worst_s, spent)
        finally:
            gc.callbacks.remove(self._on_collection)


def fill_cache(cache_dir: Path, runtime: FakeRuntime, tmp_path: Path) -> None:
    """Many entries (copies of one real entry under other keys and step names) and many stale
    staging folders of a process that is gone."""
    chain = parse_chain({"steps": {"seed": {"image": "one"}}}, source="seed.yml", base_dir=tmp_path)
    anyio.run(lambda: api.run(chain, runtime=runtime, cache_dir=cache_dir))
    (seed,) = Cache(cache_dir).entries()
    manifest = json.loads((seed.path / "manifest.json").read_text())
    for number in range(ENTRIES):
        key = f"{number:064x}"
        folder = cache_dir / "entries" / key[:2] / key
        shutil.copytree(seed.path / "output", folder / "output")
        manifest.update(key=key, step=f"old-{number}")
        (folder / "manifest.json").write_text(json.dumps(manifest))
    for number in range(STALE):
        folder = cache_dir / "tmp" / f"{number:064x}.{DEAD_PID}.{number:012x}.{host_name()}"
        (folder / "output").mkdir(parents=True)
        (folder / "output" / "half.txt").write_text("half written\n")


async def test_a_run_in_a_big_cache_never_blocks_the_loop_for_50_ms(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.add_image("one", KLIKO_YML, write_one)
    cache_dir = tmp_path / "cache"
    await anyio.to_thread.run_sync(fill_cache, cache_dir, runtime, tmp_path)
    steps = {f"s{i}": {"image": "one", "params": {"n": i + 1}} for i in range(4)}
    chain = parse_chain({"steps": steps}, source="chain.yml", base_dir=tmp_path)
    watchdog, ended = LoopWatchdog(), anyio.Event()

    async def run() -> None:
        try:
            result = await api.run(chain, runtime=runtime, cache_dir=cache_dir, jobs=4)
        finally:
            ended.set()
        assert result.ok

    async with anyio.create_task_group() as tg:
        tg.start_soon(watchdog.watch, ended)
        tg.start_soon(run)

    assert list((cache_dir / "tmp").iterdir()) == [], "the stale staging folders were removed"
    assert len(list(Cache(cache_dir).entry_dirs())) == ENTRIES + 1 + len(steps)
    assert watchdog.worst_s < LIMIT_S, f"the loop was blocked for {watchdog.worst_s:.3f} s"


async def test_the_eta_reads_the_durations_index_not_every_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = FakeRuntime()
    runtime.add_image("one", KLIKO_YML, write_one)
    chain = parse_chain({"steps": {"a": {"image": "one"}}}, source="c.yml", base_dir=tmp_path)
    await api.run(chain, runtime=runtime, cache_dir=tmp_path / "cache")

    def no_scan(self: Cache) -> object:
        raise AssertionError("every manifest of the cache was read")

    monkeypatch.setattr(Cache, "entries", no_scan)
    events: list[Event] = []
    await api.run(
        chain, runtime=runtime, cache_dir=tmp_path / "cache", no_cache=True, on_event=events.append
    )
    (start,) = [e for e in events if isinstance(e, RunStarted)]
    assert set(start.expected_s) == {"a"}


async def instant(container: FakeContainer) -> int:
    """A step that waits for nothing: its container ends as soon as it starts."""
    (container.path("/output") / "n.txt").write_text("x\n")
    return 0


@pytest.mark.parametrize("jobs", [1, 2, 4])
async def test_a_wide_dag_of_instant_steps_gives_the_loop_back_after_every_few(
    tmp_path: Path, jobs: int
) -> None:
    """Steps that wait for nothing (a fake container, a fast commit) must still let the other
    tasks of the loop run (the events' delivery, the display, a host's own): once a job slot
    is taken, every other ready step finds the slots taken and waits, out of the loop's way.

    Counted, not timed: how many containers started between two turns of a task that only
    passes through the loop. Before, a wide DAG's ready steps all stayed ready, and each pass
    of the loop ran a step of every one of them (300 here; 2,500 in a 10,000-step DAG, half a
    second, while the events piled up undelivered)."""
    runtime = FakeRuntime()
    runtime.add_image("one", KLIKO_YML, instant)
    steps: dict[str, dict[str, object]] = {
        f"root{i}": {"image": "one", "params": {"n": i}} for i in range(300)
    }
    for i in range(300):
        steps[f"next{i}"] = {"image": "one", "params": {"n": 1000 + i}, "inputs": [f"root{i}"]}
    chain = parse_chain({"steps": steps}, source="wide.yml", base_dir=tmp_path)
    done = anyio.Event()
    most = 0

    async def watch() -> None:
        nonlocal most
        seen = runtime.started
        while not done.is_set():
            await anyio.lowlevel.checkpoint()
            most = max(most, runtime.started - seen)
            seen = runtime.started

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        result = await api.run(chain, runtime=runtime, cache_dir=tmp_path / "cache", jobs=jobs)
        done.set()
    assert result.ok and runtime.started == 600
    assert most <= 2 * jobs, f"{most} containers started in one pass of the loop"
