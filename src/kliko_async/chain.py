"""The chain file: a DAG of Kliko steps, how it is loaded and how it is checked.

A chain file is YAML with one top-level key, ``steps``. In the mapping form each key names a
step and ``inputs`` lists the steps it reads from; in the list form the steps run one after the
other (each step's inputs default to the step before it, as in Kliko's ``run_chain``) and names
default to the image's last path component.

Every problem is reported as one :class:`~kliko_async.errors.ChainError` paragraph that names the
file, the step and what to change. Loading and checking are linear in the size of the chain.
"""

from __future__ import annotations

import difflib
import heapq
import os
import re
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from kliko_async.errors import ChainError
from kliko_async.quantities import SIZE_PATTERN, size_in_bytes

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

__all__ = [
    "RUN_CHAIN_SOURCE",
    "STEP_NAME_PATTERN",
    "Chain",
    "ChainFile",
    "Resources",
    "Step",
    "StepSpec",
    "chain_from_pairs",
    "chain_json_schema",
    "load_chain",
    "parse_chain",
]

STEP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
"""Step names become folder names: 1-100 characters, no ``/``, never ``.`` or ``..``."""

RUN_CHAIN_SOURCE = "<run_chain>"

_NAME_RE = re.compile(STEP_NAME_PATTERN)
_NAME_MAX = 100
_MAX_SHOWN = 20
_JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# --------------------------------------------------------------------------------------------
# Step names and memory sizes
# --------------------------------------------------------------------------------------------


def _name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a step name, or None when it can."""
    if not isinstance(name, str):
        return (
            f"step name {name!r} is a {_kind(name)}, not text; quote it in the chain file "
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


def _check_step_name(name: str) -> str:
    problem = _name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


StepName = Annotated[
    str,
    AfterValidator(_check_step_name),
    WithJsonSchema({"type": "string", "pattern": STEP_NAME_PATTERN, "maxLength": _NAME_MAX}),
]


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

# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


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


def _step_spec_schema(schema: dict[str, Any]) -> None:
    """Publish 'name', 'image' and 'build' as plain strings (null means "absent") and require one
    of 'image' and 'build'."""
    properties = schema["properties"]
    for key in ("name", "image", "build"):
        field = properties[key]
        kept = [option for option in field.pop("anyOf", []) if option.get("type") != "null"]
        if len(kept) == 1:
            field.update(kept[0])
    schema["oneOf"] = [{"required": ["image"]}, {"required": ["build"]}]


class StepSpec(BaseModel):
    """One step as written in the chain file. Give exactly one of ``image`` and ``build``."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra=_step_spec_schema,
    )

    name: StepName | None = Field(
        default=None,
        description=(
            "The step's name (list form only; in the mapping form the key is the name). "
            "Defaults to the last path component of the image without tag or digest, or to the "
            "build folder's name, made unique with -2, -3, ..."
        ),
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        description="The Kliko image to run: a tag such as 'kliko/simms:0.1' or an image ID.",
    )
    build: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "A Docker build context folder to build the image from, relative to the chain file."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters for the image, checked against its kliko.yml.",
    )
    inputs: list[str] | None = Field(
        default=None,
        description=(
            "Names of the steps whose outputs this step reads. In the list form it defaults to "
            "the step before; in the mapping form to none."
        ),
    )
    retries: int = Field(
        default=0, ge=0, description="How many times to run the step again after a failure."
    )
    retry_backoff: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description="Seconds to wait before the first retry; the delay doubles each retry.",
    )
    timeout: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Seconds after which a running step is stopped and counted as failed.",
    )
    resources: Resources = Field(
        default_factory=Resources, description="CPU, memory and GPU limits for the container."
    )
    user: str | None = Field(
        default=None,
        min_length=1,
        description="The user to run the container as, such as '1000:1000'.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment variables for the container (values are strings).",
    )

    @model_validator(mode="after")
    def _image_or_build(self) -> StepSpec:
        if self.image is not None and self.build is not None:
            raise ValueError("gives both 'image' and 'build'; keep exactly one of them")
        if self.image is None and self.build is None:
            raise ValueError("gives neither 'image' nor 'build'; add exactly one of them")
        return self


