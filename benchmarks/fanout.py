"""Fan-out: one source step feeding 16 branches of 2 s each, all 16 at once.

Floor: with bare aiodocker, one trivial source container (example/sleep, seconds 0), then 16
example/sleep containers of 2 s created and started together (each create, start, wait,
remove). The floor's time for the 16 alone is reported too (the bare "16 x 2 s together").
kliko-async: ``src`` (seconds 0) and 16 branches ``b00``..``b15`` (seconds 2, distinct tags)
with ``inputs: [src]``, ``jobs=16``, fresh cache. Target: wall time at most 1.10 x the floor.
"""

from __future__ import annotations

import time
import uuid

import anyio

from benchmarks.engine import Engine
from benchmarks.harness import (
    Config,
    EventClock,
    ScenarioResult,
    check_slept,
    check_steps_slept,
    interleaved,
    remove_tree,
)
from kliko_async import api
from kliko_async.model.chain import parse_chain

NAME = "fanout"
IMAGE = "example/sleep"
TARGET = 1.10


async def run(cfg: Config) -> ScenarioResult:
    branches = cfg.size(16, 16, smoke=2)
    seconds = 0.2 if cfg.smoke else 2.0
    reps = cfg.repeats(5, 1)
    result = ScenarioResult(
        NAME,
        f"1 source -> {branches} branches of {seconds:g} s, jobs={branches}, vs bare aiodocker",
        params={"branches": branches, "seconds": seconds, "reps": reps, "image": IMAGE},
    )
    async with Engine() as engine:
        image_id = await engine.image_id(IMAGE)
        floor_dir = cfg.tmp("fanout-floor")
        source = engine.kliko_config(image_id, {"seconds": 0.0, "tag": "src"}, floor_dir / "src")
        configs = [
            engine.kliko_config(
                image_id, {"seconds": seconds, "tag": f"b{i:02d}"}, floor_dir / f"b{i:02d}"
            )
            for i in range(branches)
        ]
        await engine.run(source)  # warm-up

        async def floor(rep: int) -> None:
            started = time.perf_counter()
            await engine.run(source)
            fanned = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for config in configs:
                    tg.start_soon(engine.run, config)
            ended = time.perf_counter()
            result.add("floor_wall_s", ended - started)
            result.add("floor_branches_s", ended - fanned)
            check_slept(floor_dir / "src" / "output", 0.0, "src", "the fan-out floor's source")
            for i in range(branches):  # each branch slept as long as kliko-async's do
                folder = floor_dir / f"b{i:02d}" / "output"
                check_slept(folder, seconds, f"b{i:02d}", "the fan-out floor's branch")

        async def kliko(rep: int) -> None:
            work = cfg.tmp(f"fanout-kliko-{rep}")
            nonce = uuid.uuid4().hex[:8]
            steps: dict[str, object] = {
                "src": {"image": IMAGE, "params": {"seconds": 0, "tag": f"{nonce}-src"}}
            }
            for i in range(branches):
                steps[f"b{i:02d}"] = {
                    "image": IMAGE,
                    "params": {"seconds": seconds, "tag": f"{nonce}-{i}"},
                    "inputs": ["src"],
                }
            chain = parse_chain({"steps": steps}, source="benchmarks/fanout", base_dir=work)
            clock = EventClock()
            started = time.perf_counter()
            outcome = await api.run(chain, cache_dir=work / "cache", jobs=branches, on_event=clock)
            ended = time.perf_counter()
            assert outcome.ok and outcome.count("done") == branches + 1, "the fan-out failed"
            check_steps_slept(outcome, chain)
            src_done = next(
                e.time for e in clock.events if e.kind == "step_finished" and e.step == "src"
            )
            run_done = next(e.time for e in clock.events if e.kind == "run_finished")
            result.add("kliko_wall_s", ended - started)
            result.add("kliko_branches_s", (run_done - src_done).total_seconds())
            result.add("kliko_plan_s", clock.first["run_started"] - started)
            remove_tree(work)

        await interleaved(reps, [("floor", floor), ("kliko-async", kliko)])
        remove_tree(floor_dir)

    floor_s = result.median("floor_wall_s")
    kliko_s = result.median("kliko_wall_s")
    result.row(
        "wall time, source + 16 branches",
        "s",
        floor=floor_s,
        kliko=kliko_s,
        target=f"<= {TARGET:.2f}x",
        ok=kliko_s <= TARGET * floor_s,
    )
    result.row(
        "16 branches only (after source)",
        "s",
        floor=result.median("floor_branches_s"),
        kliko=result.median("kliko_branches_s"),
    )
    result.row("planning (once per run)", "s", kliko=result.median("kliko_plan_s"))
    result.row(
        "ideal (source + 2 s) vs kliko-async",
        "s",
        floor=seconds + result.median("floor_wall_s") - result.median("floor_branches_s"),
        kliko=kliko_s,
    )
    return result
