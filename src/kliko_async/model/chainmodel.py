"""The checked chain: :class:`Step` and :class:`Chain`, with their names, limits and inputs.

A ``Chain`` is what a chain file becomes once it is loaded (see :mod:`kliko_async.model.chain`), and
what a library user may also build directly: building one runs the graph checks of
:mod:`kliko_async.model.dag`, so an invalid DAG never exists as a ``Chain``.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from kliko_async.errors import ChainError
from kliko_async.model.dag import CYCLE_HINT, check_dag, cycle_text, topological_order
from kliko_async.model.quantities import SIZE_PATTERN, size_in_bytes
from kliko_async.model.yamltext import did_you_mean, yaml_kind

__all__ = [
    "EXPANDED_NAME_PATTERN",
    "RUN_CHAIN_SOURCE",
    "STEP_NAME_PATTERN",
    "Chain",
    "DataInput",
    "MatrixOrigin",
    "Resources",
    "Step",
    "StepName",
    "folder_name_problem",
    "matrix_steps",
    "step_name_problem",
]

STEP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
"""Step names become folder names: 1-100 characters, no ``/``, never ``.`` or ``..``."""

EXPANDED_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._=,+\[\]-]{0,199}$"
"""Names of matrix expansions, such as ``image[weight=natural,robust=0.5]``: also folder names
(mounted as ``/input/<name>``), 1-200 characters, never with ``/``, ``:`` or spaces."""

RUN_CHAIN_SOURCE = "<run_chain>"

MAX_STEPS = 100_000
"""The most steps one chain may have, matrix expansions counted: planning 100,000 takes about
half a minute and a gigabyte of memory; a chain far past it would take hours to plan, not to
run, and is refused before it is built."""
MAX_STEPS_HINT = (
    "Split the work into several chains (they share one cache), or sweep fewer values at once."
)

_NAME_RE = re.compile(STEP_NAME_PATTERN)
_EXPANDED_RE = re.compile(EXPANDED_NAME_PATTERN)
NAME_MAX = 100
"""The longest step name (a folder name)."""
_NAME_MAX = NAME_MAX
_EXPANDED_MAX = 200


def step_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a step name in a chain file, or None when it can."""
    if not isinstance(name, str):
        return (
            f"step name {name!r} is a {yaml_kind(name)}, not text; quote it in the chain file "
            "so YAML reads it as a string"
        )
    if not name:
        return "a step name is empty; step names become folder names and cannot be empty"
    if len(name) > _NAME_MAX:
        return f"step name {name[:20]!r}... is {len(name)} characters long; the limit is 100"
    if not _NAME_RE.match(name):
        return (
            f"step name {name!r} is not safe as a folder name; use letters, digits, '.', '_' "
            "or '-', starting with a letter or digit (no '/' and no '..')"
        )
    return None


def folder_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a step of a loaded chain (a folder under /input), or None."""
    if _NAME_RE.match(name):
        return None
    if len(name) > _EXPANDED_MAX:
        return f"name {name[:20]!r}... is {len(name)} characters long; the limit is 200"
    if not _EXPANDED_RE.match(name):
        return (
            f"name {name!r} is not safe as a folder name; use letters, digits and "
            "'.', '_', '-', '=', ',', '+', '[', ']', starting with a letter or digit"
        )
    return None


def _check_step_name(name: str) -> str:
    problem = step_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


def _check_folder_name(name: str) -> str:
    problem = folder_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


StepName = Annotated[
    str,
    AfterValidator(_check_step_name),
    WithJsonSchema({"type": "string", "pattern": STEP_NAME_PATTERN, "maxLength": _NAME_MAX}),
]
"""A step name as written in a chain file."""

_LoadedName = Annotated[str, AfterValidator(_check_folder_name)]


def _parse_memory(value: object) -> object:
    """Turn ``512m``, ``2g``, ``1.5GiB``, ``100k`` (binary units, as Docker reads them) into bytes.

    Integers pass through; anything else is left for the integer check to reject.
    """
    if isinstance(value, bool):
        raise ValueError("memory must be a number of bytes or a size such as '512m', not a boolean")
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(f"memory {value!r} is not a whole number of bytes")
    if not isinstance(value, str):
        return value
    size = size_in_bytes(value, decimal_kb=False)
    if size is None:
        raise ValueError(
            f"memory {value!r} is not a size; write bytes or a number with a unit, "
            "such as '512m', '2g', '1.5GiB' or '100k'"
        )
    return size


Memory = Annotated[
    int,
    Field(gt=0),
    BeforeValidator(_parse_memory),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "exclusiveMinimum": 0},
                {"type": "string", "pattern": SIZE_PATTERN},
            ]
        },
        mode="validation",
    ),
]


class Resources(BaseModel):
    """Limits for one step's container."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="CPU limit in cores, such as 0.5 or 2. No limit when absent.",
    )
    memory: Memory | None = Field(
        default=None,
        description=(
            "Memory limit: a number of bytes, or a size with a binary unit such as '512m', "
            "'2g', '1.5GiB' or '100k' (case-insensitive). Stored as bytes. No limit when absent."
        ),
    )
    gpus: int | None = Field(
        default=None,
        ge=0,
        description="Number of GPUs to give the container. None when absent.",
    )


