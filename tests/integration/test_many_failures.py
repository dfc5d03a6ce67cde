"""Hundreds of failing containers in one run cost no more than succeeding ones: every reply of
the engine is released, so the client's connection pool (aiohttp's holds 100) never runs dry.

Before, the events stream read to explain each failed container (was it killed?) kept its
connection for good: after 100 failures every request waited for a connection that never came,
and each later step failed with "the engine did not create the container within 30 s".
"""

from __future__ import annotations

from pathlib import Path

import pytest

import kliko_async
from kliko_async.cache.store import Cache
from kliko_async.runtime.base import ContainerExit, ContainerJob, LogSink
from kliko_async.runtime.docker import DockerRuntime

pytestmark = [pytest.mark.docker, pytest.mark.load, pytest.mark.usefixtures("example_images")]

JOBS = 4
IN_USE_BOUND = 3 * JOBS + 2
"""A running container holds at most three connections (its wait, its log, the explanation of
its failure); a few more for the requests around it."""


class WatchedRuntime(DockerRuntime):
    """The real Docker runtime, noting the connection pool's use around every container."""

    def __init__(self) -> None:
        super().__init__()
        self.in_use: list[int] = []

    async def run(self, job: ContainerJob, **options: LogSink) -> ContainerExit:  # type: ignore[override]
        self._note()
        try:
            return await super().run(job, **options)  # type: ignore[arg-type]
        finally:
            self._note()

    def _note(self) -> None:
        in_use = self.connections_in_use
        self.in_use.append(in_use)
        # Fail now rather than after hours of 30 s waits: the pool must not fill up.
        assert in_use <= IN_USE_BOUND, f"{in_use} connections to the engine held"


def chain_text(messages: int, retries: int) -> str:
    names = ", ".join(f"m{i}" for i in range(messages))
    return f"""\
steps:
  either:
    image: example/fail
    matrix: {{code: [0, 3], message: [{names}]}}
  stubborn:
    image: example/fail
    params: {{code: 5, message: never}}
    retries: {retries}
    retry_backoff: 0
"""


@pytest.mark.anyio
async def test_hundreds_of_failed_containers_keep_the_connection_pool_small(
    tmp_path: Path,
) -> None:
    chain = tmp_path / "chain.yaml"
    # 20 + 111 failed containers (the pool holds 100), 20 succeeding: 151 in all.
    messages, retries = 20, 110
    chain.write_text(chain_text(messages, retries))
    runtime = WatchedRuntime()
    try:
        result = await kliko_async.run(
            chain, runtime=runtime, cache_dir=tmp_path / "cache", jobs=JOBS, keep_going=True
        )
        in_use_after = runtime.connections_in_use
    finally:
        await runtime.aclose()

    steps = result.steps
    assert len(runtime.in_use) == 2 * (2 * messages + retries + 1)  # every container ran
    assert max(runtime.in_use) <= IN_USE_BOUND
    assert in_use_after == 0  # nothing held once the run is over
    failed = {name: step for name, step in steps.items() if step.state == "failed"}
    done = {name for name, step in steps.items() if step.state == "done"}
    assert len(done) == messages and all("code=0" in name for name in done)
    assert len(failed) == messages + 1
    for name, step in failed.items():  # each failure for its own reason, none for the engine's
        if name != "stubborn":
            assert step.reason == "exited with code 3", (name, step.reason)
    assert failed["stubborn"].reason == f"exited with code 5 (after {retries + 1} attempts)"

    cache = Cache(tmp_path / "cache")
    assert len(list(cache.entries())) == messages
    assert not cache.tmp_dir.exists() or list(cache.tmp_dir.iterdir()) == []
