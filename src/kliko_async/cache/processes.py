"""Whether a process still runs, and on which host: leftovers (staging folders, containers) are
judged by it, and only on the host that made them (a pid means nothing on another host)."""

from __future__ import annotations

import functools
import os
import re
import socket


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host (ours, or someone else's)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, but someone else's
        return True
    return True


@functools.cache
def host_name() -> str:
    """This host's name, safe in a file name (only letters, digits, ``-``, ``_`` and ``.``);
    looked up once (every staging folder's name holds it)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "unknown-host"