class MatrixOrigin(BaseModel):
    """Where a step expanded from a ``matrix:`` came from, and its combination of values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: str = Field(description="The name of the matrix step as written in the chain file.")
    values: dict[str, Any] = Field(
        description=(
            "The combination: parameter -> value. For a step paired with 'same-as', the "
            "combination of the step it pairs with (not parameters of this step)."
        )
    )
    same_as: str | None = Field(
        default=None, description="The matrix step this one pairs with, one to one, or None."
    )


def check_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` if every name and value can reach a container as written; else a clear error.

    A name holding ``=`` would be split by the engine (``A=B: x`` becomes ``A`` = ``B=x``), an
    empty one is refused only when the container is created, and a NUL byte cannot be passed
    at all.
    """
    for name, value in env.items():
        if not name:
            raise ValueError("a variable has an empty name; give every variable a name")
        if "=" in name:
            raise ValueError(
                f"the name {name[:60]!r} holds '=', which would split it into another name "
                "and value; use a name without '='"
            )
        if "\0" in name or "\0" in value:
            raise ValueError(f"{name[:60]!r} holds a NUL byte, which no process can be given")
    return env


_NUMERIC_USER = re.compile(r"([0-9]+)(?::([0-9]+))?")


def numeric_user(user: str) -> tuple[int, int | None] | None:
    """``uid`` and ``gid`` (None if not given) of a ``uid[:gid]`` user, or None for any other
    text. A step's own user must be numeric: the runtimes give its folders to that uid (Docker),
    pass it on as ``--uid``/``--gid`` (Charliecloud), or run it only when it is the invoking
    ``uid:gid``; a name would fail only once the step is reached."""
    found = _NUMERIC_USER.fullmatch(user)
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2)) if found.group(2) else None


def check_user(user: str | None) -> str | None:
    """``user`` if it is a numeric ``uid`` or ``uid:gid``; else a clear error."""
    if user is not None and numeric_user(user) is None:
        raise ValueError(
            f"{user[:60]!r} is not a numeric uid or uid:gid; give the user as uid:gid, such as "
            "'1000:1000' (a step's folders are given to that uid while it runs, so a user "
            "name cannot be used)"
        )
    return user


StepUser = Annotated[str | None, AfterValidator(check_user)]
"""A step's ``user:``: a numeric ``uid`` or ``uid:gid``, checked when the chain is loaded."""


class Step(BaseModel):
    """One step of a loaded chain, with its name, inputs and build folder resolved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: _LoadedName = Field(description="The step's unique name, also its folder name.")
    image: str | None = Field(description="The image to run, or None when it is built.")
    build: Path | None = Field(description="Absolute path of the build context, or None.")
    params: dict[str, Any] = Field(description="Parameters for the image.")
    inputs: tuple[str, ...] = Field(description="Names of the steps this step reads from.")
    retries: int = Field(ge=0, description="How many times to run the step again on failure.")
    retry_backoff: float = Field(
        ge=0, description="Seconds before the first retry; doubles each retry."
    )
    timeout: float | None = Field(gt=0, description="Seconds before the step is stopped.")
    resources: Resources = Field(description="CPU, memory and GPU limits.")
    user: StepUser = Field(description="The user to run the container as (uid or uid:gid).")
    env: Annotated[dict[str, str], AfterValidator(check_env)] = Field(
        description="Extra environment variables."
    )
    matrix: MatrixOrigin | None = Field(
        default=None, description="The matrix this step is one expansion of, or None."
    )
    inputs_in_folders: bool = Field(
        default=False,
        description=(
            "Mount every input in a subfolder named after it, even a single one (a consumer of "
            "a matrix step always sees /input/<expansion>/ or /work/<expansion>/)."
        ),
    )


class DataInput(BaseModel):
    """A host file or folder a chain starts from (``data:``): steps read it as an input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: _LoadedName = Field(description="The name steps list in their inputs.")
    path: Path = Field(description="The absolute path of the file or folder on the host.")


