"""Loading a chain file: YAML text in, a checked :class:`~kliko_async.model.chainmodel.Chain` out.

A chain file is YAML with the top-level key ``steps`` (and ``vars``, its variables:
:mod:`kliko_async.model.variables`). In the mapping form each key names a
step and ``inputs`` lists the steps it reads from; in the list form the steps run one after the
other (each step's inputs default to the step before it, as in Kliko's ``run_chain``) and names
default to the image's last path component. A step with ``matrix:`` expands here into one step
per combination (:mod:`kliko_async.model.matrix`).

Every problem is reported as one :class:`~kliko_async.errors.ChainError` paragraph that names the
file, the step and what to change. Loading and checking are linear in the size of the chain.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kliko_async.errors import ChainError
from kliko_async.model.chainfile import ChainFile, StepSpec, chain_json_schema
from kliko_async.model.chainmodel import (
    MAX_STEPS,
    MAX_STEPS_HINT,
    RUN_CHAIN_SOURCE,
    STEP_NAME_PATTERN,
    Chain,
    DataInput,
    Resources,
    Step,
    step_name_problem,
)
from kliko_async.model.inputfiles import InputFileError, read_input_file
from kliko_async.model.matrix import expand_matrices
from kliko_async.model.variables import Substituter, VariableError, resolve
from kliko_async.model.yamltext import (
    YamlTextError,
    did_you_mean,
    join_problems,
    parse_yaml_bytes,
    yaml_kind,
)

__all__ = [
    "RUN_CHAIN_SOURCE",
    "STEP_NAME_PATTERN",
    "Chain",
    "ChainFile",
    "Resources",
    "Step",
    "StepSpec",
    "chain_from_pairs",
    "chain_from_steps",
    "chain_json_schema",
    "load_chain",
    "parse_chain",
]

_NAME_MAX = 100
MAX_CHAIN_BYTES = 16 << 20
"""A chain file's size limit: 16 MiB is 100,000 steps of about 160 bytes each. A bigger file
would take minutes and gigabytes only to be read (a 50 MB chain file: 84 s to parse), so it is
refused before it is parsed."""
_TOO_LARGE_HINT = (
    "Write a big sweep as a matrix (its values from a file with from-file) rather than step by "
    f"step; a chain may have {MAX_STEPS:,} steps."
)
_TOP_LEVEL = ["steps", "vars", "data"]
_VARIABLES_HINT = (
    "Declare each variable under 'vars:' at the top of the chain file and use it as ${vars.NAME}."
)


def load_chain(path: Path, *, sets: Mapping[str, str] | None = None) -> Chain:
    """Read, parse and check the chain file at ``path``; ``sets`` are ``--set`` values of its
    variables (command-line text, by name)."""
    path = Path(path)
    source = str(path)
    try:
        raw = read_input_file(path, limit=MAX_CHAIN_BYTES, too_large_hint=_TOO_LARGE_HINT)
    except InputFileError as exc:
        if exc.missing:
            raise ChainError(
                "chain file not found", where=source, hint="Check the path and the current folder."
            ) from None
        if exc.folder:
            raise ChainError(
                "is a folder, not a chain file",
                where=source,
                hint="Give the path of the YAML file.",
            ) from None
        raise ChainError(exc.message, where=source, hint=exc.hint) from None
    try:
        data = parse_yaml_bytes(raw)
    except YamlTextError as exc:
        raise ChainError(exc.message, where=source, hint=exc.hint) from None
    return _parse(data, source, path.parent, sets or {}, variables=_may_refer(raw))


def parse_chain(
    data: Any, *, source: str, base_dir: Path, sets: Mapping[str, str] | None = None
) -> Chain:
    """Check already-parsed YAML ``data`` and build the :class:`Chain` it describes.

    ``source`` names the data in messages; a relative ``build`` is resolved against ``base_dir``;
    ``sets`` are ``--set`` values of the chain's variables (:mod:`kliko_async.model.variables`).
    """
    return _parse(data, source, base_dir, sets or {}, variables=True)


def chain_from_steps(
    steps: Mapping[str, Any] | Sequence[Any],
    *,
    source: str,
    base_dir: Path,
    data: Mapping[str, str] | None = None,
) -> Chain:
    """A chain from steps built in Python (Luigi tasks, ``run_chain``'s pairs) rather than
    written in a chain file: they have no variables, so a ``${`` in them is plain text.
    ``data`` names host files and folders, as a chain file's ``data:`` section."""
    return _parse({"steps": steps, "data": data}, source, base_dir, {}, variables=False)


def _may_refer(raw: bytes) -> bool:
    """Whether the chain file's bytes may hold a ``${`` in a string. YAML writes one only as
    those two characters or through a backslash (an escape such as ``\\x24``, or a line
    break escaped in double quotes), so a file with neither is not walked at all: a
    10,000-step chain without variables costs nothing more."""
    return b"${" in raw or b"\\" in raw


def _parse(
    data: Any, source: str, base_dir: Path, sets: Mapping[str, str], *, variables: bool
) -> Chain:
    """parse_chain; with ``variables`` False the steps and data are taken as they are (a file
    whose bytes hold no ``${``, or steps from Python), though ``vars:`` and ``sets`` are still
    checked (a ``--set`` of a variable the chain lacks is an error either way)."""
    base = Path(os.path.abspath(base_dir))
    raw_steps = _steps_section(data, source)
    raw_data = data.get("data")
    substitute = _substituter(data, sets, source)
    if variables:
        raw_steps = _with_variables(raw_steps, substitute, source)
        raw_data = _with_variables(raw_data, substitute, source, kind="data")
    sources, data_families = _data_section(raw_data, base, source)
    if isinstance(raw_steps, Mapping):
        entries = [(f"step {key!r}", key, raw) for key, raw in raw_steps.items()]
    else:
        entries = [(_list_label(number, raw), None, raw) for number, raw in enumerate(raw_steps, 1)]

    if len(entries) > MAX_STEPS:
        raise ChainError(
            f"has {len(entries):,} steps, more than the {MAX_STEPS:,} a chain may have",
            where=source,
            hint=MAX_STEPS_HINT,
        )
    problems: list[str] = []
    specs: list[StepSpec] = []
    for label, key, raw in entries:
        if key is not None and (problem := step_name_problem(key)) is not None:
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
            join_problems(problems),
            where=source,
            hint="Correct these entries and load the chain again.",
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
    matrices = {name: spec.matrix for name, spec in zip(names, specs, strict=True) if spec.matrix}
    problems = []
    steps = expand_matrices(
        steps, matrices, base_dir=base, problems=problems, data_families=data_families
    )
    if problems:
        raise ChainError(
            join_problems(problems),
            where=source,
            hint="Correct the matrix and load the chain again.",
        )
    if len(steps) > MAX_STEPS:
        raise ChainError(
            f"has {len(steps):,} steps once its matrices are expanded, more than the "
            f"{MAX_STEPS:,} a chain may have",
            where=source,
            hint=MAX_STEPS_HINT,
        )
    return Chain(source=source, steps=steps, data=sources)


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
    return chain_from_steps(data, source=RUN_CHAIN_SOURCE, base_dir=Path.cwd())


def _substituter(data: Mapping[str, Any], sets: Mapping[str, str], source: str) -> Substituter:
    try:
        return Substituter(resolve(data.get("vars"), sets))
    except VariableError as exc:
        raise ChainError(str(exc), where=source, hint=_VARIABLES_HINT) from None


def _with_variables(raw: Any, substitute: Substituter, source: str, *, kind: str = "step") -> Any:
    """A section (steps or data) with its ``${vars.NAME}`` replaced, entry by entry."""
    try:
        if isinstance(raw, Mapping):
            return {key: substitute(item, where=f"{kind} {key!r}") for key, item in raw.items()}
        if isinstance(raw, list):
            return [
                substitute(item, where=_list_label(number, item))
                for number, item in enumerate(raw, 1)
            ]
        return raw
    except VariableError as exc:
        raise ChainError(str(exc), where=source, hint=_VARIABLES_HINT) from None


def _data_section(
    raw: Any, base: Path, source: str
) -> tuple[dict[str, DataInput], dict[str, list[str]]]:
    """``data:``: names of host files and folders, as ``NAME: PATH`` or ``NAME: {path: PATH}``;
    a relative path is relative to the chain file's folder. A list of paths (a variable, for
    several observations) makes one data input per path, ``NAME[last part of its path]``, like
    a matrix step's expansions: returned as the second value, by name. Whether each is there
    and usable is checked when the chain is planned."""
    if raw is None:
        return {}, {}
    example = "Write it as  data: {obs: {path: /data/obs1.ms}}"
    if not isinstance(raw, Mapping):
        raise ChainError(
            f"'data' is a {yaml_kind(raw)}; it must be a mapping of names to paths",
            where=source,
            hint=example,
        )
    problems: list[str] = []
    found: dict[str, DataInput] = {}
    families: dict[str, list[str]] = {}
    for name, value in raw.items():
        if (problem := step_name_problem(name)) is not None:
            problems.append(problem.replace("step name", "data name"))
            continue
        path = value.get("path") if isinstance(value, Mapping) else value
        extra = sorted(set(value) - {"path"}) if isinstance(value, Mapping) else []
        paths: list[Any] = path if isinstance(path, list) else [path]
        if extra:
            problems.append(f"data {name!r}: unknown key(s) {', '.join(map(repr, extra))}")
        elif not paths or not all(isinstance(p, str) and p for p in paths):
            problems.append(
                f"data {name!r}: give the path of a file or folder, or a list of them "
                f"(got {yaml_kind(path)})"
            )
        elif not isinstance(path, list):
            found[name] = DataInput(name=name, path=_data_path(base, paths[0]))
        else:
            labels = _member_labels(paths)
            families[name] = [f"{name}[{label}]" for label in labels]
            for member, item in zip(families[name], paths, strict=True):
                found[member] = DataInput(name=member, path=_data_path(base, item))
    if problems:
        raise ChainError(join_problems(problems), where=source, hint=example)
    return found, families


def _data_path(base: Path, path: str) -> Path:
    return Path(os.path.normpath(base / os.path.expanduser(path)))


def _member_labels(paths: list[str]) -> list[str]:
    """Each path's last part, made safe as a name (by its number where they are not unique)."""
    labels = [
        re.sub(r"[^A-Za-z0-9._=,+-]", "_", os.path.basename(os.path.normpath(p)))[:80].lstrip("._-")
        for p in paths
    ]
    if len(set(labels)) < len(labels) or not all(labels):
        return [str(i) for i in range(1, len(paths) + 1)]
    return labels


def _steps_section(data: Any, source: str) -> Mapping[Any, Any] | list[Any]:
    example = "Start from:  steps: {gen: {image: example/gen}}"
    if data is None:
        raise ChainError(
            "is empty; a chain file needs a 'steps' mapping or list", where=source, hint=example
        )
    if not isinstance(data, Mapping):
        raise ChainError(
            f"the top level is a {yaml_kind(data)}, but a chain file is a mapping with a "
            "'steps' key",
            where=source,
            hint=example,
        )
    unknown = [key for key in data if key not in _TOP_LEVEL]
    if unknown:
        text = ", ".join(f"{key!r}{did_you_mean(str(key), _TOP_LEVEL)}" for key in unknown)
        raise ChainError(
            f"has unknown top-level key(s) {text}; only 'steps', 'vars' and 'data' are allowed",
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
            f"'steps' is a {yaml_kind(steps)}; it must be a mapping of step names to steps "
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
            f"{label} is a {yaml_kind(raw)}; a step is a mapping with 'image' or 'build' "
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
            message = f"unknown key {key!r}{did_you_mean(key, _KNOWN_KEYS.get(parent, []))}"
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
        raise ChainError(
            join_problems(problems), where=source, hint="Give every step a different name."
        )
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
