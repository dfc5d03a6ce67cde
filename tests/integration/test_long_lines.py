"""Lines of any length, on the real engine: saved byte for byte, each once, in linear time and
bounded memory; displays get a bounded start of them.

The engine cuts a line longer than 16 KiB into 16 KiB pieces with one time stamp, and Docker
20.10's ``local`` log driver drops the newline after the last piece. Before, that newline was
lost (``yyy…\\nend`` saved as ``yyy…end``), pieces were delivered twice after a catch-up that
resumed by content (a 1 MB line saved as 2 MB), and the line splitter re-joined the whole
pending line for every piece (quadratic).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kliko_async.cache.logfiles import log_records
from kliko_async.cache.store import Cache
from kliko_async.cache.upkeep import verify
from kliko_async.engine.attempts import SHOWN_LINE_CHARS

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.load, pytest.mark.usefixtures("example_images")]

KLIKO_YML = """\
schema_version: 3
name: long-lines
description: Writes long lines.
io: split
sections:
  - name: lines
    description: What to write
    fields:
      - {name: n, type: int, initial: 1}
      - {name: ended, type: bool, initial: true}
"""

SCRIPT = r"""#!/bin/sh
n=$(sed -n 's/.*"n": *\([0-9]*\).*/\1/p' /parameters.json)
if grep -q '"ended": *false' /parameters.json; then
  head -c "$n" /dev/zero | tr '\0' x
  exit 0
fi
head -c "$n" /dev/zero | tr '\0' y
printf '\nend\n'
head -c "$n" /dev/zero | tr '\0' z >&2
printf '\r\n' >&2
"""


@pytest.fixture(scope="module")
def long_lines_image(
    tmp_path_factory: pytest.TempPathFactory, kliko_image_builder: Callable[[Path, str, str], str]
) -> str:
    return kliko_image_builder(tmp_path_factory.mktemp("img") / "long-lines", KLIKO_YML, SCRIPT)


def saved(cache_dir: Path) -> dict[str, bytes]:
    """The one entry's saved log, stream by stream, as the bytes the container wrote."""
    cache = Cache(cache_dir)
    (entry,) = cache.entries()
    streams = {"stdout": b"", "stderr": b""}
    for _, stream, text in log_records(entry.log_path):
        streams[stream] += text + b"\n"
    assert verify(cache) == []
    return streams


@pytest.mark.parametrize("n", [16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 32 * 1024, 1_000_000])
def test_a_long_line_is_saved_byte_for_byte(
    kliko: KlikoCli, tmp_path: Path, long_lines_image: str, n: int
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(f"steps:\n  write: {{image: {long_lines_image}, params: {{n: {n}}}}}\n")

    done = kliko("run", chain, "--cache-dir", tmp_path / "cache", "--plain")

    assert done.returncode == 0, done.stdout + done.stderr
    assert saved(tmp_path / "cache") == {
        "stdout": b"y" * n + b"\nend\n",
        "stderr": b"z" * n + b"\r\n",
    }


def test_a_20_mb_line_without_newline_is_saved_whole_in_bounded_memory(
    kliko: KlikoCli, tmp_path: Path, long_lines_image: str
) -> None:
    n = 20_000_000
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        f"steps:\n  write: {{image: {long_lines_image}, params: {{n: {n}, ended: false}}}}\n"
    )
    events = tmp_path / "events.jsonl"

    done, peak = kliko.measured("run", chain, "--cache-dir", tmp_path / "cache", "--json")
    events.write_bytes(done.stdout)

    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    # A saved log gives its last line a newline, as it does every line.
    assert saved(tmp_path / "cache") == {"stdout": b"x" * n + b"\n", "stderr": b""}
    # Displays get the start of the line and how much more there is, not 20 MB.
    shown = [
        event["text"]
        for event in map(json.loads, events.read_text().splitlines())
        if event.get("kind") == "log_line"
    ]
    assert shown == [
        f"{'x' * SHOWN_LINE_CHARS}… ({n - SHOWN_LINE_CHARS:,} more characters in the saved log)"
    ]
    # The line passes through a few times over (pieces, joined, decoded, written), never more:
    # the whole process stays within a fixed allowance plus a few times the line.
    assert peak < 150_000_000 + 5 * n, f"peak memory {peak / 1e6:.0f} MB"