def _chain_file_schema(schema: dict[str, Any]) -> None:
    """Publish step names as ``propertyNames`` so a mapping key that is not a safe name is invalid
    (pydantic writes ``patternProperties``, which lets other keys through unchecked)."""
    for option in schema["properties"]["steps"].get("anyOf", []):
        patterns = option.pop("patternProperties", None)
        if patterns and len(patterns) == 1:
            ((pattern, step),) = patterns.items()
            option["propertyNames"] = {**option.get("propertyNames", {}), "pattern": pattern}
            option["additionalProperties"] = step


class ChainFile(BaseModel):
    """A kliko-async chain file: Kliko steps and the inputs that connect them into a DAG."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_chain_file_schema)

    steps: (
        Annotated[dict[StepName, StepSpec], Field(min_length=1)]
        | Annotated[list[StepSpec], Field(min_length=1)]
    ) = Field(
        description=(
            "The steps: a mapping of step names to steps, whose 'inputs' connect them, or a list "
            "of steps that run one after the other (each step's inputs default to the step "
            "before it)."
        )
    )


class Step(BaseModel):
    """One step of a loaded chain, with its name, inputs and build folder resolved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StepName = Field(description="The step's unique name, also its folder name.")
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
    user: str | None = Field(description="The user to run the container as.")
    env: dict[str, str] = Field(description="Extra environment variables.")


class Chain(BaseModel):
    """A checked chain: unique safe names, known inputs and no cycle.

    Building a ``Chain`` directly runs the same graph checks as :func:`parse_chain`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="The chain file path as given, or '<run_chain>'.")
    steps: dict[str, Step] = Field(description="The steps by name, in file order.")

    @model_validator(mode="after")
    def _check_graph(self) -> Chain:
        _check_graph(self.source, self.steps)
        return self

    def topological_order(self) -> list[str]:
        """Step names with every step after its inputs.

        Kahn's algorithm, always taking the ready step that comes first in the file, so a file
        that already lists every step after its inputs keeps its order.
        """
        order, _ = _kahn(self.steps)
        if len(order) != len(self.steps):  # only reachable through model_construct
            raise ChainError(_cycle_text(self.steps), where=self.source, hint=_CYCLE_HINT)
        return order

    def dependents(self) -> dict[str, tuple[str, ...]]:
        """Every step mapped to the steps that list it as an input, in file order."""
        found: dict[str, list[str]] = {name: [] for name in self.steps}
        for step in self.steps.values():
            for source in step.inputs:
                found[source].append(step.name)
        return {name: tuple(names) for name, names in found.items()}

    def downstream(self, name: str) -> set[str]:
        """Every step that depends on ``name``, directly or through other steps."""
        if name not in self.steps:
            raise ChainError(
                f"has no step named {name!r}{_suggest(name, self.steps)}",
                where=self.source,
                hint="Use one of the step names in the chain file.",
            )
        dependents = self.dependents()
        seen: set[str] = set()
        queue = deque([name])
        while queue:
            for child in dependents[queue.popleft()]:
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
        return seen


# --------------------------------------------------------------------------------------------
# Graph checks
# --------------------------------------------------------------------------------------------

_INPUT_HINT = "Each input must be the name of another step in the same chain."
_CYCLE_HINT = "Remove one of these inputs so the steps form a DAG."


def _kahn(steps: Mapping[str, Step]) -> tuple[list[str], list[int]]:
    """Topological order (ready steps taken in file order) and each step's unmet input count."""
    names = list(steps)
    index = {name: position for position, name in enumerate(names)}
    unmet = [len(step.inputs) for step in steps.values()]
    children: list[list[int]] = [[] for _ in names]
    for position, step in enumerate(steps.values()):
        for source in step.inputs:
            children[index[source]].append(position)
    ready = [position for position, count in enumerate(unmet) if count == 0]  # sorted: a heap
    order: list[str] = []
    while ready:
        position = heapq.heappop(ready)
        order.append(names[position])
        for child in children[position]:
            unmet[child] -= 1
            if unmet[child] == 0:
                heapq.heappush(ready, child)
    return order, unmet


