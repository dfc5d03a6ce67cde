"""What a step's container used on its Slurm node, as its job script measured it.

The script samples while the container runs and writes ``usage`` (``<cpu ns|-> <peak bytes>
<samples>``): under Docker from the container's own cgroup (the kernel's CPU counter and memory
high-water mark, as the local runtime reads them through the engine), under Charliecloud from the
container's processes, which are the job's own (the sum of their memory high-water marks). Under
Charliecloud the CPU time is exact: the shell's ``times`` before the container and after it
(``times.before``, ``times.after``), the container's processes being its children. A cluster
with accounting (``sacct``) measures the job, not the container: under Docker the container
is not the job's, so the script measures it itself, the same way on any site.
"""

from __future__ import annotations

import re
from pathlib import Path

from kliko_async.results import ResourceUse
from kliko_async.runtime.slurm.logfiles import read_text

_TIME = re.compile(r"(\d+)m([\d.]+)s")


def job_usage(folder: Path, engine: str) -> ResourceUse | None:
    """The container's usage from the job's files; None where nothing was measured."""
    cpu_text, peak_text, samples_text = [*read_text(folder / "usage").split(), "", "", ""][:3]
    samples = int(samples_text) if samples_text.isdigit() else 0
    cpu_s = int(cpu_text) / 1e9 if samples and cpu_text.isdigit() else None
    if engine == "ch-run":
        cpu_s = _children_cpu(folder / "times.after", folder / "times.before")
    peak = int(peak_text) if samples and peak_text.isdigit() and int(peak_text) > 0 else None
    if cpu_s is None and peak is None:
        return None
    return ResourceUse(cpu_s=cpu_s, peak_memory_bytes=peak, samples=samples)


def _children_cpu(after: Path, before: Path) -> float | None:
    """User + system seconds of the shell's children between two ``times`` outputs."""
    ended, began = _children_seconds(read_text(after)), _children_seconds(read_text(before))
    if ended is None:
        return None
    return round(max(0.0, ended - (began or 0.0)), 6)


def _children_seconds(text: str) -> float | None:
    lines = text.splitlines()  # the shell's own user and system time, then its children's
    if len(lines) < 2:
        return None
    found = _TIME.findall(lines[1])
    if len(found) != 2:
        return None
    return sum(int(minutes) * 60 + float(seconds) for minutes, seconds in found)
