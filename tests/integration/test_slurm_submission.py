"""Submitting to the real test cluster (scripts/slurm-cluster) while Slurm's commands misbehave:
a squeue that hangs at start, Ctrl-C while sbatch runs, an sbatch that submits but answers late
or with more than the job ID, an sbatch that keeps failing. Faults are shims on PATH in front
of Slurm's real commands, as in test_slurm_faults.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_slurm import slurm_cluster, write_chain  # noqa: F401  (the fixture)
from test_slurm_faults import real, shim

from conftest import KlikoCli

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slurm,
    pytest.mark.usefixtures("example_images", "slurm_cluster"),
]

ONE_STEP = "steps:\n  a: {image: example/sleep, params: {seconds: 1, tag: sub}}\n"


def test_a_squeue_that_hangs_at_start_refuses_the_run_in_one_paragraph(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """The leftovers check's squeue hangs (the run's own polls, by job ID, answer)."""
    shim(
        tmp_path, kliko, "squeue",
        f'#!/bin/sh\ncase "$*" in *--jobs=*) exec {real("squeue")} "$@";; esac\nexec sleep 300\n',
    )  # fmt: skip
    start = time.monotonic()
    done = kliko("run", write_chain(tmp_path, ONE_STEP), "--backend", "slurm", "--plain",
                 "--cache-dir", "c", timeout=90)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Slurm does not answer: squeue gave no answer within 30 s" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 60