def _cycle_text(steps: Mapping[str, Step]) -> str:
    """Describe one cycle as ``cycle: a -> b -> a`` (each step feeds the next)."""
    _, unmet = _kahn(steps)
    names = list(steps)
    index = {name: position for position, name in enumerate(names)}
    # Every step left over has an input that is also left over: walk inputs until one repeats.
    current = next(position for position, count in enumerate(unmet) if count > 0)
    seen_at: dict[int, int] = {}
    path: list[int] = []
    while current not in seen_at:
        seen_at[current] = len(path)
        path.append(current)
        current = next(
            index[source] for source in steps[names[current]].inputs if unmet[index[source]] > 0
        )
    loop = path[seen_at[current] :][::-1]  # reversed: data flows from an input to its reader
    start = loop.index(min(loop))
    loop = loop[start:] + loop[:start]
    text = " -> ".join(names[position] for position in [*loop, loop[0]])
    return f"the steps' inputs form a cycle: {text}"


def _check_graph(source: str, steps: Mapping[str, Step]) -> None:
    problems: list[str] = []
    for key, step in steps.items():
        if key != step.name:
            problems.append(f"step {key!r} is stored under a different name, {step.name!r}")
    for step in steps.values():
        listed: set[str] = set()
        for name in step.inputs:
            if name == step.name:
                problems.append(f"step {step.name!r} lists itself as an input")
            elif name in listed:
                problems.append(f"step {step.name!r} lists input {name!r} more than once")
            elif name not in steps:
                hint = _suggest(name, steps) if len(problems) < _MAX_SHOWN else ""
                problems.append(
                    f"step {step.name!r} has input {name!r}, but there is no such step{hint}"
                )
            listed.add(name)
    if problems:
        raise ChainError(_join(problems), where=source, hint=_INPUT_HINT)
    order, _ = _kahn(steps)
    if len(order) != len(steps):
        raise ChainError(_cycle_text(steps), where=source, hint=_CYCLE_HINT)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, key: Hashable, first: str, again: str) -> None:
        self.key = key
        self.first = first
        self.again = again
        super().__init__(f"duplicate key {key!r}")


class _ChainLoader(_BaseLoader):
    """A safe YAML loader that refuses duplicate keys in any mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first_places: dict[Hashable, str] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=False)
            if not isinstance(key, Hashable):
                continue  # the base class reports unhashable keys
            mark = key_node.start_mark
            place = f"line {mark.line + 1}, column {mark.column + 1}"
            if key in first_places:
                raise _DuplicateKey(key, first_places[key], place)
            first_places[key] = place
        return super().construct_mapping(node, deep=deep)


def load_chain(path: Path) -> Chain:
    """Read, parse and check the chain file at ``path``."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ChainError(
            "chain file not found", where=source, hint="Check the path and the current folder."
        ) from None
    except IsADirectoryError:
        raise ChainError(
            "is a folder, not a chain file", where=source, hint="Give the path of the YAML file."
        ) from None
    except PermissionError:
        raise ChainError(
            "cannot be read: permission denied",
            where=source,
            hint="Check the file's permissions.",
        ) from None
    except OSError as exc:
        raise ChainError(
            f"cannot be read: {exc.strerror or exc}", where=source, hint="Check the file."
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ChainError(
            f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            where=source,
            hint="Save the chain file as UTF-8 YAML.",
        ) from None
    try:
        data = yaml.load(text, Loader=_ChainLoader)  # a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ChainError(
            f"key {exc.key!r} appears twice in the same mapping, at {exc.first} and again at "
            f"{exc.again}; YAML would silently keep only the last one",
            where=source,
            hint="Remove or rename one of them (step names and the keys of a step are unique).",
        ) from None
    except yaml.MarkedYAMLError as exc:
        raise ChainError(_yaml_error_text(exc), where=source, hint=_YAML_HINT) from None
    except yaml.YAMLError as exc:
        raise ChainError(f"is not valid YAML: {exc}", where=source, hint=_YAML_HINT) from None
    return parse_chain(data, source=source, base_dir=path.parent)


