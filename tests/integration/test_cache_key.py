"""The cache key on the real engine, ingredient by ingredient.

Each test changes exactly one thing a step's output depends on and checks, by the containers the
engine created for that run (Docker's event log, filtered by the run's own process), that exactly
the affected steps ran again: the changed step and everything downstream of it, nothing else.
The chain::

    gen (example/gen, a file parameter, env) -> upper
    other (example/gen)                      -> side (example/lower)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kliko_async import api
from kliko_async.cache import key
from kliko_async.cache.store import Cache
from kliko_async.engine import plan, workspace

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

ROOT = Path(__file__).resolve().parents[2]
Creations = Callable[..., list[dict[str, str]]]

STEP = "io.kliko-async.step"
ALL = {"gen", "upper", "other", "side"}


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, str]]:
    """Tags of this module's own for example/gen, upper and lower, so that a test may rebuild
    one, and so that nobody else rebuilding the shared example tags changes a key here."""
    suffix = uuid.uuid4().hex[:10]
    tags = {name: f"kliko-async-test/{name}-{suffix}" for name in ("gen", "upper", "lower")}
    for name, tag in tags.items():
        build_example(name, tag, label="first")
    yield tags
    subprocess.run(["docker", "rmi", "-f", *tags.values()], capture_output=True)


def build_example(name: str, tag: str, *, label: str) -> str:
    """Build examples/images/``name`` as ``tag``; another ``label`` gives a new image ID."""
    subprocess.run(
        [
            "docker", "build", "-q", "--label", f"kliko-async-test={label}", "-t", tag,
            "-f", str(ROOT / f"examples/images/{name}/Dockerfile"), str(ROOT / "examples/images"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return image_id(tag)


def image_id(tag: str) -> str:
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


class Project:
    """A chain file, its header file and a cache folder in one test folder."""

    def __init__(self, kliko: KlikoCli, images: dict[str, str], creations: Creations) -> None:
        self.kliko = kliko
        self.images = images
        self.creations = creations
        self.folder = kliko.cwd
        self.header = self.folder / "header.txt"
        self.header.write_text("# header one\n")
        self.gen: dict[str, object] = {
            "image": images["gen"],
            "params": {"n": 3, "header": "header.txt"},
            "env": {"MODE": "a"},
        }
        self.other_params: dict[str, object] = {"n": 2, "prefix": "other"}
        self.side_inputs = ["other"]
        self.renamed: dict[str, str] = {}
        """Old step name -> the name the chain gives it now."""

    def write(self) -> Path:
        steps: dict[str, dict[str, object]] = {
            "gen": self.gen,
            "upper": {"image": self.images["upper"], "inputs": ["gen"]},
            "other": {"image": self.images["gen"], "params": self.other_params},
            "side": {"image": self.images["lower"], "inputs": self.side_inputs},
        }
        for step in steps.values():
            if "inputs" in step:
                step["inputs"] = [self.name(i) for i in step["inputs"]]  # type: ignore[attr-defined]
        chain = {"steps": {self.name(old): step for old, step in steps.items()}}
        path = self.folder / "chain.yaml"
        path.write_text(json.dumps(chain))  # JSON is YAML
        return path

    def name(self, old: str) -> str:
        return self.renamed.get(old, old)

    def run(self) -> set[str]:
        """Run the chain with the CLI; the steps that started a container."""
        chain = self.write()
        log = self.folder / "run.log"
        since = time.time()
        process = self.kliko.popen(
            "run", chain, "--cache-dir", self.folder / "cache", "--out", "out", "--plain", log=log
        )
        assert process.wait(timeout=180) == 0, log.read_text()
        ran = self.creations(since - 1, time.time() + 1, owner_pid=process.pid)
        return {labels[STEP] for labels in ran if STEP in labels}

    def ran_in_process(self) -> set[str]:
        """Run the chain in this process with the library; the steps that started a container."""
        chain = self.write()
        since = time.time()
        result = api.run_blocking(
            lambda: api.run(chain, cache_dir=self.folder / "cache", out=self.folder / "out")
        )
        assert result.ok, result
        ran = self.creations(since - 1, time.time() + 1, owner_pid=os.getpid())
        return {labels[STEP] for labels in ran if STEP in labels}

    def output(self, step: str, name: str = "numbers.txt") -> str:
        return (self.folder / "out" / step / name).read_text()


@pytest.fixture
def project(kliko: KlikoCli, images: dict[str, str], container_creations: Creations) -> Project:
    project = Project(kliko, images, container_creations)
    assert project.run() == ALL
    return project


def test_nothing_changed_starts_no_container(project: Project) -> None:
    before = {step: sorted((project.folder / "out" / step).iterdir()) for step in ALL}
    assert project.run() == set()
    assert {step: sorted((project.folder / "out" / step).iterdir()) for step in ALL} == before
    assert project.output("gen").startswith("# header one\n")


def test_a_parameter_reruns_its_step_and_what_is_downstream(project: Project) -> None:
    project.gen["params"] = {"n": 4, "header": "header.txt"}
    assert project.run() == {"gen", "upper"}
    assert project.output("gen").count("line") == 4


def test_an_upstream_key_reruns_the_steps_below_it_only(project: Project) -> None:
    project.other_params = {"n": 2, "prefix": "changed"}
    assert project.run() == {"other", "side"}
    assert "changed 1" in project.output("side")


def test_a_file_parameter_edited_in_place_reruns(project: Project) -> None:
    project.header.write_text("# header two\n")
    assert project.run() == {"gen", "upper"}
    assert project.output("gen").startswith("# header two\n")
    assert project.output("upper").startswith("# HEADER TWO\n")


def test_a_file_parameter_is_keyed_by_content_not_by_path(project: Project) -> None:
    (project.folder / "moved.txt").write_bytes(project.header.read_bytes())
    project.gen["params"] = {"n": 3, "header": "moved.txt"}
    assert project.run() == set()


def test_env_reruns_when_a_value_changes_or_a_name_is_added(project: Project) -> None:
    project.gen["env"] = {"MODE": "b"}
    assert project.run() == {"gen", "upper"}
    project.gen["env"] = {"MODE": "b", "OMP_NUM_THREADS": "1"}
    assert project.run() == {"gen", "upper"}


def test_an_image_rebuilt_under_the_same_tag_reruns(
    project: Project, images: dict[str, str]
) -> None:
    first = image_id(images["lower"])
    try:
        assert build_example("lower", images["lower"], label="second") != first
        assert project.run() == {"side"}
    finally:
        build_example("lower", images["lower"], label="first")
    assert image_id(images["lower"]) == first
    assert project.run() == set(), "the first build's entries are still there"


def test_the_user_a_step_runs_as_is_not_part_of_the_key(project: Project) -> None:
    """Who runs a container changes who owns its files, not what they hold."""
    project.gen["user"] = "1234:1234"
    assert project.run() == set()


def test_a_file_edited_while_the_chain_runs_is_seen_as_it_was_planned(
    kliko: KlikoCli, tmp_path: Path, images: dict[str, str]
) -> None:
    """File parameters are copied when planning: the copy is hashed into the key and is what
    the container reads, so an edit after planning can never publish new content under the
    key of the old."""
    header = tmp_path / "header.txt"
    header.write_text("# as planned\n")
    chain = tmp_path / "race.yaml"
    chain.write_text(
        "steps:\n"
        "  slow: {image: example/sleep, params: {seconds: 4}}\n"
        f"  late: {{image: {images['gen']}, inputs: [slow],\n"
        "          params: {n: 1, header: header.txt}}\n"
    )
    cache = tmp_path / "cache"
    log = tmp_path / "run.log"
    process = kliko.popen("run", chain, "--cache-dir", cache, "--out", "out", "--plain", log=log)
    deadline = time.monotonic() + 60
    while "slow | started" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    header.write_text("# edited while slow ran\n")
    assert process.wait(timeout=120) == 0, log.read_text()
    assert (tmp_path / "out/late/numbers.txt").read_text().startswith("# as planned\n")

    again = kliko("run", chain, "--cache-dir", cache, "--out", "out", "--plain")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "late | cached" not in again.stdout, "the edited content has a key of its own"
    assert (tmp_path / "out/late/numbers.txt").read_text().startswith("# edited while slow ran\n")

    header.write_text("# as planned\n")
    third = kliko("run", chain, "--cache-dir", cache, "--out", "out", "--plain")
    assert "late | cached" in third.stdout, third.stdout


# -- ingredients no chain file can change alone: in-process, with the library -----------------


def test_renaming_a_lone_input_starts_no_container(project: Project) -> None:
    """A lone input is all of /input: the container never sees the name of its step."""
    project.renamed = {"gen": "made"}
    assert project.run() == set()
    assert project.output("upper") == project.output("made").upper()


def test_renaming_one_of_several_inputs_reruns_the_step_that_sees_its_folder(
    project: Project,
) -> None:
    """Several inputs are in /input/<step>/: a new name is a new folder, so a new output."""
    project.side_inputs = ["other", "gen"]
    assert project.run() == {"side"}
    assert (project.folder / "out" / "side" / "gen").is_dir()
    project.renamed = {"gen": "made"}
    assert project.run() == {"side"}, "upper, whose lone input it is, stays cached"
    assert project.output("side", "made/numbers.txt") == project.output("made").lower()


def test_the_command_is_part_of_the_key(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    assert project.ran_in_process() == set()
    command = ("/bin/sh", "/kliko")  # the same program, started another way
    monkeypatch.setattr(plan, "KLIKO_COMMAND", command)
    monkeypatch.setattr(workspace, "KLIKO_COMMAND", command)
    assert project.ran_in_process() == ALL
    made = [e.manifest for e in Cache(project.folder / "cache").entries()]
    assert sorted(m.step for m in made if m.ingredients.command == command) == sorted(ALL)


def test_the_cache_format_version_is_part_of_the_key(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert project.ran_in_process() == set()
    monkeypatch.setattr(key, "CACHE_FORMAT_VERSION", key.CACHE_FORMAT_VERSION + 1)
    assert project.ran_in_process() == ALL


def test_an_entry_records_every_ingredient(project: Project, images: dict[str, str]) -> None:
    manifests = {e.manifest.step: e.manifest for e in Cache(project.folder / "cache").entries()}
    gen = manifests["gen"].ingredients
    assert gen.image_id == image_id(images["gen"])
    assert gen.command == ("/kliko",)
    assert gen.io == "split"
    assert gen.parameters["n"] == 3
    assert gen.parameters["header"] == "/param_files/header"
    assert gen.env == {"MODE": "a"}
    assert gen.file_hashes == {"/param_files/header": hashlib.sha256(b"# header one\n").hexdigest()}
    assert manifests["upper"].ingredients.inputs == {"/input": manifests["gen"].key}
    assert manifests["upper"].ingredients.input_layout == "whole"
    assert manifests["gen"].run_id is not None
