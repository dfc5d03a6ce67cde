"""A Slurm step's usage, read from what its job script measured (issue 21)."""

from __future__ import annotations

from pathlib import Path

from kliko_async.runtime.slurm.usage import job_usage


def test_under_docker_the_cgroup_sample_is_the_usage(tmp_path: Path) -> None:
    (tmp_path / "usage").write_text("2192601182 241422336 7\n")
    usage = job_usage(tmp_path, "docker")
    assert usage is not None
    assert (usage.cpu_s, usage.peak_memory_bytes, usage.samples) == (2.192601182, 241422336, 7)


def test_under_charliecloud_the_cpu_time_is_the_shells_children_between_two_times(
    tmp_path: Path,
) -> None:
    (tmp_path / "usage").write_text("- 243159040 7\n")
    (tmp_path / "times.before").write_text("0m0.002s 0m0.001s\n0m0.250s 0m0.050s\n")
    (tmp_path / "times.after").write_text("0m0.003s 0m0.001s\n1m2.250s 0m0.894s\n")
    usage = job_usage(tmp_path, "ch-run")
    assert usage is not None
    assert usage.cpu_s == 62.844  # (62.25 + 0.894) - (0.25 + 0.05): the copies before it
    assert usage.peak_memory_bytes == 243159040


def test_nothing_measured_is_none_and_a_torn_sample_is_not_read(tmp_path: Path) -> None:
    assert job_usage(tmp_path, "docker") is None  # the script never sampled (too short)
    (tmp_path / "usage").write_text("123")  # cut short: no figure taken from it
    assert job_usage(tmp_path, "docker") is None
    (tmp_path / "usage").write_text("- 0 2\n")  # a cgroup that showed nothing yet
    assert job_usage(tmp_path, "docker") is None