_YAML_HINT = "Fix the YAML syntax there (indentation, colons, quotes)."


def _yaml_error_text(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = "; ".join(part for part in (exc.context, exc.problem) if part)
    return f"is not valid YAML{place}: {what or exc}"


def parse_chain(data: Any, *, source: str, base_dir: Path) -> Chain:
    """Check already-parsed YAML ``data`` and build the :class:`Chain` it describes.

    ``source`` names the data in messages; a relative ``build`` is resolved against ``base_dir``.
    """
    base = Path(os.path.abspath(base_dir))
    raw_steps = _steps_section(data, source)
    if isinstance(raw_steps, Mapping):
        entries = [(f"step {key!r}", key, raw) for key, raw in raw_steps.items()]
    else:
        entries = [(_list_label(number, raw), None, raw) for number, raw in enumerate(raw_steps, 1)]

    problems: list[str] = []
    specs: list[StepSpec] = []
    for label, key, raw in entries:
        if key is not None and (problem := _name_problem(key)) is not None:
            problems.append(problem)
        spec = _validate_spec(label, raw, problems)
        if spec is None:
            continue
        if key is not None and spec.name is not None and spec.name != key:
            problems.append(
                f"{label}: 'name' says {spec.name!r}; in the mapping form the key is the name, "
                "so drop 'name' or make it match"
            )
        specs.append(spec)
    if problems:
        raise ChainError(
            _join(problems), where=source, hint="Correct these entries and load the chain again."
        )

    builds = [_build_path(spec.build, base) for spec in specs]
    if isinstance(raw_steps, Mapping):
        names = [str(key) for _, key, _ in entries]
    else:
        names = _list_names(specs, builds, [label for label, _, _ in entries], source)

    steps: dict[str, Step] = {}
    previous: str | None = None
    for name, spec, build in zip(names, specs, builds, strict=True):
        if spec.inputs is not None:
            inputs = tuple(spec.inputs)
        elif isinstance(raw_steps, Mapping) or previous is None:
            inputs = ()
        else:
            inputs = (previous,)
        steps[name] = Step(
            name=name,
            image=spec.image,
            build=build,
            params=dict(spec.params),
            inputs=inputs,
            retries=spec.retries,
            retry_backoff=spec.retry_backoff,
            timeout=spec.timeout,
            resources=spec.resources,
            user=spec.user,
            env=dict(spec.env),
        )
        previous = name
    return Chain(source=source, steps=steps)


def chain_from_pairs(pairs: Sequence[tuple[str, Mapping[str, Any]]]) -> Chain:
    """A linear chain from Kliko's ``run_chain([(image, params), ...])`` argument."""
    data: list[dict[str, Any]] = []
    for number, pair in enumerate(pairs, 1):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ChainError(
                f"item {number} is {pair!r}, not an (image, params) pair",
                where=RUN_CHAIN_SOURCE,
                hint="Pass a list of (image, parameters) tuples.",
            )
        image, params = pair
        data.append({"image": image, "params": {} if params is None else params})
    return parse_chain({"steps": data}, source=RUN_CHAIN_SOURCE, base_dir=Path.cwd())


def chain_json_schema() -> dict[str, Any]:
    """The published JSON Schema of a chain file."""
    schema = ChainFile.model_json_schema()
    return {"$schema": _JSON_SCHEMA_DIALECT, **schema, "title": "kliko-async chain file"}


def _steps_section(data: Any, source: str) -> Mapping[Any, Any] | list[Any]:
    example = "Start from:  steps: {gen: {image: example/gen}}"
    if data is None:
        raise ChainError(
            "is empty; a chain file needs a 'steps' mapping or list", where=source, hint=example
        )
    if not isinstance(data, Mapping):
        raise ChainError(
            f"the top level is a {_kind(data)}, but a chain file is a mapping with a 'steps' key",
            where=source,
            hint=example,
        )
    unknown = [key for key in data if key != "steps"]
    if unknown:
        text = ", ".join(f"{key!r}{_suggest(str(key), ['steps'])}" for key in unknown)
        raise ChainError(
            f"has unknown top-level key(s) {text}; only 'steps' is allowed",
            where=source,
            hint="Remove them or move them under a step.",
        )
    if "steps" not in data:
        raise ChainError("has no 'steps' key", where=source, hint=example)
    steps = data["steps"]
    if steps is None or (isinstance(steps, Mapping | list) and not steps):
        raise ChainError("'steps' is empty; add at least one step", where=source, hint=example)
    if not isinstance(steps, Mapping | list):
        raise ChainError(
            f"'steps' is a {_kind(steps)}; it must be a mapping of step names to steps "
            "or a list of steps",
            where=source,
            hint=example,
        )
    return steps


def _list_label(number: int, raw: Any) -> str:
    if isinstance(raw, Mapping):
        if isinstance(raw.get("name"), str):
            return f"step #{number} {raw['name']!r}"
        if isinstance(raw.get("image"), str) and raw["image"]:
            return f"step #{number} (image {raw['image']})"
        if isinstance(raw.get("build"), str) and raw["build"]:
            return f"step #{number} (build {raw['build']})"
    return f"step #{number}"


def _validate_spec(label: str, raw: Any, problems: list[str]) -> StepSpec | None:
    if not isinstance(raw, Mapping):
        problems.append(
            f"{label} is a {_kind(raw)}; a step is a mapping with 'image' or 'build' "
            "(and optionally 'params', 'inputs' and the other step keys)"
        )
        return None
    try:
        return StepSpec.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_validation_problems(label, exc))
        return None


