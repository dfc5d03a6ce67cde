"""Kliko 0.8's Luigi shape (image_name + requires) running on the kliko-async engine."""

from __future__ import annotations

import logging
import os
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import new_test_tag

with warnings.catch_warnings():  # luigi warns about its own range-task autoloading
    warnings.simplefilter("ignore", DeprecationWarning)
    import luigi

from kliko_async.errors import ParameterError, RunFailed, RuntimeUnavailable
from kliko_async.luigi import KlikoTask

ROOT = Path(__file__).resolve().parents[2]


class Simulate(KlikoTask):
    @classmethod
    def image_name(cls) -> str:
        return "example/gen"


class Shout(KlikoTask):
    @classmethod
    def image_name(cls) -> str:
        return "example/upper"

    def requires(self) -> Simulate:
        return Simulate(n=3, prefix="visibility")


class Whisper(KlikoTask):
    @classmethod
    def image_name(cls) -> str:
        return "example/lower"

    def requires(self) -> Simulate:
        return Simulate(n=3, prefix="visibility")


class Combine(KlikoTask):
    @classmethod
    def image_name(cls) -> str:
        return "example/merge"

    def requires(self) -> list[KlikoTask]:
        return [Shout(), Whisper(suffix=".low")]


@pytest.fixture
def luigi_cache(tmp_path: Path, example_images: None) -> Path:
    for task in (Simulate, Shout, Whisper, Combine):
        task.cache_dir = tmp_path / "cache"
    return tmp_path / "cache"


def test_kliko_yml_fields_become_luigi_parameters(luigi_cache: Path) -> None:
    names = [name for name, _ in Simulate.get_params()]
    assert names == ["n", "scale", "prefix", "header"]
    task = Simulate(n=7)
    assert task.kliko_params() == {"n": 7, "scale": 1.0, "prefix": "line"}


def test_a_luigi_graph_runs_through_the_engine_and_shares_its_cache(
    luigi_cache: Path, container_creations: Callable[..., list[dict[str, str]]]
) -> None:
    final = Combine()
    assert not final.output().exists()

    assert luigi.build([final], local_scheduler=True, detailed_summary=False) is True

    merged = Path(final.output().path) / "merged.txt"
    lines = merged.read_text().splitlines()
    assert "VISIBILITY 1" in lines
    assert "visibility 3" in lines
    assert Path(Simulate(n=3, prefix="visibility").output().path, "numbers.txt").is_file()

    # A second build finds every output complete and starts no container.
    since = time.time()
    assert luigi.build([Combine()], local_scheduler=True) is True
    # Only this process's (luigi runs its tasks here): others may use the same engine meanwhile.
    assert container_creations(since, time.time(), owner_pid=os.getpid()) == []


def test_changing_an_upstream_parameter_changes_the_downstream_output(luigi_cache: Path) -> None:
    class Short(KlikoTask):
        @classmethod
        def image_name(cls) -> str:
            return "example/upper"

        def requires(self) -> Simulate:
            return Simulate(n=1, prefix="visibility")

    Short.cache_dir = luigi_cache
    assert luigi.build([Short(), Shout()], local_scheduler=True) is True
    short = (Path(Short().output().path) / "numbers.txt").read_text().splitlines()
    long = (Path(Shout().output().path) / "numbers.txt").read_text().splitlines()
    assert short == ["VISIBILITY 1"]
    assert long == ["VISIBILITY 1", "VISIBILITY 2", "VISIBILITY 3"]


# -- as Kliko 0.8 users know KlikoTask -----------------------------------------------------------

CHECKED_YML = """\
schema_version: 3
name: checked
io: split
sections:
  - name: s
    fields:
      - {name: seed, type: int, required: true}
      - name: mode
        type: choice
        choices: {fast: quick and rough, exact: slow and right}
        initial: fast
      - {name: label, type: str, max_length: 5, initial: run}
      - {name: model, type: file, required: false}
      - {name: exit, type: int, initial: 0}
"""
CHECKED_KLIKO = """\
#!/bin/sh
. /param.sh
echo "checked: seed $(param seed) mode $(param mode)"
echo "seed $(param seed)" > /output/seed.txt
echo "checked: exiting with $(param exit)" >&2
exit "$(param exit)"
"""


