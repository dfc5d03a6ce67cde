"""Fan-out on Slurm: one source step feeding 16 branches of 2 s each, on the two-node cluster.

Needs the test cluster (``scripts/slurm-cluster up``, as root); not part of the default run.
Floor: a bare shell script that submits the same 17 jobs with ``sbatch`` at once, the branches
with ``--dependency=afterok:<source>``, each running the same container (example/sleep, with
the same parameters.json and /output mounts) with ``docker run --rm``, then waits until none is
pending or running (``squeue`` every 0.1 s). kliko-async: the same chain as ``fanout``, with
``backend="slurm"``, ``jobs=16``, a fresh cache, with engine ``auto`` (the default: the image is
also converted for ch-run) and ``docker``; timed whole, and from ``RunStarted`` on (without
planning and the shared-cache check). All three interleaved; medians.
"""

from __future__ import annotations

import json
import time
import uuid

import anyio

from benchmarks.harness import (
    SLEEP_PARAMS_SH,
    Config,
    EventClock,
    ScenarioResult,
    check_slept,
    check_steps_slept,
    interleaved,
    remove_tree,
    script_file,
    timed_script,
)
from kliko_async import api
from kliko_async.model.chain import parse_chain
from kliko_async.runtime.slurm.options import SlurmOptions
from kliko_async.runtime.slurm.script import Engine

NAME = "slurm-fanout"
IMAGE = "example/sleep"
TARGET = 1.10

FLOOR_SCRIPT = (
    """\
#!/bin/bash
# The floor: the fan-out's 17 jobs as a bare sbatch script would submit them.
set -euo pipefail
dir=$1; image=$2; branches=$3; seconds=$4
"""
    + SLEEP_PARAMS_SH
    + """\
job() { # $1: name, $2: seconds, $3..: sbatch options
    local name=$1 secs=$2; shift 2
    mkdir -p "$dir/$name/out"
    params_json "$secs" "$name" >"$dir/$name/parameters.json"
    sbatch --parsable --job-name="floor-$name" --output=/dev/null "$@" --wrap \\
        "docker run --rm --user $(id -u):$(id -g) \\
         -v $dir/$name/parameters.json:/parameters.json:ro \\
         -v $dir/$name/out:/output $image /kliko"
}
src=$(job src 0)
ids=$src
for i in $(seq -w 0 $((branches - 1))); do
    ids+=,$(job "b$i" "$seconds" --dependency=afterok:"$src")
done
while [ -n "$(squeue -h -t PD,R,CF,CG -j "$ids" -o %i)" ]; do sleep 0.1; done
"""
)


async def run(cfg: Config) -> ScenarioResult:
    branches = 16
    seconds = 2.0
    reps = cfg.repeats(3, 1)
    result = ScenarioResult(
        NAME,
        f"1 source -> {branches} branches of {seconds:g} s on Slurm, jobs={branches}, "
        "vs a bare sbatch script",
        params={"branches": branches, "seconds": seconds, "reps": reps, "image": IMAGE},
    )
    floor_script = script_file(cfg, "slurm-floor.sh", FLOOR_SCRIPT)

    async def floor(rep: int) -> None:
        work = cfg.tmp(f"slurm-floor-{rep}")
        args = (IMAGE, str(branches), f"{seconds:g}")
        await timed_script(result, "floor_wall_s", floor_script, work, *args)
        check_slept(work / "src" / "out", 0, "src", "the floor's source")
        for i in range(branches):  # each branch slept as long as kliko-async's do
            check_slept(work / f"b{i:02d}" / "out", seconds, f"b{i:02d}", "the floor's branch")
        remove_tree(work)

    async def kliko(rep: int, engine: Engine) -> None:
        work = cfg.tmp(f"slurm-kliko-{engine}-{rep}")
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
        chain = parse_chain({"steps": steps}, source="benchmarks/slurmfanout", base_dir=work)
        clock = EventClock()
        started = time.perf_counter()
        outcome = await api.run(
            chain,
            cache_dir=work / "cache",
            jobs=branches,
            backend="slurm",
            slurm=SlurmOptions(engine=engine),
            on_event=clock,
        )
        ended = time.perf_counter()
        assert outcome.ok and outcome.count("done") == branches + 1, "the fan-out failed"
        check_steps_slept(outcome, chain)
        result.add(f"kliko_{engine}_wall_s", ended - started)
        result.add(f"kliko_{engine}_steps_s", ended - clock.first["run_started"])
        remove_tree(work)

    async def kliko_auto(rep: int) -> None:
        await kliko(rep, "auto")

    async def kliko_docker(rep: int) -> None:
        await kliko(rep, "docker")

    await interleaved(
        reps, [("floor", floor), ("kliko-async", kliko_auto), ("kliko-async docker", kliko_docker)]
    )
    nodes = await _nodes_of_last_jobs(branches)
    result.notes.append(f"branches ran on: {nodes}")
    floor_s = result.median("floor_wall_s")
    for engine, what in (("auto", "engine auto"), ("docker", "engine docker")):
        result.row(
            f"wall time, whole run, fresh cache ({what})",
            "s",
            floor=floor_s,
            kliko=result.median(f"kliko_{engine}_wall_s"),
        )
        steps_s = result.median(f"kliko_{engine}_steps_s")
        # The floor runs its containers with Docker: only engine docker is held to it.
        held = engine == "docker"
        result.row(
            f"from the first step on ({what})",
            "s",
            floor=floor_s,
            kliko=steps_s,
            target=f"<= {TARGET:.2f}x" if held else "",
            ok=steps_s <= TARGET * floor_s if held else None,
        )
    result.row("ideal (source + 2 s, no overhead)", "s", floor=seconds, kliko=seconds)
    result.notes.append(
        "a whole run with a fresh cache includes planning, the shared-cache check job and (engine "
        "auto) the image's conversion for ch-run; 'from the first step on' starts at RunStarted"
    )
    return result


async def _nodes_of_last_jobs(count: int) -> str:
    """Where the last run's branches ran, from ``squeue --json`` (both nodes, one hopes)."""
    done = await anyio.run_process(["squeue", "--json", "--states=all"])
    jobs = [j for j in json.loads(done.stdout)["jobs"] if str(j["name"]).startswith("kliko-")]
    last = sorted(jobs, key=lambda j: int(j["job_id"]))[-count:]
    counts: dict[str, int] = {}
    for job in last:
        counts[str(job["nodes"])] = counts.get(str(job["nodes"]), 0) + 1
    return ", ".join(f"{n}: {c}" for n, c in sorted(counts.items()))
