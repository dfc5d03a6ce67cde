"""Fully cached re-run of a big chain: how long, and that no container is created.

The chain is a binary tree of N trivial example/sleep steps (step i reads step (i-1)//2; distinct
tags), written to a YAML file. It is run once into a fresh cache (real containers; this takes a
while), then re-run fully cached:

- through the library, ``await kliko_async.api.run(chain_file, cache_dir=...)``; target < 1 s;
- through the CLI, ``kliko-async run chain.yaml --plain --cache-dir ... --out ...`` timed end to
  end (Python start-up and the export of every output to ``--out`` included). Its floor is
  ``kliko-async --version``: Python start-up plus importing the CLI.

Containers created during the re-runs are counted from the engine's events
(``docker events --filter event=create --filter label=io.kliko-async.managed=1``); target 0.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import yaml

from benchmarks.engine import Engine
from benchmarks.harness import (
    MANAGED_LABEL,
    Config,
    EngineEvents,
    EventClock,
    ScenarioResult,
    interleaved,
    progress,
    remove_tree,
    run_process,
)
from kliko_async import api

NAME = "cached"
IMAGE = "example/sleep"


def tree_chain(steps: int, nonce: str) -> dict[str, Any]:
    """A chain file's data: a binary tree of ``steps`` trivial steps."""
    data: dict[str, Any] = {}
    for i in range(steps):
        step: dict[str, Any] = {"image": IMAGE, "params": {"seconds": 0, "tag": f"{nonce}-{i}"}}
        if i > 0:
            step["inputs"] = [f"s{(i - 1) // 2:04d}"]
        data[f"s{i:04d}"] = step
    return {"steps": data}


def owner_label(pid: int) -> str:
    """The ``io.kliko-async.owner`` label kliko-async puts on the containers of process ``pid``."""
    return f"{socket.gethostname()}:{pid}"


def ours(
    events: list[dict[str, Any]], run_ids: set[str], owners: set[str], image_id: str
) -> list[dict[str, Any]]:
    """The create events of containers this benchmark's runs made (steps and image probes).

    Step containers carry their run id; containers of newer kliko-async versions carry their
    owner (``host:pid``), so those of other processes on a shared engine are left out. A probe
    without an owner label (older versions) of this scenario's image counts as ours.
    """
    found = []
    for event in events:
        labels = event.get("Actor", {}).get("Attributes", {})
        owner = labels.get("io.kliko-async.owner")
        if (
            labels.get("io.kliko-async.run") in run_ids
            or owner in owners
            or (
                owner is None
                and labels.get("io.kliko-async.probe") == "1"
                and labels.get("image") == image_id
            )
        ):
            found.append(event)
    return found


