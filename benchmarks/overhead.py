"""Per-step overhead: a linear chain of trivial steps against bare create/start/wait/remove.

Floor: the same trivial container (example/sleep, seconds 0, with kliko-async's mounts) created,
started, waited for and removed with aiodocker, one after another, N times. A second floor also
follows the container's log stream while waiting (kliko-async always does, to save the log).
kliko-async: an N-step linear chain of example/sleep steps (distinct tags, so nothing is cached)
run with ``kliko_async.api.run(chain, cache_dir=<fresh>, jobs=1)``. The kliko-async time is the
whole ``api.run`` call: planning (image inspect, one kliko.yml probe into the fresh cache),
running, publishing. Target (DESIGN.md): per-step time at most 1.05 x the floor.
"""

from __future__ import annotations

import time
import uuid

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

NAME = "overhead"
IMAGE = "example/sleep"
TARGET = 1.05


async def run(cfg: Config) -> ScenarioResult:
    steps = cfg.size(20, 8, smoke=2)
    reps = cfg.repeats(5, 1)
    result = ScenarioResult(
        NAME,
        f"{steps}-step linear chain of trivial steps, jobs=1, vs bare aiodocker",
        params={"steps": steps, "reps": reps, "image": IMAGE},
    )
    async with Engine() as engine:
        image_id = await engine.image_id(IMAGE)
        floor_dir = cfg.tmp("overhead-floor")
        config = engine.kliko_config(image_id, {"seconds": 0.0, "tag": "floor"}, floor_dir)
        await engine.run(config)  # warm-up: the first container on a fresh engine is slow

        async def floor(rep: int) -> None:
            started = time.perf_counter()
            for _ in range(steps):
                done = await engine.run(config)
                assert done.exit_code == 0, "the floor container failed"
            result.add("floor_per_step_s", (time.perf_counter() - started) / steps)
            check_slept(floor_dir / "output", 0.0, "floor", "the overhead floor")

        async def floor_logs(rep: int) -> None:
            started = time.perf_counter()
            for _ in range(steps):
                done = await engine.run(config, consume_logs=True)
                assert done.exit_code == 0, "the floor container failed"
            result.add("floor_logs_per_step_s", (time.perf_counter() - started) / steps)
            check_slept(floor_dir / "output", 0.0, "floor", "the overhead floor")

        async def kliko(rep: int) -> None:
            work = cfg.tmp(f"overhead-kliko-{rep}")
            nonce = uuid.uuid4().hex[:8]
            chain = parse_chain(
                {
                    "steps": [
                        {
                            "name": f"s{i:02d}",
                            "image": IMAGE,
                            "params": {"seconds": 0, "tag": f"{nonce}-{i}"},
                        }
                        for i in range(steps)
                    ]
                },
                source="benchmarks/overhead",
                base_dir=work,
            )
            clock = EventClock()
            started = time.perf_counter()
            outcome = await api.run(chain, cache_dir=work / "cache", jobs=1, on_event=clock)
            wall = time.perf_counter() - started
            assert outcome.ok and outcome.count("done") == steps, "the chain did not run fully"
            check_steps_slept(outcome, chain)
            plan = clock.first["run_started"] - started
            result.add("kliko_per_step_s", wall / steps)
            result.add("kliko_plan_s", plan)
            result.add("kliko_per_step_after_plan_s", (wall - plan) / steps)
            durations = [e.duration_s for e in clock.events if e.kind == "step_finished"]
            result.add("kliko_step_duration_s", sum(durations) / len(durations))
            remove_tree(work)

        await interleaved(
            reps,
            [("floor", floor), ("kliko-async", kliko), ("floor + log follow", floor_logs)],
        )
        remove_tree(floor_dir)

    floor_s = result.median("floor_per_step_s")
    kliko_s = result.median("kliko_per_step_s")
    result.row(
        "per-step time",
        "s",
        floor=floor_s,
        kliko=kliko_s,
        target=f"<= {TARGET:.2f}x",
        ok=kliko_s <= TARGET * floor_s,
    )
    result.row(
        "per-step time vs floor + log follow",
        "s",
        floor=result.median("floor_logs_per_step_s"),
        kliko=kliko_s,
    )
    result.row(
        "per-step time after planning",
        "s",
        floor=floor_s,
        kliko=result.median("kliko_per_step_after_plan_s"),
    )
    result.row("planning (once per run)", "s", kliko=result.median("kliko_plan_s"))
    result.row(
        "StepFinished.duration_s (mean)",
        "s",
        floor=floor_s,
        kliko=result.median("kliko_step_duration_s"),
    )
    return result
