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

As Kliko's documentation reads as text, ``image_name`` may also be written without
``@classmethod`` (it is made one). As with Kliko 0.8: required kliko.yml fields are required
Luigi parameters, and parameters are validated when a task is created (so Luigi reports a bad
value at once, naming the task); the container's log lines go to Python logging while it runs
(logger ``luigi-interface.kliko``, shown by Luigi's default logging); a failed task raises
:class:`~kliko_async.errors.RunFailed` with the step's exit code, reason, last log lines and log
file. Kliko 0.8's ``connection`` held a docker-py client; kliko-async talks to the engine
itself, so a class sets ``docker_url`` instead (``connection`` may hold such a URL too; a client
object there is refused clearly). A Luigi task outside Kliko that a KlikoTask requires gives
it its output's files and folders, as data inputs (``data:`` in a chain file).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import luigi
from luigi.task import flatten

from kliko_async.api import dry_run, on_engine, read_image, run, run_blocking
from kliko_async.cache.store import Cache, default_cache_dir
from kliko_async.errors import ParameterError
from kliko_async.events import Event, LogLine
from kliko_async.model.chain import Chain, chain_from_steps
from kliko_async.model.chainmodel import step_name_problem
from kliko_async.model.parameters import validate_parameters
from kliko_async.model.spec import Field, KlikoSpec

T = TypeVar("T")

LOGGER = logging.getLogger("luigi-interface.kliko")
"""Container log lines, as ``<step> | <line>``: a child of Luigi's own interface logger."""

_OPTIONAL: dict[str, type[luigi.Parameter[Any]]] = {
    "str": luigi.OptionalStrParameter,
    "file": luigi.OptionalStrParameter,
    "int": luigi.OptionalIntParameter,
    "float": luigi.OptionalFloatParameter,
    "bool": luigi.OptionalBoolParameter,
}
_REQUIRED: dict[str, type[luigi.Parameter[Any]]] = {
    "str": luigi.Parameter,
    "file": luigi.Parameter,
    "int": luigi.IntParameter,
    "float": luigi.FloatParameter,
    "bool": luigi.BoolParameter,
}


class KlikoTask(luigi.Task):
    """A Luigi task that runs one Kliko image through kliko-async."""

    cache_dir: ClassVar[str | os.PathLike[str] | None] = None
    """The kliko-async cache folder; None for the default ($XDG_CACHE_HOME/kliko-async)."""

    docker_url: ClassVar[str | None] = None
    """The Docker Engine of this task class (``unix://...``, ``tcp://...``); None for
    ``DOCKER_HOST`` or the local socket."""

    connection: ClassVar[object] = None
    """Kliko 0.8's docker-py client. Only a URL string is accepted here (as ``docker_url``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        plain = cls.__dict__.get("image_name")
        if inspect.isfunction(plain):  # `def image_name(cls):` as Kliko's docs read as text
            cls.image_name = classmethod(plain)  # type: ignore[method-assign, assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.image_name.__func__ is not KlikoTask.image_name.__func__:  # type: ignore[attr-defined]
            validate_parameters(
                self.spec(), self.kliko_params(), where=f"Luigi task {self.task_id}"
            )

    @classmethod
    def engine_url(cls) -> str | None:
        """The Docker Engine URL of this class: ``docker_url``, or ``connection`` if a URL."""
        if cls.connection is None or isinstance(cls.connection, str):
            return cls.docker_url or cls.connection
        raise ParameterError(
            f"{cls.__name__}.connection holds {type(cls.connection).__name__!r}, a Docker "
            "client as Kliko 0.8 used; kliko-async talks to the Docker Engine itself",
            where=f"Luigi task class {cls.__name__}",
            hint="Set docker_url = 'unix:///var/run/docker.sock' (or a tcp:// URL) on the class "
            "instead, or leave both unset for DOCKER_HOST or the local socket.",
        )

    @classmethod
    def image_name(cls) -> str:
        """The Kliko image this task runs (a tag or an image ID)."""
        raise NotImplementedError(f"{cls.__name__} must define image_name()")

    @classmethod
    def spec(cls) -> KlikoSpec:
        """The image's kliko.yml, remembered in this task's cache folder."""
        cache_dir = os.fspath(cls.cache_dir) if cls.cache_dir else None
        return _spec_of(cls.image_name(), cache_dir, cls.engine_url())

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
        """A name for this task's step, the same in every chain it appears in and never that
        of another task: see :func:`task_name`."""
        return task_name(self)

    def to_chain(self) -> Chain:
        """This task and everything it requires, as a kliko-async chain: the Luigi tasks
        outside Kliko that any of them requires are data, their outputs' files and folders."""
        steps, data, _ = self._graph()
        return chain_from_steps(
            steps, data=data, source=f"<luigi {self.task_id}>", base_dir=Path.cwd()
        )

    def _graph(self) -> tuple[dict[str, dict[str, Any]], dict[str, str], list[luigi.Task]]:
        """The steps, the data (name -> path) and the Luigi tasks outside Kliko it comes from."""
        steps: dict[str, dict[str, Any]] = {}
        data: dict[str, str] = {}
        outside: list[luigi.Task] = []

        def visit(task: KlikoTask) -> None:
            if task.step_name() in steps:
                return
            inputs: list[str] = []
            for required in flatten(task.requires()):
                if isinstance(required, KlikoTask):
                    visit(required)
                    inputs.append(required.step_name())
                else:
                    inputs += _data_of(task, required, data)
                    outside.append(required)
            steps[task.step_name()] = {
                "image": task.image_name(),
                "params": task.kliko_params(),
                "inputs": inputs,
            }

        visit(self)
        return steps, data, outside

    def complete(self) -> bool:
        """Whether this task's cache entry is there, its key computed afresh: Luigi keeps one
        instance per set of parameters for the whole process, and a file parameter's content
        (or anything else upstream) may have changed since the instance last looked. Not
        before every Luigi task outside Kliko it reads from is: their data is part of the key.
        """
        self.__dict__.pop("cache_key", None)
        if not all(task.complete() for task in self._graph()[2]):
            return False
        return bool(super().complete())

    @functools.cached_property
    def cache_key(self) -> str:
        """This task's key: from its plan at ``complete()``, then from the run that made it."""
        chain = self.to_chain()
        plan = run_blocking(
            lambda: on_engine(
                self.engine_url(),
                lambda engine: dry_run(chain, runtime=engine, cache_dir=self.cache_dir),
            )
        )
        return plan.steps[self.step_name()].key

    def output(self) -> luigi.LocalTarget:
        """The output folder of this task's cache entry: it exists once the task has run."""
        cache = Cache(Path(self.cache_dir) if self.cache_dir else default_cache_dir())
        return luigi.LocalTarget(str(cache.entry_path(self.cache_key) / "output"))

    def run(self) -> None:
        chain = self.to_chain()
        result = run_blocking(
            lambda: on_engine(
                self.engine_url(),
                lambda engine: run(
                    chain, runtime=engine, cache_dir=self.cache_dir, on_event=_log_line
                ),
            )
        )
        result.raise_for_failures()
        self.__dict__["cache_key"] = result.steps[self.step_name()].key  # output(): what ran


def task_name(task: luigi.Task) -> str:
    """A step (or data) name for a Luigi task: its family and the hash of its parameters
    (Luigi's task ID's end), never that of another task.

    A family that cannot be a step name as it is (a class name that starts with ``_`` or holds
    letters beyond ASCII, as Python allows) or that is too long is shown in ASCII and told
    apart from the others by a hash of it."""
    family = task.task_family
    name = f"{family}-{task.task_id[-10:]}".replace("_", "-")
    if len(family) <= 80 and step_name_problem(name) is None:
        return name  # as before: the names several inputs are seen by (and keyed) stay
    shown = re.sub(r"[^A-Za-z0-9.]+", "-", family).strip(".-")
    while len(shown) > 60 and "." in shown:  # the class's own name matters most
        shown = shown.partition(".")[2]
    shown = shown[:60].strip(".-") or "task"
    digest = hashlib.sha256(family.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{shown}-{digest}-{task.task_id[-10:]}"


def _data_of(task: KlikoTask, required: luigi.Task, data: dict[str, str]) -> list[str]:
    """The data inputs that ``required``, a Luigi task outside Kliko, gives ``task``: each
    file or folder of its output (added to ``data``), as Kliko 0.8 gave a task its input."""
    targets = flatten(required.output())
    if not all(isinstance(target, luigi.LocalTarget) for target in targets):
        kinds = sorted({type(t).__name__ for t in targets if not isinstance(t, luigi.LocalTarget)})
        raise ParameterError(
            f"it requires {required.task_id}, whose output is not a file or folder on this "
            f"machine ({', '.join(kinds)}), and a container can only be given those",
            where=f"Luigi task {task.task_id}",
            hint="Make that task's output a luigi.LocalTarget, or add a task that copies it "
            "to one and require that task instead.",
        )
    base = task_name(required)
    names = [base if len(targets) == 1 else f"{base}-{i}" for i in range(1, len(targets) + 1)]
    for name, target in zip(names, targets, strict=True):
        data[name] = os.path.abspath(target.path)
    return names


def _log_line(event: Event) -> None:
    if isinstance(event, LogLine):
        LOGGER.info("%s | %s", event.step, event.text)


def _parameter_for(field: Field) -> luigi.Parameter[Any]:
    """A required field without a default is a required Luigi parameter; others optional."""
    required = field.required and field.initial is None
    options: dict[str, Any] = {"description": field.help_text}
    if not required:
        options["default"] = field.initial
    if field.type == "choice":
        kind = luigi.ChoiceParameter if required else luigi.OptionalChoiceParameter
        return kind(choices=list(field.choices or {}), var_type=str, **options)
    if field.is_list():
        return (luigi.ListParameter if required else luigi.OptionalListParameter)(**options)
    return (_REQUIRED if required else _OPTIONAL)[field.type](**options)


@functools.cache
def _spec_of(image: str, cache_dir: str | None, url: str | None) -> KlikoSpec:
    """An image's kliko.yml, read once per process (and once per image ID on disk)."""
    found = run_blocking(
        lambda: on_engine(
            url, lambda engine: read_image(image, cache_dir=cache_dir, runtime=engine)
        )
    )
    return found.spec
