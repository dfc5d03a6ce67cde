"""What a container uses, from the Docker Engine's statistics (its cgroup's counters), sampled
while it runs: no tool inside the container is needed.

The engine streams one sample a second. The peak memory is the cgroup's own high-water mark
where the engine gives it (cgroup v1: ``max_usage``), else the highest usage sampled; the CPU
time and block I/O are the last sample's counters. Measuring never fails a step: a stream that
breaks leaves what was sampled so far.
"""

from __future__ import annotations

import json
from typing import Any

import aiodocker
import aiohttp
import anyio

from kliko_async.results import ResourceUse
from kliko_async.runtime.dockerlogs import engine_response


class UsageSampler:
    """Follows one container's statistics until :meth:`stop`, keeping what they say."""

    def __init__(self) -> None:
        self.cpu_ns: int | None = None
        self.peak_memory: int | None = None
        self.read_bytes: int | None = None
        self.written_bytes: int | None = None
        self.samples = 0
        self._scope: anyio.CancelScope | None = None
        self._stopped = False

    async def follow(self, client: aiodocker.Docker, container_id: str) -> None:
        if self._stopped:
            return
        with anyio.CancelScope() as self._scope:
            try:
                async with engine_response(
                    client,
                    f"containers/{container_id}/stats",
                    method="GET",
                    params={"stream": "1"},
                    timeout=None,
                ) as response:
                    async for line in response.content:
                        if line.strip():
                            self.take(json.loads(line))
            except (aiodocker.DockerError, aiohttp.ClientError, OSError, ValueError):
                pass  # what was sampled stays; the step is not the stats stream's to fail

    def stop(self) -> None:
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    def take(self, sample: dict[str, Any]) -> None:
        """Fold one of the engine's samples in (a sample of a stopped container is empty)."""
        cpu = ((sample.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
        memory = sample.get("memory_stats") or {}
        if not cpu and not memory:
            return
        self.samples += 1
        if isinstance(cpu, int):
            self.cpu_ns = cpu
        highest = max(
            (v for v in (memory.get("max_usage"), memory.get("usage")) if isinstance(v, int)),
            default=None,
        )
        if highest is not None:
            self.peak_memory = max(self.peak_memory or 0, highest)
        io = (sample.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
        if io:
            self.read_bytes = sum(e.get("value", 0) for e in io if e.get("op") == "Read")
            self.written_bytes = sum(e.get("value", 0) for e in io if e.get("op") == "Write")

    def usage(self) -> ResourceUse | None:
        if not self.samples:
            return None
        return ResourceUse(
            cpu_s=None if self.cpu_ns is None else self.cpu_ns / 1e9,
            peak_memory_bytes=self.peak_memory,
            read_bytes=self.read_bytes,
            written_bytes=self.written_bytes,
            samples=self.samples,
        )
