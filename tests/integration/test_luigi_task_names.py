"""Luigi task classes named as Python allows, each its own step: a name that starts with ``_`` or
holds letters beyond ASCII, long namespaced names alike in their first 80 characters, and
``image_name`` written without ``@classmethod`` (as Kliko's documentation reads as text)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():  # luigi warns about its own range-task autoloading
    warnings.simplefilter("ignore", DeprecationWarning)
    import luigi

from kliko_async.luigi import KlikoTask

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("example_images")]

LONG_NAMESPACE = "org.example.observatory.meerkat.calibration.pipelines"


class _Simulate(KlikoTask):
    @classmethod
    def image_name(cls) -> str:
        return "example/gen"


class Étalonner(KlikoTask):
    @classmethod
    def image_name(cls) -> str:
        return "example/upper"

    def requires(self) -> _Simulate:
        return _Simulate(n=2)


class CalibrateAntennaGainsWithTheSkyModelPass1(KlikoTask):
    task_namespace = LONG_NAMESPACE

    @classmethod
    def image_name(cls) -> str:
        return "example/upper"

    def requires(self) -> _Simulate:
        return _Simulate(n=1)


class CalibrateAntennaGainsWithTheSkyModelPass2(CalibrateAntennaGainsWithTheSkyModelPass1):
    def requires(self) -> _Simulate:
        return _Simulate(n=2)


class BothPasses(KlikoTask):
    @classmethod
    def image_name(cls) -> str:
        return "example/merge"

    def requires(self) -> list[KlikoTask]:
        return [
            CalibrateAntennaGainsWithTheSkyModelPass1(),
            CalibrateAntennaGainsWithTheSkyModelPass2(),
        ]


class AsTheDocsRead(KlikoTask):
    def image_name(cls):  # type: ignore[no-untyped-def]
        return "example/gen"


TASKS = (
    _Simulate, Étalonner, CalibrateAntennaGainsWithTheSkyModelPass1,
    CalibrateAntennaGainsWithTheSkyModelPass2, BothPasses, AsTheDocsRead,
)  # fmt: skip


@pytest.fixture(autouse=True)
def cache(tmp_path: Path) -> Path:
    for task in TASKS:
        task.cache_dir = tmp_path / "cache"
    return tmp_path / "cache"


def test_a_class_named_as_python_allows_runs_as_a_step() -> None:
    final = Étalonner()
    assert luigi.build([final], local_scheduler=True) is True
    assert (Path(final.output().path) / "numbers.txt").read_text() == "LINE 1\nLINE 2\n"


def test_classes_alike_in_their_first_80_characters_are_two_steps() -> None:
    both = BothPasses()
    assert luigi.build([both], local_scheduler=True) is True
    output = Path(both.output().path)
    seen = sorted(
        (folder / "numbers.txt").read_text() for folder in output.iterdir() if folder.is_dir()
    )
    assert seen == ["LINE 1\n", "LINE 1\nLINE 2\n"]


def test_image_name_without_classmethod_as_the_docs_read() -> None:
    assert [name for name, _ in AsTheDocsRead.get_params()] == ["n", "scale", "prefix", "header"]
    task = AsTheDocsRead(n=3)
    assert luigi.build([task], local_scheduler=True) is True
    assert (Path(task.output().path) / "numbers.txt").read_text().count("\n") == 3
