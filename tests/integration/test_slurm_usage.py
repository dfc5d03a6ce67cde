"""What a step's container used on a Slurm node, measured by its job script and reported as a
local step's is (issue 21: elapsed, CPU time and peak memory of each finished step): under
Docker from the container's cgroup, under Charliecloud from the job's own processes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_resource_use_docker import KLIKO_YML  # a 'megabytes' parameter
from test_slurm import slurm_cluster  # noqa: F401  (the fixture)

from conftest import KlikoCli

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slurm,
    pytest.mark.usefixtures("example_images", "slurm_cluster"),
]

# The shell holds the bytes in a variable for two seconds: the memory is really held, by the
# container's main process, long enough for any way of measuring it.
SCRIPT = """#!/bin/sh
mb=$(sed -n 's/.*"megabytes": *\\([0-9]*\\).*/\\1/p' /parameters.json)
held=$(head -c $((mb * 1000000)) /dev/zero | tr '\\0' a)
sleep 2
echo "held ${#held} bytes" > /output/done.txt
"""


@pytest.mark.parametrize("partition", ["kliko", "bare"], ids=["docker", "charliecloud"])
def test_a_slurm_step_reports_what_its_container_used(
    partition: str,
    tmp_path: Path,
    kliko: KlikoCli,
    kliko_image_builder: Callable[[Path, str, str], str],
) -> None:
    image = kliko_image_builder(tmp_path / "memhog", KLIKO_YML, SCRIPT)
    (tmp_path / "chain.yaml").write_text(
        f"steps:\n  hog: {{image: {image}, params: {{megabytes: 120}}}}\n"
    )
    done = kliko(
        "run", "chain.yaml", "--backend", "slurm", "--partition", partition, "--json",
        "--cache-dir", "cache", "--out", "out",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert (tmp_path / "out" / "hog" / "done.txt").read_text() == "held 120000000 bytes\n"
    (finished,) = [
        e for e in map(json.loads, done.stdout.splitlines()) if e["kind"] == "step_finished"
    ]
    usage = finished["usage"]
    assert usage is not None, "the step's usage was not measured"
    assert usage["samples"] >= 1
    assert 120e6 <= usage["peak_memory_bytes"] <= 600e6, usage
    assert usage["cpu_s"] is not None and 0 < usage["cpu_s"] < 60, usage
    assert finished["duration_s"] >= 2
