"""Leftovers of kliko-async processes that ended without cleaning up (kill -9, a second Ctrl-C, a
crash): their containers, found by their owner label and removed by the next run on the host."""

from __future__ import annotations

import socket

from kliko_async.cache.processes import pid_alive
from kliko_async.runtime.base import LABEL_PREFIX, OWNER_LABEL, Runtime


async def remove_leftovers(runtime: Runtime) -> int:
    """Remove containers of earlier kliko-async processes on this host that no longer exist."""
    host = socket.gethostname()
    found = await runtime.find_containers({f"{LABEL_PREFIX}.managed": "1"})
    removed = 0
    for container_id, labels in found.items():
        owner = labels.get(OWNER_LABEL, "")
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not pid_alive(int(pid)):
            await runtime.remove_container(container_id)
            removed += 1
    return removed
