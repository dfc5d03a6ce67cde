"""The Slurm scenarios of the benchmark suite, end to end on a tiny size on the test cluster:
each floor must do the work it stands for and each check must accept a correct run. Nothing
here is timed."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_benchmarks_docker import run_scenario
from test_slurm import slurm_cluster  # noqa: F401  (the fixture)

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slurm,
    pytest.mark.load,
    pytest.mark.usefixtures("example_images", "slurm_cluster"),
]


def test_slurm_matrix_scenario_runs_its_array_floor_and_chain(tmp_path: Path) -> None:
    rows = run_scenario("slurmmatrix", tmp_path)
    row = rows["from the first step on"]
    assert row.floor and row.kliko and row.target == "<= 1.10x"


def test_slurm_fanout_scenario_runs_its_floor_and_chain(tmp_path: Path) -> None:
    rows = run_scenario("slurmfanout", tmp_path)
    row = rows["from the first step on (engine docker)"]
    assert row.floor and row.kliko and row.target == "<= 1.10x"
    assert rows["from the first step on (engine auto)"].target == ""  # ch-run: not the floor's
