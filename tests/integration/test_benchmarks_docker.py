"""Every Docker scenario of the benchmark suite, end to end on a tiny size (``Config(smoke=True)``):
its floor must do the work it stands for (run the image's ``/kliko``, write its output) and its
check must accept a correct kliko-async run, so that a benchmark never quietly measures nothing.
Nothing here is timed."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.docker, pytest.mark.load]


def load(name: str) -> ModuleType:
    """Import ``benchmarks.<name>`` from the repository (it is not an installed package)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"benchmarks.{name}")


def run_scenario(name: str, tmp_path: Path) -> dict[str, Any]:
    harness = load("harness")
    scenario = load(name)
    cfg = harness.Config(smoke=True, reps=1, workdir=tmp_path)
    result = anyio.run(scenario.run, cfg)
    assert result.error is None
    return {row.metric: row for row in result.rows}


def test_a_floor_that_does_not_run_kliko_is_refused(example_images: None, tmp_path: Path) -> None:
    engine_module = load("engine")

    async def main() -> None:
        async with engine_module.Engine() as engine:
            image_id = await engine.image_id("example/sleep")
            config = engine.kliko_config(image_id, {"seconds": 0, "tag": "x"}, tmp_path / "f")
            done = await engine.run(config)
            assert done.exit_code == 0 and done.outputs == ["slept.txt"]
            del config["Cmd"]  # the image's default command: busybox's /bin/sh, which does nothing
            with pytest.raises(engine_module.FloorBroken, match="did not run the step's /kliko"):
                await engine.run(config)

    anyio.run(main)


def test_overhead_scenario_runs_its_floors_and_chain(example_images: None, tmp_path: Path) -> None:
    rows = run_scenario("overhead", tmp_path)
    per_step = rows["per-step time"]
    assert per_step.floor and per_step.kliko and rows["per-step time vs floor + log follow"].floor


def test_fanout_scenario_runs_its_floor_and_chain(example_images: None, tmp_path: Path) -> None:
    rows = run_scenario("fanout", tmp_path)
    wall = rows["wall time, source + 16 branches"]
    assert wall.floor and wall.kliko
    assert wall.floor >= 0.2, "the floor's branches slept (0.2 s in the smoke size)"


def test_logflood_scenario_finds_every_line_in_the_saved_logs(
    example_images: None, tmp_path: Path
) -> None:
    rows = run_scenario("logflood", tmp_path)
    for label in ("live display", "no consumer"):
        complete = rows[f"runs with a complete saved log, {label}"]
        assert complete.ok and complete.kliko == 1
    assert rows["runs with a complete saved log, live display"].floor == 1, "the floor's lines"
    assert rows["wall time, live display to a file"].floor is not None


def test_cached_scenario_reruns_without_containers(example_images: None, tmp_path: Path) -> None:
    rows = run_scenario("cached", tmp_path)
    assert rows["step containers created, first run"].ok
    assert rows["containers created, all re-runs"].ok
    assert rows["cached re-run, CLI --plain + --out"].floor is not None
    assert rows["  exports copied again, same --out"].ok, "unchanged exports are left alone"


def test_bigoutput_scenario_runs_its_floors(example_images: None, tmp_path: Path) -> None:
    rows = run_scenario("bigoutput", tmp_path)
    assert rows["run + publish vs bare run"].floor and rows["publish vs cp -r"].floor
    assert rows["re-use (cached re-run + export) vs cp -r"].kliko


def test_bigchain_scenario_runs_the_cli_on_big_chains(example_images: None, tmp_path: Path) -> None:
    rows = run_scenario("bigchain", tmp_path)
    assert rows["kliko-async --version (floor: python -c 0)"].kliko
    matrix = rows["dry run, 50-way matrix: peak memory"]
    assert matrix.kliko and matrix.kliko > 10  # the CLI's own peak, read through the launcher
    per_step = rows["  per step at 2,000 (floor: at 200)"]
    assert per_step.floor and per_step.kliko
    assert rows["Ctrl-C halfway through the 2,000-step dry run: exited after"].kliko is not None
    assert rows["4-way matrix, cached re-run with --out"].kliko
    assert rows["  containers created"].kliko == 0
