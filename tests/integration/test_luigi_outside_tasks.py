"""A KlikoTask that requires a Luigi task outside Kliko (a download written in Python, an
ExternalTask for raw data) is given that task's output, as Kliko 0.8 gave it: each file or
folder is a data input of the chain, keyed by its content, so a change re-runs the task."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():  # luigi warns about its own range-task autoloading
    warnings.simplefilter("ignore", DeprecationWarning)
    import luigi
    from luigi.mock import MockTarget

from kliko_async.errors import ParameterError
from kliko_async.luigi import KlikoTask

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]


class Download(luigi.Task):
    """Writes an observation folder, as a download step written in Python would."""

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget("observation")

    def run(self) -> None:
        Path("observation").mkdir()
        Path("observation/vis.txt").write_text("visibility 1\n")


class RawData(luigi.ExternalTask):
    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget("raw-data-not-here-yet")


class Archived(luigi.ExternalTask):
    def output(self) -> MockTarget:
        return MockTarget("archive/obs.h5")


class Shout(KlikoTask):
    @classmethod
    def image_name(cls) -> str:
        return "example/upper"

    def requires(self) -> luigi.Task:
        return Download()


class ShoutRaw(Shout):
    def requires(self) -> luigi.Task:
        return RawData()


class ShoutArchived(Shout):
    def requires(self) -> luigi.Task:
        return Archived()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    Shout.cache_dir = tmp_path / "cache"
    return tmp_path / "cache"


def test_the_output_of_a_luigi_task_outside_kliko_is_the_container_s_input() -> None:
    assert luigi.build([Shout()], local_scheduler=True) is True
    assert (Path(Shout().output().path) / "vis.txt").read_text() == "VISIBILITY 1\n"

    Path("observation/vis.txt").write_text("visibility 2\n")
    assert luigi.build([Shout()], local_scheduler=True) is True
    assert (Path(Shout().output().path) / "vis.txt").read_text() == "VISIBILITY 2\n"


def test_data_that_is_not_there_yet_leaves_the_task_waiting_for_it() -> None:
    result = luigi.build([ShoutRaw()], local_scheduler=True, detailed_summary=True)
    assert result.status == luigi.LuigiStatusCode.MISSING_EXT
    assert not ShoutRaw().complete()


def test_an_output_that_is_not_on_this_machine_is_refused_naming_the_tasks() -> None:
    with pytest.raises(ParameterError, match="not a file or folder on this machine") as error:
        ShoutArchived().to_chain()
    assert "Luigi task ShoutArchived" in str(error.value)
    assert "Archived__99914b932b" in str(error.value)