_KNOWN_KEYS: dict[tuple[str, ...], list[str]] = {
    (): list(StepSpec.model_fields),
    ("resources",): list(Resources.model_fields),
}


def _validation_problems(label: str, exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden" and loc:
            parent = tuple(str(part) for part in loc[:-1])
            key = str(loc[-1])
            message = f"unknown key {key!r}{_suggest(key, _KNOWN_KEYS.get(parent, []))}"
            loc = loc[:-1]
        place = _loc_text(loc)
        problems.append(f"{label}: {place}: {message}" if place else f"{label}: {message}")
    return problems


def _loc_text(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _build_path(build: str | None, base: Path) -> Path | None:
    if build is None:
        return None
    return Path(os.path.normpath(base / os.path.expanduser(build)))


def _default_name(spec: StepSpec, build: Path | None) -> str:
    if build is not None:
        base = build.name
    else:
        reference = (spec.image or "").split("@", 1)[0]
        if reference.startswith("sha256:"):
            base = reference.removeprefix("sha256:")[:12]
        else:
            base = reference.rsplit("/", 1)[-1].split(":", 1)[0]
    base = re.sub(r"[^A-Za-z0-9._-]", "-", base).lstrip("._-")[:_NAME_MAX]
    return base or "step"


def _list_names(
    specs: list[StepSpec], builds: list[Path | None], labels: list[str], source: str
) -> list[str]:
    """Explicit names, then defaults from the image or build folder, made unique with -2, -3..."""
    used: dict[str, str] = {}
    problems: list[str] = []
    for spec, label in zip(specs, labels, strict=True):
        if spec.name is None:
            continue
        if spec.name in used:
            problems.append(f"{label}: name {spec.name!r} is already used by {used[spec.name]}")
        used[spec.name] = label
    if problems:
        raise ChainError(_join(problems), where=source, hint="Give every step a different name.")
    counters: dict[str, int] = {}
    names: list[str] = []
    for spec, build, label in zip(specs, builds, labels, strict=True):
        if spec.name is not None:
            names.append(spec.name)
            continue
        base = _default_name(spec, build)
        name = base
        if name in used:
            number = counters.get(base, 1)
            while name in used:
                number += 1
                suffix = f"-{number}"
                name = base[: _NAME_MAX - len(suffix)] + suffix
            counters[base] = number
        used[name] = label
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------
# Message text
# --------------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _suggest(name: str, candidates: Mapping[str, Any] | Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def _join(problems: list[str]) -> str:
    shown = problems[:_MAX_SHOWN]
    text = "; ".join(shown)
    if len(problems) > len(shown):
        text += f"; and {len(problems) - len(shown)} more problem(s)"
    return text