def run_cli(command: list[str]) -> tuple[int, int, bytes]:
    """Run the CLI (stdout discarded); its pid, exit status and stderr."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, errors = process.communicate()
    return process.pid, process.returncode, errors


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "kliko-async"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kliko_async"]


async def run(cfg: Config) -> ScenarioResult:
    steps = cfg.size(1000, 50, smoke=6)
    reps = cfg.repeats(5, 2)
    first_jobs = 4
    result = ScenarioResult(
        NAME,
        f"{steps}-step chain (binary tree), fully cached re-run: library and CLI",
        params={"steps": steps, "reps": reps, "first_run_jobs": first_jobs, "image": IMAGE},
    )
    work = cfg.tmp("cached")
    chain_file = work / "chain.yaml"
    chain_file.write_text(yaml.safe_dump(tree_chain(steps, uuid.uuid4().hex[:8])))
    cache_dir = work / "cache"

    async with Engine() as engine:
        image_id = await engine.image_id(IMAGE)
    progress(f"  first run: {steps} real containers, jobs={first_jobs}")
    run_ids: set[str] = set()
    owners = {owner_label(os.getpid())}
    async with EngineEvents("event=create", f"label={MANAGED_LABEL}") as watch:
        started = time.perf_counter()
        first = await api.run(chain_file, cache_dir=cache_dir, jobs=first_jobs)
        result.add("first_run_s", time.perf_counter() - started)
        # The engine's event stream may bring the last creations a moment after the run ends.
        for _ in range(100):  # 5 s at most
            if len(ours(watch.events, {first.run_id}, set(), "")) >= steps:
                break
            await anyio.sleep(0.05)
    assert first.ok and first.count("done") == steps, "the first run failed"
    step_containers = ours(watch.events, {first.run_id}, set(), "")
    result.add("first_run_containers", len(step_containers))

    command = cli_command()

    async def library(rep: int) -> None:
        clock = EventClock()
        started = time.perf_counter()
        outcome = await api.run(chain_file, cache_dir=cache_dir, on_event=clock)
        wall = time.perf_counter() - started
        assert outcome.ok and outcome.count("cached") == steps, "the re-run was not fully cached"
        run_ids.add(outcome.run_id)
        result.add("library_rerun_s", wall)
        result.add("library_plan_s", clock.first["run_started"] - started)
        result.add("library_schedule_s", wall - (clock.first["run_started"] - started))

    async def cli_into(out: Path, sample: str) -> None:
        """The CLI re-run with ``--out out``, timed as ``sample``."""
        arguments = ["run", str(chain_file), "--plain", "--cache-dir", str(cache_dir)]
        started = time.perf_counter()
        pid, code, errors = await anyio.to_thread.run_sync(
            run_cli, [*command, *arguments, "--out", str(out)]
        )
        result.add(sample, time.perf_counter() - started)
        owners.add(owner_label(pid))
        if code != 0:
            raise RuntimeError(f"the CLI re-run ({sample}) failed: {errors.decode()[-2000:]}")

    async def cli(rep: int) -> None:
        out = work / f"out-{rep}"
        await cli_into(out, "cli_rerun_s")
        # Again into the same --out, which holds the same outputs unchanged: left as they are.
        exported = [p for p in sorted(out.iterdir()) if not p.name.startswith(".")]
        before = {p: (p / "slept.txt").stat().st_ino for p in exported}
        await cli_into(out, "cli_same_out_s")
        after = {p: (p / "slept.txt").stat().st_ino for p in exported}
        result.add("cli_same_out_copied", sum(before[p] != after[p] for p in exported))
        remove_tree(out)

    async def cli_floor(rep: int) -> None:
        started = time.perf_counter()
        await run_process([*command, "--version"])
        result.add("cli_floor_s", time.perf_counter() - started)

    async with EngineEvents("event=create", f"label={MANAGED_LABEL}") as watch:
        await interleaved(
            reps, [("library re-run", library), ("CLI re-run", cli), ("CLI floor", cli_floor)]
        )
    mine = ours(watch.events, run_ids, owners, image_id)
    result.add("rerun_containers", len(mine))
    if mine:
        result.notes.append(
            "containers created during the re-runs: "
            + ", ".join(str(e.get("Actor", {}).get("Attributes", {})) for e in mine[:5])
        )
    others = len(watch.events) - len(mine)
    if others:
        result.notes.append(
            f"{others} kliko-async container(s) of other processes (other engineers' tests on "
            "this shared engine) were created meanwhile; not counted"
        )
    remove_tree(work)

    lib = result.median("library_rerun_s")
    result.row("first run (real containers, jobs=4)", "s", kliko=result.median("first_run_s"))
    first_containers = result.samples["first_run_containers"][0]
    result.row(
        "step containers created, first run",
        "count",
        kliko=first_containers,
        target=f"== {steps}",
        ok=first_containers == steps,
    )
    result.row("cached re-run, library API", "s", kliko=lib, target="< 1 s", ok=lib < 1.0)
    result.row("  of which planning", "s", kliko=result.median("library_plan_s"))
    result.row("  of which scheduling", "s", kliko=result.median("library_schedule_s"))
    containers = result.samples["rerun_containers"][0]
    result.row(
        "containers created, all re-runs",
        "count",
        kliko=containers,
        target="0",
        ok=containers == 0,
    )
    result.row(
        "cached re-run, CLI --plain + --out",
        "s",
        floor=result.median("cli_floor_s"),
        kliko=result.median("cli_rerun_s"),
    )
    result.row(
        "  again into the same --out (exports unchanged)",
        "s",
        floor=result.median("cli_floor_s"),
        kliko=result.median("cli_same_out_s"),
    )
    copied = max(result.samples["cli_same_out_copied"])
    result.row(
        "  exports copied again, same --out", "count", kliko=copied, target="0", ok=copied == 0
    )
    return result
