"""What a step used, measured by the engine: no tool inside the container is needed (the image
is busybox alone), and the figures land in the entry's manifest, the events and the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kliko_async.cache.store import Cache

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = pytest.mark.docker

KLIKO_YML = """\
schema_version: 3
io: split
sections:
  - name: main
    fields:
      - {name: megabytes, type: int, initial: 200}
"""
# dd's buffer is one block of that size, filled from /dev/zero: the memory is really touched.
SCRIPT = """#!/bin/sh
mb=$(sed -n 's/.*"megabytes": *\\([0-9]*\\).*/\\1/p' /parameters.json)
dd if=/dev/zero of=/dev/null bs=${mb}M count=1 2>/dev/null
sleep 2
echo "held ${mb} MiB" > /output/done.txt
"""


def test_the_peak_memory_of_a_step_is_what_it_allocated(
    tmp_path: Path,
    kliko: KlikoCli,
    kliko_image_builder: Callable[[Path, str, str], str],
) -> None:
    image = kliko_image_builder(tmp_path / "memhog", KLIKO_YML, SCRIPT)
    (tmp_path / "chain.yaml").write_text(
        f"steps:\n  hog: {{image: {image}, params: {{megabytes: 200}}}}\n"
    )
    done = kliko("run", "chain.yaml", "--json", "--cache-dir", "cache", "--report", "r.html")
    assert done.returncode == 0, done.stderr
    finished = [
        e for e in map(json.loads, done.stdout.splitlines()) if e["kind"] == "step_finished"
    ]
    usage = finished[0]["usage"]
    assert usage is not None and usage["samples"] >= 1
    assert abs(usage["peak_memory_bytes"] - (200 << 20)) <= 0.1 * (200 << 20), usage
    assert usage["cpu_s"] is not None and usage["cpu_s"] >= 0

    (entry,) = list(Cache(tmp_path / "cache").entries())
    assert entry.manifest.usage is not None
    assert entry.manifest.usage.peak_memory_bytes == usage["peak_memory_bytes"]
    page = (tmp_path / "r.html").read_text()
    assert "peak memory 2" in page  # 209.7 MB or so, in the step's row
