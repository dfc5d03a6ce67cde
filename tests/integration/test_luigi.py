"""Kliko 0.8's Luigi shape (image_name + requires) running on the kliko-async engine."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

with warnings.catch_warnings():  # luigi warns about its own range-task autoloading
    warnings.simplefilter("ignore", DeprecationWarning)
    import luigi

from kliko_async.luigi import KlikoTask


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
    luigi_cache: Path, container_creations: Callable[[float, float], list[dict[str, str]]]
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
    assert container_creations(since, time.time()) == []


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