class Chain(BaseModel):
    """A checked chain: unique safe names, known inputs and no cycle.

    Building a ``Chain`` directly runs the same graph checks as loading a chain file does.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="The chain file path as given, or '<run_chain>'.")
    steps: dict[str, Step] = Field(description="The steps by name, in file order.")
    data: dict[str, DataInput] = Field(
        default_factory=dict,
        description="Host files and folders the steps read as inputs, by name (data:).",
    )

    @model_validator(mode="after")
    def _check_graph(self) -> Chain:
        problems = [
            f"step {key!r} is stored under a different name, {step.name!r}"
            for key, step in self.steps.items()
            if key != step.name
        ]
        problems += [
            f"data {key!r} is stored under a different name, {data.name!r}"
            for key, data in self.data.items()
            if key != data.name
        ]
        problems += [
            f"{name!r} names both a step and data; give them different names"
            for name in self.data
            if name in self.steps
        ]
        check_dag(self.source, self._graph(), problems, matrix_steps(self.steps.values()))
        return self

    def _graph(self) -> dict[str, tuple[str, ...]]:
        graph = {name: step.inputs for name, step in self.steps.items()}
        return {**{name: () for name in self.data if name not in graph}, **graph}

    def topological_order(self) -> list[str]:
        """Step names with every step after its inputs, in file order where the inputs allow
        (data are not steps: they are not in it)."""
        order = topological_order(self._graph())
        if order is None:  # only reachable through model_construct
            raise ChainError(cycle_text(self._graph()), where=self.source, hint=CYCLE_HINT)
        return [name for name in order if name in self.steps]

    def dependents(self) -> dict[str, tuple[str, ...]]:
        """Every step (and data) mapped to the steps that list it as an input, in file order."""
        found: dict[str, list[str]] = {name: [] for name in [*self.data, *self.steps]}
        for step in self.steps.values():
            for source in step.inputs:
                found[source].append(step.name)
        return {name: tuple(names) for name, names in found.items()}

    def select(self, names: Collection[str], *, what: str = "step") -> list[str]:
        """The steps ``names`` mean: a step's own name, or a matrix step's name for all of its
        expansions. Unknown names are one ChainError; ``what`` names the option in it."""
        members: dict[str, list[str]] = {}
        for name, matrix_step in matrix_steps(self.steps.values()).items():
            members.setdefault(matrix_step, []).append(name)
        selected: list[str] = []
        unknown: list[str] = []
        for name in names:
            if name in self.steps:
                selected.append(name)
            elif name in members:
                selected.extend(members[name])
            else:
                unknown.append(name)
        if unknown:
            known = [*self.steps, *members]
            text = ", ".join(f"{name!r}{did_you_mean(name, known)}" for name in unknown)
            raise ChainError(
                f"has no {what} named {text}",
                where=self.source,
                hint="Use one of the step names in the chain file (a matrix step's name means "
                "all of its expansions).",
            )
        return list(dict.fromkeys(selected))

    def downstream(self, name: str) -> set[str]:
        """Every step that depends on ``name`` (or on any expansion of the matrix step ``name``),
        directly or through other steps."""
        starts = self.select([name])
        dependents = self.dependents()
        seen: set[str] = set()
        queue = deque(starts)
        while queue:
            for child in dependents[queue.popleft()]:
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
        return seen

    def needed_for(self, targets: Collection[str], *, force: Collection[str] = ()) -> Chain:
        """The chain cut down to the steps ``targets`` mean (as :meth:`select`) and every step
        they read from, directly or through others, in file order: what running those targets
        runs. Each step keeps its inputs, so its key is the same as in the whole chain and the
        cache is shared with runs of it. A step to ``force`` that the cut leaves out is an
        error: ``run chain.yaml --force upper lower`` (as if --force took several names) made
        lower the target and then called upper unknown, though the chain has it."""
        self.select(force, what="step to force (--force)")  # unknown names: said of the chain
        queue = deque(self.select(targets, what="target step"))
        needed = set(queue)
        while queue:
            name = queue.popleft()
            for source in self.steps[name].inputs if name in self.steps else ():
                if source not in needed:
                    needed.add(source)
                    queue.append(source)
        left_out = [name for name in force if needed.isdisjoint(self.select([name]))]
        if left_out:
            raise ChainError(
                f"--force {', '.join(left_out)}: not among the target steps "
                f"({', '.join(targets)}) nor the steps they read from, so it would not run",
                where=self.source,
                hint="Give --force once for each step to force (--force upper --force lower); "
                "a step name after the chain file is a target step.",
            )
        steps = {name: step for name, step in self.steps.items() if name in needed}
        data = {name: data for name, data in self.data.items() if name in needed}
        return Chain(source=self.source, steps=steps, data=data)


def matrix_steps(steps: Iterable[Step]) -> dict[str, str]:
    """Each expansion among ``steps`` -> the name of the matrix step it came from, in order."""
    return {step.name: step.matrix.step for step in steps if step.matrix is not None}
