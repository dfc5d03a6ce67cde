"""A 200-way matrix on Slurm against a bare ``sbatch --array`` script, on the test cluster.

Needs the test cluster (``scripts/slurm-cluster up``, as root); not part of the default run.
Floor: a shell script that writes each task's parameters.json and output folder, submits one
``sbatch --array=0-199`` whose task i runs example/sleep with ``docker run --rm`` on task i's
mounts, then waits until none of its tasks is pending or running (``squeue`` every 0.1 s).
kliko-async: a chain of one step with a 200-value ``matrix:``, ``backend="slurm"``, engine
``docker`` (as the floor), ``jobs=200`` and ``--slurm-max-jobs 200`` (the floor has no queue
limit either), a fresh cache; timed whole and from ``RunStarted`` on. Interleaved; medians.
"""

from __future__ import annotations

import time
import uuid

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

NAME = "slurm-matrix"
IMAGE = "example/sleep"
TARGET = 1.10

FLOOR_SCRIPT = (
    """\
#!/bin/bash
# The floor: the matrix's tasks as one bare job array.
set -euo pipefail
dir=$1; image=$2; tasks=$3; seconds=$4
"""
    + SLEEP_PARAMS_SH
    + """\
for i in $(seq 0 $((tasks - 1))); do
    mkdir -p "$dir/$i/out"
    params_json "$seconds" "t$i" >"$dir/$i/parameters.json"
done
id=$(sbatch --parsable --job-name=floor-matrix --output=/dev/null --array=0-$((tasks - 1)) \\
    --wrap "docker run --rm --user $(id -u):$(id -g) \\
        -v $dir/\\$SLURM_ARRAY_TASK_ID/parameters.json:/parameters.json:ro \\
        -v $dir/\\$SLURM_ARRAY_TASK_ID/out:/output $image /kliko")
while [ -n "$(squeue -h -r -t PD,R,CF,CG -j "$id" -o %i)" ]; do sleep 0.1; done
"""
)


async def run(cfg: Config) -> ScenarioResult:
    tasks = cfg.size(200, 40, smoke=6)
    seconds = 1.0
    reps = cfg.repeats(3, 1)
    result = ScenarioResult(
        NAME,
        f"a {tasks}-way matrix of {seconds:g} s steps on Slurm vs one bare sbatch --array",
        params={"tasks": tasks, "seconds": seconds, "reps": reps, "image": IMAGE},
    )
    floor_script = script_file(cfg, "slurm-matrix-floor.sh", FLOOR_SCRIPT)

    async def floor(rep: int) -> None:
        work = cfg.tmp(f"slurm-matrix-floor-{rep}")
        args = (IMAGE, str(tasks), f"{seconds:g}")
        await timed_script(result, "floor_wall_s", floor_script, work, *args)
        for i in range(tasks):  # every task slept as long as kliko-async's steps do
            check_slept(work / str(i) / "out", seconds, f"t{i}", "the floor's array")
        remove_tree(work)

    async def kliko(rep: int) -> None:
        work = cfg.tmp(f"slurm-matrix-kliko-{rep}")
        nonce = uuid.uuid4().hex[:8]
        steps = {
            "sweep": {
                "image": IMAGE,
                "params": {"seconds": seconds},
                "matrix": {"tag": [f"{nonce}-{i}" for i in range(tasks)]},
            }
        }
        chain = parse_chain({"steps": steps}, source="benchmarks/slurmmatrix", base_dir=work)
        clock = EventClock()
        started = time.perf_counter()
        outcome = await api.run(
            chain,
            cache_dir=work / "cache",
            jobs=tasks,
            backend="slurm",
            slurm=SlurmOptions(engine="docker", max_jobs=tasks),
            on_event=clock,
        )
        ended = time.perf_counter()
        assert outcome.ok and outcome.count("done") == tasks, "the matrix failed"
        check_steps_slept(outcome, chain)
        result.add("kliko_wall_s", ended - started)
        result.add("kliko_steps_s", ended - clock.first["run_started"])
        remove_tree(work)

    await interleaved(reps, [("floor", floor), ("kliko-async", kliko)])
    floor_s = result.median("floor_wall_s")
    steps_s = result.median("kliko_steps_s")
    result.row(
        "wall time, whole run, fresh cache", "s", floor=floor_s, kliko=result.median("kliko_wall_s")
    )
    result.row(
        "from the first step on",
        "s",
        floor=floor_s,
        kliko=steps_s,
        target=f"<= {TARGET:.2f}x",
        ok=steps_s <= TARGET * floor_s,
    )
    result.notes.append(
        "a whole run with a fresh cache includes planning and the shared-cache check job; "
        "'from the first step on' starts at RunStarted"
    )
    return result
