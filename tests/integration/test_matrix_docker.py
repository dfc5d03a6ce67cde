"""``matrix:`` on a real engine: one container per combination, per-branch pairing with
``same-as``, a consumer that receives every expansion in its own folder, and a changed value
that re-runs only its own expansion and what consumes it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kliko_async.engine.exports import EXPORT_MARKER

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

CHAIN = """\
steps:
  gen:
    image: example/gen
    params: {{prefix: x}}
    matrix: {{n: [{values}]}}
  shout:
    image: example/upper
    inputs: [gen]
    matrix: {{same-as: gen}}
  merge:
    image: example/merge
    inputs: [shout]
"""


def states(stdout: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        match = re.match(r"(\S+) \| (started|cached|done|FAILED|skipped|cancelled)\b", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def run(kliko: KlikoCli, tmp_path: Path, values: str, *options: str) -> str:
    chain = tmp_path / "chain.yaml"
    chain.write_text(CHAIN.format(values=values))
    done = kliko("run", chain, "--cache-dir", tmp_path / "cache", "--out", "out", *options)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_changed_value_reruns_only_its_expansion_and_the_consumers(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    first = run(kliko, tmp_path, "2, 3", "--plain")
    assert states(first) == {
        "gen[n=2]": "done",
        "gen[n=3]": "done",
        "shout[n=2]": "done",
        "shout[n=3]": "done",
        "merge": "done",
    }
    out = tmp_path / "out"
    assert (out / "gen[n=3]" / "numbers.txt").read_text() == "x 1\nx 2\nx 3\n"
    assert (out / "shout[n=2]" / "numbers.txt").read_text() == "X 1\nX 2\n"  # paired: /input
    # The consumer's /work holds one folder per expansion, named after it.
    assert (out / "merge" / "merged.txt").read_text() == "X 1\nX 2\n----\nX 1\nX 2\nX 3\n----\n"
    assert sorted(p.name for p in (out / "merge").iterdir() if p.name != EXPORT_MARKER) == [
        "merged.txt",
        "shout[n=2]",
        "shout[n=3]",
    ]

    dry = run(kliko, tmp_path, "2, 4", "--dry-run")
    plan = {line.split()[0]: line for line in dry.splitlines() if line.startswith(("gen", "sh"))}
    assert "cached" in plan["gen[n=2]"] and "cached" in plan["shout[n=2]"]
    assert "would run" in plan["gen[n=4]"] and "would run" in plan["shout[n=4]"]
    assert "gen[n=3]" not in plan

    second = run(kliko, tmp_path, "2, 4", "--plain")
    assert states(second) == {
        "gen[n=2]": "cached",
        "shout[n=2]": "cached",
        "gen[n=4]": "done",
        "shout[n=4]": "done",
        "merge": "done",
    }
    assert (out / "merge" / "merged.txt").read_text() == (
        "X 1\nX 2\n----\nX 1\nX 2\nX 3\nX 4\n----\n"
    )


def test_an_invalid_combination_is_refused_before_anything_runs(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(CHAIN.format(values="2, three"))
    done = kliko("run", chain, "--cache-dir", tmp_path / "cache", "--plain")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "step 'gen[n=three]'" in done.stderr
    assert "parameter 'n': expected an integer" in done.stderr
    assert not (tmp_path / "cache" / "entries").exists() or not any(
        (tmp_path / "cache" / "entries").iterdir()
    )
