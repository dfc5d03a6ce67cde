"""Luigi builds that find what changed, as a scientist re-running a pipeline from one Python
process (a notebook, a script that builds twice) expects: Luigi keeps one task instance per set
of parameters for the whole process, so nothing a task remembered may hide a change."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():  # luigi warns about its own range-task autoloading
    warnings.simplefilter("ignore", DeprecationWarning)
    import luigi

from kliko_async.luigi import KlikoTask

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]


class WithHeader(KlikoTask):
    @classmethod
    def image_name(cls) -> str:
        return "example/gen"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    WithHeader.cache_dir = tmp_path / "cache"
    return tmp_path / "cache"


def numbers(task: KlikoTask) -> str:
    return (Path(task.output().path) / "numbers.txt").read_text()


def test_a_file_parameter_changed_between_two_builds_in_one_process_runs_again() -> None:
    Path("header.txt").write_text("first header\n")
    assert luigi.build([WithHeader(n=1, header="header.txt")], local_scheduler=True) is True
    assert numbers(WithHeader(n=1, header="header.txt")) == "first header\nline 1\n"

    Path("header.txt").write_text("second header\n")
    assert luigi.build([WithHeader(n=1, header="header.txt")], local_scheduler=True) is True
    assert numbers(WithHeader(n=1, header="header.txt")) == "second header\nline 1\n"
