"""Luigi integration (extra ``luigi``): Kliko 0.8's ``KlikoTask``, as a thin adapter.

A subclass names its image with ``image_name()`` and its upstream tasks with ``requires()``; its
Luigi parameters are generated from the image's kliko.yml. The task graph is turned into a chain
and run by the same engine and cache as ``kliko-async run``, so ``output()`` is the published
cache entry of the task's key, and Luigi and the CLI share results::

    class Simulate(KlikoTask):
        @classmethod
        def image_name(cls) -> str:
            return "example/gen"

    class Image(KlikoTask):
        @classmethod
        def image_name(cls) -> str:
            return "example/upper"

        def requires(self) -> Simulate:
            return Simulate(n=10)

    luigi.build([Image()], local_scheduler=True)
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, ClassVar

import luigi
from luigi.task import flatten

from kliko_async.api import dry_run, read_image, run, run_blocking
from kliko_async.cache import Cache, default_cache_dir
from kliko_async.chain import Chain, parse_chain
from kliko_async.spec import Field, KlikoSpec

_SCALAR_PARAMETERS: dict[str, type[luigi.Parameter[Any]]] = {
    "str": luigi.OptionalStrParameter,
    "file": luigi.OptionalStrParameter,
    "int": luigi.OptionalIntParameter,
    "float": luigi.OptionalFloatParameter,
    "bool": luigi.OptionalBoolParameter,
}


class KlikoTask(luigi.Task):
    """A Luigi task that runs one Kliko image through kliko-async."""

    cache_dir: ClassVar[str | os.PathLike[str] | None] = None
    """The kliko-async cache folder; None for the default ($XDG_CACHE_HOME/kliko-async)."""

    @classmethod
    def image_name(cls) -> str:
        """The Kliko image this task runs (a tag or an image ID)."""
        raise NotImplementedError(f"{cls.__name__} must define image_name()")

    @classmethod
    def spec(cls) -> KlikoSpec:
        """The image's kliko.yml, remembered in this task's cache folder."""
        return _spec_of(cls.image_name(), os.fspath(cls.cache_dir) if cls.cache_dir else None)

    @classmethod
    def get_params(cls) -> list[tuple[str, luigi.Parameter[Any]]]:
        params: list[tuple[str, luigi.Parameter[Any]]] = list(super().get_params())
        if cls.image_name.__func__ is KlikoTask.image_name.__func__:  # type: ignore[attr-defined]
            return params  # the abstract base: no image, no generated parameters
        taken = {name for name, _ in params}
        for field in cls.spec().fields().values():
            if field.name not in taken:
                params.append((field.name, _parameter_for(field)))
        return params

    def kliko_params(self) -> dict[str, Any]:
        """This task's Kliko parameters: the generated Luigi parameters that have a value."""
        values: dict[str, Any] = {}
        for name in self.spec().fields():
            value = getattr(self, name, None)
            if value is not None:
                values[name] = list(value) if isinstance(value, tuple) else value
        return values

    def step_name(self) -> str:
        """A name for this task's step, the same in every chain it appears in."""
        return f"{self.task_family[:80]}-{self.task_id[-10:]}".replace("_", "-")

    def to_chain(self) -> Chain:
        """This task and everything it requires, as a kliko-async chain."""
        steps: dict[str, dict[str, Any]] = {}

        def visit(task: KlikoTask) -> None:
            if task.step_name() in steps:
                return
            upstream = [t for t in flatten(task.requires()) if isinstance(t, KlikoTask)]
            for dependency in upstream:
                visit(dependency)
            steps[task.step_name()] = {
                "image": task.image_name(),
                "params": task.kliko_params(),
                "inputs": [t.step_name() for t in upstream],
            }

        visit(self)
        return parse_chain({"steps": steps}, source=f"<luigi {self.task_id}>", base_dir=Path.cwd())

    @functools.cached_property
    def cache_key(self) -> str:
        plan = run_blocking(lambda: dry_run(self.to_chain(), cache_dir=self.cache_dir))
        return plan.steps[self.step_name()].key

    def output(self) -> luigi.LocalTarget:
        """The output folder of this task's cache entry: it exists once the task has run."""
        cache = Cache(Path(self.cache_dir) if self.cache_dir else default_cache_dir())
        return luigi.LocalTarget(str(cache.entry_path(self.cache_key) / "output"))

    def run(self) -> None:
        result = run_blocking(lambda: run(self.to_chain(), cache_dir=self.cache_dir))
        result.raise_for_failures()


def _parameter_for(field: Field) -> luigi.Parameter[Any]:
    options: dict[str, Any] = {"default": field.initial, "description": field.help_text}
    if field.type == "choice":
        return luigi.OptionalChoiceParameter(
            choices=list(field.choices or {}), var_type=str, **options
        )
    if field.is_list():
        return luigi.OptionalListParameter(**options)
    return _SCALAR_PARAMETERS[field.type](**options)


@functools.cache
def _spec_of(image: str, cache_dir: str | None) -> KlikoSpec:
    """An image's kliko.yml, read once per process (and once per image ID on disk)."""
    return run_blocking(lambda: read_image(image, cache_dir=cache_dir)).spec
