"""Smoke test of the benchmark suite: the fake-runtime scheduler scenario, tiny, no Docker.

It checks that the scenario runs end to end (in-process and in its measuring subprocess) and
reports sane numbers; it asserts nothing about speed.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import anyio
import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 200


def load(name: str) -> ModuleType:
    """Import ``benchmarks.<name>`` from the repository (it is not an installed package)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"benchmarks.{name}")


def test_random_dag_is_a_dag_with_the_requested_size() -> None:
    scheduler = load("scheduler")
    data = scheduler.random_dag(STEPS, seed=3)
    names = list(data["steps"])
    assert len(names) == STEPS
    for position, (_name, step) in enumerate(data["steps"].items()):
        assert all(names.index(i) < position for i in step.get("inputs", []))


@pytest.mark.parametrize("memory_cache", [False, True], ids=["disk-cache", "memory-cache"])
def test_measure_in_process_runs_every_step(tmp_path: Path, memory_cache: bool) -> None:
    scheduler = load("scheduler")

    async def main() -> dict[str, float]:
        numbers: dict[str, float] = await scheduler.measure(
            STEPS, workdir=tmp_path, memory_cache=memory_cache
        )
        return numbers

    numbers = anyio.run(main)
    assert numbers["ok"]
    assert numbers["done"] == numbers["containers"] == STEPS
    for key in ("load_s", "plan_s", "run_s", "total_s"):
        assert 0 < numbers[key] < 120, key
    assert abs(numbers["total_s"] - numbers["plan_s"] - numbers["run_s"]) < 1e-6


def test_scheduler_scenario_reports_sane_numbers(tmp_path: Path) -> None:
    scheduler = load("scheduler")
    harness = load("harness")
    # On tmpfs when there is one: on a disk, the floor's barrier every 64 steps can cost more
    # than the run's group commits (34 s against 16.7 s in a full run), and this test failed
    # now and then on a disk having a slow minute.
    shm = scheduler.tmpfs_dir()
    workdir = Path(tempfile.mkdtemp(prefix="kliko-smoke-", dir=shm)) if shm else tmp_path
    cfg = harness.Config(quick=True, reps=1, workdir=workdir)
    try:
        result = anyio.run(lambda: scheduler.scenario(cfg, STEPS, variants=False))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    assert result.error is None
    assert result.params["steps"] == STEPS
    rows = {row.metric: row for row in result.rows}
    (total,) = [row for name, row in rows.items() if name.startswith("plan + run (floor")]
    assert total.kliko is not None and total.kliko > 0
    assert total.floor is not None and total.floor > 0
    if shm is not None:  # the bare file work of as many steps: less than the run, which does it
        assert total.floor < total.kliko
    assert total.ok is not None  # a target was checked, whatever the outcome
    memory = rows["peak RSS (VmHWM); floor: RSS after imports"]
    assert memory.floor is not None and memory.kliko is not None
    assert 0 < memory.floor <= memory.kliko < 10_000
    text = harness.table([result])
    assert "plan + run" in text and "scheduler" in text
    out = tmp_path / "results.json"
    harness.write_json(out, [result], {"quick": True})
    saved = json.loads(out.read_text())
    assert saved["scenarios"][0]["name"] == "scheduler"
    assert saved["scenarios"][0]["samples"]["total_s"]


def test_logflood_check_reads_the_saved_log_records(tmp_path: Path) -> None:
    """The saved log is ``<time stamp> <stream> <bytes>`` records, as kliko-async writes it."""
    from kliko_async.engine.steplogs import StepLog

    logflood = load("logflood")
    path = tmp_path / "log.txt"
    log = StepLog(path)
    for i in range(1, 4):
        log.write_line("stdout", f"line {i}")
    log.close()
    assert logflood.check_log(path, 3) == (3, True)
    assert logflood.check_log(path, 4) == (3, False)
    plain = tmp_path / "plain.txt"
    plain.write_text("line 1\nline 2\nline 3\n")  # not records: not what a run saved
    assert logflood.check_log(plain, 3)[1] is False


def test_datainput_scenario_checks_what_it_reads_and_reports_every_row(tmp_path: Path) -> None:
    """The data-input scenario on 20 files and 1 MB: its floor hashes every file and its own
    checks (every file read first, none when unchanged, one after one change) hold."""
    datainput = load("datainput")
    harness = load("harness")
    cfg = harness.Config(smoke=True, reps=1, workdir=tmp_path)

    result = anyio.run(lambda: datainput.run(cfg))

    assert result.error is None and result.params["files"] == 20
    rows = {row.metric: row for row in result.rows}
    assert set(rows) == {
        "first keying: time",
        "first keying: MB/s (sha256sum: floor)",
        "re-run, nothing changed",
        "one file changed",
    }
    assert all(row.floor and row.kliko for row in rows.values())
    assert rows["re-run, nothing changed"].ok is not None
    assert not (tmp_path / "datainput").exists(), "the folder is removed at the end"


def test_instruction_count_child_runs_every_step_and_its_count_is_read(tmp_path: Path) -> None:
    instructions = load("instructions")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.instructions", "--child", "30", tmp_path],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cache").is_dir()  # the run's cache stub root: it ran there
    sample = "==7== Collected : 12\n==7==\n==7== I   refs:      2,052,910,095\n"
    assert instructions._REFS.search(sample).group(1) == "2,052,910,095"
