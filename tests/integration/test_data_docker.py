"""A chain on the user's own data, on a real engine, through the command (issue 26): a host folder
as data, its output right; a re-run creates no container; ``touch`` changes nothing; one changed
byte re-runs exactly the steps below it; a link leading outside is refused in one line."""

from __future__ import annotations

import os
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
data:
  obs: {path: obs}
  notes: notes.txt
steps:
  upper: {image: example/upper, inputs: [obs]}
  lower: {image: example/lower, inputs: [notes], params: {suffix: .low}}
  merge: {image: example/merge, inputs: [upper, lower]}
"""


def make_data(root: Path) -> None:
    """A folder of a few files (one in a subfolder, one link within) and a lone file, dated back
    so the stat cache may remember them (files written this very second are read each time)."""
    (root / "obs" / "sub").mkdir(parents=True)
    (root / "obs" / "a.txt").write_text("alpha\n")
    (root / "obs" / "sub" / "b.txt").write_text("Beta\n")
    (root / "obs" / "same.txt").symlink_to("a.txt")
    (root / "notes.txt").write_text("NOTES\n")
    old = time.time_ns() - 60 * 10**9
    for path in [root / "notes.txt", *(root / "obs").rglob("*")]:
        os.utime(path, ns=(old, old), follow_symlinks=False)


def run(
    kliko: KlikoCli, tmp_path: Path, creations: Creations, *args: str
) -> tuple[dict[str, str], list[str]]:
    log = tmp_path / "run.log"
    since = time.time()
    process = kliko.popen(
        "run", tmp_path / "chain.yaml", *args, "--cache-dir", tmp_path / "cache",
        "--out", tmp_path / "out", "--plain", log=log,
    )  # fmt: skip
    code = process.wait(timeout=180)
    text = log.read_text()
    assert code == 0, text
    created = creations(since, time.time() + 0.5, owner_pid=process.pid)
    return states(text), sorted(c.get("io.kliko-async.step", "?") for c in created)


def test_a_chain_on_host_data_is_right_cached_and_reruns_only_below_a_change(
    kliko: KlikoCli, tmp_path: Path, container_creations: Creations
) -> None:
    make_data(tmp_path)
    (tmp_path / "chain.yaml").write_text(CHAIN)

    shown, started = run(kliko, tmp_path, container_creations)
    assert shown == dict.fromkeys(["upper", "lower", "merge"], "done")
    out = tmp_path / "out"
    assert (out / "upper" / "a.txt").read_text() == "ALPHA\n"
    assert (out / "upper" / "sub" / "b.txt").read_text() == "BETA\n"
    assert (out / "lower" / "notes.txt.low").read_text() == "notes\n"
    assert (out / "merge" / "merged.txt").read_text() == "notes\n----\nALPHA\n----\nBETA\n----\n"
    assert (tmp_path / "obs" / "a.txt").read_text() == "alpha\n", "the data is never written"

    shown, started = run(kliko, tmp_path, container_creations)
    assert set(shown.values()) == {"cached"} and started == []

    os.utime(tmp_path / "obs" / "sub" / "b.txt")  # touch
    shown, started = run(kliko, tmp_path, container_creations)
    assert set(shown.values()) == {"cached"} and started == []

    (tmp_path / "obs" / "sub" / "b.txt").write_text("Betb\n")  # one byte
    shown, started = run(kliko, tmp_path, container_creations)
    assert shown == {"upper": "done", "lower": "cached", "merge": "done"}
    assert started == ["merge", "upper"]
    assert (out / "upper" / "sub" / "b.txt").read_text() == "BETB\n"


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda obs: (obs / "escape").symlink_to("../../.."), "a link leading outside the data"),
        (lambda obs: (obs / "passwd").symlink_to("/etc/passwd"), "link to the absolute path"),
        (lambda obs: os.mkfifo(obs / "pipe"), "is a named pipe"),
    ],
)
def test_data_a_container_could_not_be_given_is_refused_in_one_line(
    kliko: KlikoCli, tmp_path: Path, make: Callable[[Path], None], said: str
) -> None:
    make_data(tmp_path)
    make(tmp_path / "obs")
    (tmp_path / "chain.yaml").write_text(CHAIN)
    done = kliko("run", tmp_path / "chain.yaml", "--cache-dir", tmp_path / "cache", "--plain")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("kliko-async: error: ") and done.stderr.count("\n") == 1
    assert "data 'obs'" in done.stderr and said in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_one_chain_over_several_observations_runs_once_per_observation(
    kliko: KlikoCli, tmp_path: Path, container_creations: Creations
) -> None:
    for night in ("night1", "night2"):
        (tmp_path / night).mkdir()
        (tmp_path / night / "vis.txt").write_text(f"{night}\n")
    (tmp_path / "chain.yaml").write_text(
        "vars: {nights: [night1, night2]}\n"
        "data:\n  obs: {path: '${vars.nights}'}\n"
        "steps:\n"
        "  upper: {image: example/upper, inputs: [obs], matrix: {same-as: obs}}\n"
        "  merge: {image: example/merge, inputs: [upper]}\n"
    )
    shown, started = run(kliko, tmp_path, container_creations)
    assert shown == dict.fromkeys(["upper[night1]", "upper[night2]", "merge"], "done")
    assert (tmp_path / "out" / "upper[night2]" / "vis.txt").read_text() == "NIGHT2\n"
    assert (tmp_path / "out" / "merge" / "merged.txt").read_text() == "NIGHT1\n----\nNIGHT2\n----\n"

    shown, started = run(kliko, tmp_path, container_creations, "--set", "nights=[night2]")
    assert shown == {"upper[night2]": "cached", "merge": "done"} and started == ["merge"]
