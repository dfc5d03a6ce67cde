"""Data inputs on the real Slurm cluster (issue 26): a host folder and a file as data, on nodes
with Docker and on the Charliecloud node, give the same outputs as the local engine; the check
that every node sees the cache folder also looks for the data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from slurmrun import jobs_after, last_job_id
from test_data_docker import CHAIN, make_data
from test_slurm import slurm_cluster, tree_bytes  # noqa: F401

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slurm,
    pytest.mark.usefixtures("example_images", "slurm_cluster"),
]


@pytest.mark.parametrize("partition", ["kliko", "bare"])
def test_host_data_gives_the_same_outputs_on_the_cluster_as_locally(
    kliko: KlikoCli, tmp_path: Path, partition: str
) -> None:
    make_data(tmp_path)
    chain = tmp_path / "chain.yaml"
    chain.write_text(CHAIN)
    local = kliko("run", chain, "--cache-dir", "local", "--out", "local-out", "--plain")
    assert local.returncode == 0, local.stdout + local.stderr

    first = last_job_id()
    done = kliko(
        "run", chain, "--backend", "slurm", "--partition", partition, "--plain",
        "--cache-dir", "c", "--out", "slurm-out",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = jobs_after(first)  # the steps' jobs (not the check's)
    assert len(jobs) == 3, jobs
    if partition == "bare":
        assert {j["nodes"] for j in jobs} == {"bare1"}  # Charliecloud: no Docker there
    assert tree_bytes(tmp_path / "slurm-out") == tree_bytes(tmp_path / "local-out")
    assert (tmp_path / "slurm-out" / "lower" / "notes.txt.low").read_text() == "notes\n"
    # The nodes were asked whether they see the cache and the data; the answer is remembered.
    assert len(list((tmp_path / "c" / "slurm" / "shared").glob("*.ok"))) == 1
