"""Target steps and chain variables on a real engine, through the command as a user runs them:
``run CHAIN STEP`` starts only what the step needs, and ``--set`` re-runs exactly the steps whose
keys it changes (issue 26)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_chain_docker import states

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

Creations = Callable[..., list[dict[str, str]]]

CHAIN = """\
# The diamond, over variables: a run per observation is --set obs=NAME.
vars:
  n: 4
  obs: first
  suffix: .low
steps:
  gen:
    image: example/gen
    params:
      n: ${vars.n}
      prefix: ${vars.obs}-line
  upper:
    image: example/upper
    inputs: [gen]
  lower:
    image: example/lower
    inputs: [gen]
    params:
      suffix: ${vars.suffix}
  merge:
    image: example/merge
    inputs: [upper, lower]
"""


def run(
    kliko: KlikoCli, tmp_path: Path, creations: Creations, *args: str
) -> tuple[dict[str, str], list[str]]:
    """Run the chain with ``args``; each step's last state and the steps whose container started."""
    chain = tmp_path / "chain.yaml"
    chain.write_text(CHAIN)
    log = tmp_path / "run.log"
    since = time.time()
    process = kliko.popen(
        "run", chain, *args, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out",
        "--plain", log=log,
    )  # fmt: skip
    code = process.wait(timeout=180)
    text = log.read_text()
    assert code == 0, text
    created = creations(since, time.time() + 0.5, owner_pid=process.pid)
    started = sorted(c["io.kliko-async.step"] for c in created if "io.kliko-async.step" in c)
    return states(text), started


def test_a_target_runs_only_its_upstream_and_shares_the_cache(
    kliko: KlikoCli, tmp_path: Path, container_creations: Creations
) -> None:
    shown, started = run(kliko, tmp_path, container_creations, "lower")
    assert shown == {"gen": "done", "lower": "done"}
    assert started == ["gen", "lower"]
    lowered = (tmp_path / "out" / "lower" / "numbers.txt.low").read_text()
    assert lowered.splitlines()[0] == "first-line 1"
    assert not (tmp_path / "out" / "merge").exists()

    shown, started = run(kliko, tmp_path, container_creations)
    assert shown == {"gen": "cached", "lower": "cached", "upper": "done", "merge": "done"}
    assert started == ["merge", "upper"]


def test_set_reruns_exactly_the_steps_whose_keys_it_changes(
    kliko: KlikoCli, tmp_path: Path, container_creations: Creations
) -> None:
    run(kliko, tmp_path, container_creations)

    shown, started = run(kliko, tmp_path, container_creations, "--set", "suffix=.small")
    assert shown == {"gen": "cached", "upper": "cached", "lower": "done", "merge": "done"}
    assert started == ["lower", "merge"]
    assert (tmp_path / "out" / "lower" / "numbers.txt.small").is_file()

    # Typed by the field it lands in: n is an int field, so "4" is the 4 of the chain file.
    shown, started = run(kliko, tmp_path, container_creations, "--set", "n=4")
    assert set(shown.values()) == {"cached"} and started == []

    shown, started = run(kliko, tmp_path, container_creations, "--set", "obs=second")
    assert set(shown.values()) == {"done"} and started == ["gen", "lower", "merge", "upper"]
    merged = (tmp_path / "out" / "merge" / "merged.txt").read_text()
    assert merged.startswith("second-line 1\n")


def test_a_wrong_set_or_target_is_one_line_and_runs_nothing(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(CHAIN)
    for args, said in [
        (["--set", "n=four"], "parameter 'n': the --set value 'four' is not an integer"),
        (["--set", "ob=x"], "the chain declares no variable 'ob' (did you mean 'obs'?)"),
        (["mergе"], "has no target step named"),  # a Cyrillic e
    ]:
        done = kliko("run", chain, *args, "--cache-dir", "c", "--plain")
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.startswith("kliko-async: error: ") and said in done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "c" / "entries").exists() or not any(
        (tmp_path / "c" / "entries").iterdir()
    )
