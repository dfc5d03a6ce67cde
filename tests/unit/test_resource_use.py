"""What a container used, folded from the Docker Engine's statistics samples."""

from __future__ import annotations

from kliko_async.display.runview import StepView, heaviest_steps
from kliko_async.display.wording import describe_usage
from kliko_async.results import ResourceUse
from kliko_async.runtime.dockerstats import UsageSampler


def sample(cpu_ns: int, usage: int, max_usage: int | None = None) -> dict[str, object]:
    memory: dict[str, int] = {"usage": usage}
    if max_usage is not None:
        memory["max_usage"] = max_usage
    return {
        "cpu_stats": {"cpu_usage": {"total_usage": cpu_ns}},
        "memory_stats": memory,
        "blkio_stats": {
            "io_service_bytes_recursive": [
                {"major": 8, "minor": 0, "op": "Read", "value": 4096},
                {"major": 8, "minor": 0, "op": "Write", "value": 8192},
                {"major": 8, "minor": 0, "op": "Total", "value": 12288},
            ]
        },
    }


def test_cgroup_v1_gives_the_high_water_mark_and_the_last_counters() -> None:
    sampler = UsageSampler()
    sampler.take(sample(1_000_000_000, 5 << 20, max_usage=200 << 20))
    sampler.take(sample(2_500_000_000, 1 << 20, max_usage=201 << 20))
    sampler.take({"cpu_stats": {}, "memory_stats": {}})  # the engine's sample after the exit
    used = sampler.usage()
    assert used == ResourceUse(
        cpu_s=2.5, peak_memory_bytes=201 << 20, read_bytes=4096, written_bytes=8192, samples=2
    )


def test_without_a_high_water_mark_the_highest_sampled_usage_counts() -> None:
    sampler = UsageSampler()
    for usage in (10 << 20, 300 << 20, 20 << 20):
        sampler.take(sample(1, usage))
    used = sampler.usage()
    assert used is not None and used.peak_memory_bytes == 300 << 20


def test_nothing_sampled_is_not_measured_rather_than_zero() -> None:
    assert UsageSampler().usage() is None


def test_the_summary_names_the_heaviest_steps() -> None:
    views = [
        StepView("light", "red", usage=ResourceUse(cpu_s=0.1, samples=1)),
        StepView(
            "heavy", "red", usage=ResourceUse(cpu_s=9.0, peak_memory_bytes=2 * 10**9, samples=9)
        ),
        StepView("cached", "red"),
        StepView("middle", "red", usage=ResourceUse(cpu_s=2.0, samples=1)),
    ]
    assert [v.name for v in heaviest_steps(views, most=2)] == ["heavy", "middle"]
    heavy = views[1].usage
    assert heavy is not None and describe_usage(heavy) == "CPU 9.0s, peak memory 2.0 GB"


def test_figures_from_one_sample_are_said_to_be_lower_bounds() -> None:
    once = ResourceUse(cpu_s=0.1, peak_memory_bytes=4_400_000, samples=1)
    assert describe_usage(once) == "CPU ≥0.1s, peak memory ≥4.4 MB"