@pytest.fixture(scope="module")
def checked_image(tmp_path_factory: pytest.TempPathFactory, example_images: None) -> str:
    context = tmp_path_factory.mktemp("checked")
    (context / "kliko.yml").write_text(CHECKED_YML)
    (context / "kliko").write_text(CHECKED_KLIKO)
    (context / "kliko").chmod(0o755)
    (context / "param.sh").write_bytes((ROOT / "examples/images/param.sh").read_bytes())
    (context / "Dockerfile").write_text(
        "FROM kliko-async/busybox\nADD param.sh /\nADD kliko.yml /\nADD kliko /\n"
    )
    tag = new_test_tag("checked")
    subprocess.run(["docker", "build", "-q", "-t", tag, str(context)], check=True)
    return tag


@pytest.fixture
def checked(checked_image: str, tmp_path: Path) -> type[KlikoTask]:
    class Checked(KlikoTask):
        cache_dir = tmp_path / "cache"

        @classmethod
        def image_name(cls) -> str:
            return checked_image

    return Checked


def test_a_required_field_is_a_required_luigi_parameter(checked: type[KlikoTask]) -> None:
    with pytest.raises(luigi.parameter.MissingParameterException, match="seed"):
        checked()
    assert checked(seed=1).kliko_params()["seed"] == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"label": "toolong"}, "'toolong' is 7 characters long; the limit is 5"),
        ({"model": "no-such-model.bin"}, "file parameter 'model': 'no-such-model.bin'"),
    ],
)
def test_bad_parameters_are_refused_when_the_task_is_created(
    checked: type[KlikoTask], params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ParameterError, match="Luigi task Checked") as error:
        checked(seed=1, **params)
    assert message in str(error.value)


def test_a_choice_outside_its_choices_is_refused_when_the_task_is_created(
    checked: type[KlikoTask],
) -> None:
    with pytest.raises(ValueError, match="slowest"):
        checked(seed=1, mode="slowest")


def test_log_lines_go_to_python_logging_while_the_task_runs(
    checked: type[KlikoTask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="luigi-interface.kliko")
    task = checked(seed=7)
    assert luigi.build([task], local_scheduler=True) is True
    lines = [r.getMessage() for r in caplog.records if r.name == "luigi-interface.kliko"]
    assert f"{task.step_name()} | checked: seed 7 mode fast" in lines
    assert (Path(task.output().path) / "seed.txt").read_text() == "seed 7\n"


def test_a_failed_task_says_why_as_the_visualiser_shows_it(checked: type[KlikoTask]) -> None:
    failures: list[BaseException] = []

    @checked.event_handler(luigi.Event.FAILURE)
    def remember(task: KlikoTask, exception: BaseException) -> None:
        failures.append(exception)

    assert luigi.build([checked(seed=1, exit=3)], local_scheduler=True) is False
    (error,) = failures
    assert isinstance(error, RunFailed)
    (failure,) = error.failures
    assert failure.exit_code == 3
    assert "checked: exiting with 3" in failure.last_lines
    text = str(error)
    assert "exited with code 3" in text
    assert "| checked: exiting with 3" in text
    assert f"Its full log is in {failure.log_path}" in text


def test_connection_holding_a_docker_client_is_refused_clearly(checked: type[KlikoTask]) -> None:
    class OldStyle(checked):  # type: ignore[misc, valid-type]
        connection = object()  # Kliko 0.8: docker.Client()

    with pytest.raises(ParameterError, match="docker_url") as error:
        OldStyle(seed=1)
    assert "OldStyle.connection holds 'object', a Docker client" in str(error.value)


def test_docker_url_chooses_the_engine_per_task_class(checked_image: str, tmp_path: Path) -> None:
    class Elsewhere(KlikoTask):
        cache_dir = tmp_path / "cache"
        docker_url = f"unix://{tmp_path}/no-engine.sock"

        @classmethod
        def image_name(cls) -> str:
            return checked_image

    with pytest.raises(RuntimeUnavailable, match=r"no-engine\.sock"):
        Elsewhere(seed=1)

    class Here(Elsewhere):
        docker_url = "unix:///var/run/docker.sock"

    assert luigi.build([Here(seed=2)], local_scheduler=True) is True
