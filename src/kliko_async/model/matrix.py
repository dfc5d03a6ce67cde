"""``matrix:`` expansion: one step of the chain file becomes one step per combination of values.

Expansion happens while the chain file is loaded, so planning, keys, the scheduler and the
displays see ordinary steps. An expansion is named ``step[param=value,...]`` (or by the matrix's
``name`` template) and carries its :class:`~kliko_async.model.chainmodel.MatrixOrigin`. A step that
names a matrix step as an input receives every expansion, one subfolder each; a step with
``same-as`` pairs up with the expansions one to one.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import string
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kliko_async.errors import shown
from kliko_async.model.chainfile import MatrixFile, MatrixSpec
from kliko_async.model.chainmodel import (
    MAX_STEPS,
    MAX_STEPS_HINT,
    NAME_MAX,
    MatrixOrigin,
    Step,
    folder_name_problem,
)
from kliko_async.model.inputfiles import InputFileError, read_input_file
from kliko_async.model.yamltext import YamlTextError, did_you_mean, parse_yaml_bytes, yaml_kind

__all__ = ["expand_matrices"]

_PARAMETER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

Combination = dict[str, Any]


class _Family:
    """The combinations a matrix step expands into, shared with the steps paired to it."""

    def __init__(self, root: str, combinations: list[Combination]) -> None:
        self.root = root
        self.combinations = combinations
        self.suffixes = [_default_suffix(combination) for combination in combinations]


def expand_matrices(
    steps: Mapping[str, Step],
    matrices: Mapping[str, MatrixSpec],
    *,
    base_dir: Path,
    problems: list[str],
    data_families: Mapping[str, list[str]] | None = None,
) -> dict[str, Step]:
    """``steps`` with every step in ``matrices`` replaced by its expansions, in file order, and
    every input that names a matrix step rewritten to the expansions it means.

    ``data_families`` are data given as a list of paths (name -> the names of its members, such
    as ``obs[night1]``): inputs naming one mean all of its members, and a step that is
    ``same-as`` it runs once per member, each reading its own.

    Problems go to ``problems`` (each naming the step); the steps returned are then incomplete.
    """
    data_families = data_families or {}
    if not matrices and not data_families:
        return dict(steps)
    families: dict[str, _Family] = {}
    for name, members in data_families.items():
        labels = [member[len(name) + 1 : -1] for member in members]  # obs[night1] -> night1
        families[name] = _Family(name, [{"data": label} for label in labels])
        families[name].suffixes = labels
    for name, matrix in matrices.items():
        if matrix.same_as is None:
            combinations = _combinations(name, matrix, base_dir, problems)
            if combinations:
                families[name] = _Family(name, combinations)
    roots = _pairing_roots(steps, matrices, families, problems, data=data_families)
    _check_paired_inputs(steps, matrices, roots, problems)
    expansions: dict[str, list[str]] = {
        name: list(members) for name, members in data_families.items()
    }
    for name, matrix in matrices.items():
        found = families.get(roots.get(name, name))
        if found is not None:
            expansions[name] = _expansion_names(name, matrix, found, problems)
    if problems:
        return {}
    _check_unique(steps, expansions, problems)
    if problems:
        return {}

    expanded: dict[str, Step] = {}
    for name, step in steps.items():
        if name not in expansions:
            inputs, in_folders = _rewrite_inputs(step.inputs, None, None, roots, expansions)
            expanded[name] = step.model_copy(
                update={"inputs": inputs, "inputs_in_folders": in_folders}
            )
            continue
        root = roots.get(name, name)
        family = families[root]
        same_as = matrices[name].same_as
        matrixed = {key for combination in family.combinations for key in combination}
        clashes = set(step.params) & matrixed if same_as is None else set()
        if clashes:
            shown = ", ".join(repr(p) for p in sorted(clashes))
            problems.append(
                f"step {name!r}: parameter(s) {shown} are given both in 'params' and in "
                "'matrix'; keep each in one place"
            )
            continue
        for index, (expansion, combination) in enumerate(
            zip(expansions[name], family.combinations, strict=True)
        ):
            inputs, in_folders = _rewrite_inputs(step.inputs, root, index, roots, expansions)
            params = step.params if same_as is not None else {**step.params, **combination}
            expanded[expansion] = step.model_copy(
                update={
                    "name": expansion,
                    "params": params,
                    "inputs": inputs,
                    "inputs_in_folders": in_folders,
                    "matrix": MatrixOrigin(step=name, values=combination, same_as=same_as),
                }
            )
    return expanded


def _combinations(
    name: str, matrix: MatrixSpec, base_dir: Path, problems: list[str]
) -> list[Combination]:
    """The product of the parameter lists, minus ``exclude``, plus ``include``, without repeats."""
    where = f"step {name!r}: matrix"
    known_problems = len(problems)
    lists: dict[str, list[Any]] = {}
    for parameter, values in matrix.parameters.items():
        if not _PARAMETER_RE.match(parameter):
            problems.append(f"{where}: {parameter!r} is not a parameter name")
            continue
        listed = _values_of(values, base_dir, f"{where}.{parameter}", problems)
        if listed is not None:
            lists[parameter] = listed
    if len(lists) != len(matrix.parameters):
        return []
    keys = list(lists)
    count = math.prod(len(values) for values in lists.values())
    if count > MAX_STEPS:
        sizes = " x ".join(f"{len(values):,}" for values in lists.values())
        problems.append(
            f"{where} makes {count:,} combinations ({sizes}), more than the {MAX_STEPS:,} steps "
            f"a chain may have; {MAX_STEPS_HINT[0].lower()}{MAX_STEPS_HINT[1:]}"
        )
        return []
    combinations = [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*lists.values())
    ]
    for number, exclusion in enumerate(matrix.exclude, 1):
        unknown = [key for key in exclusion if key not in lists]
        if unknown or not exclusion:
            problems.append(
                f"{where}.exclude #{number} {_shown(exclusion)} names "
                + (
                    ", ".join(f"{key!r}{did_you_mean(str(key), keys)}" for key in unknown)
                    if unknown
                    else "no parameter"
                )
                + f"; it may only use the matrix parameters ({', '.join(keys) or 'none'})"
            )
            continue
        kept = [c for c in combinations if not _matches(c, exclusion)]
        if len(kept) == len(combinations):
            problems.append(
                f"{where}.exclude #{number} {_shown(exclusion)} matches no combination; check "
                "its values against the lists"
            )
        combinations = kept
    seen = {_identity(c) for c in combinations}
    for number, inclusion in enumerate(matrix.include, 1):
        bad = [key for key in inclusion if not isinstance(key, str) or not _PARAMETER_RE.match(key)]
        if bad or not inclusion:
            problems.append(
                f"{where}.include #{number} {_shown(inclusion)}: give a mapping of parameter "
                "names to one value each"
            )
            continue
        if _identity(inclusion) not in seen:
            seen.add(_identity(inclusion))
            combinations.append(dict(inclusion))
    if not combinations and len(problems) == known_problems:
        problems.append(f"{where}: 'exclude' leaves no combination; the step would never run")
    return combinations


def _values_of(
    values: list[Any] | MatrixFile, base_dir: Path, where: str, problems: list[str]
) -> list[Any] | None:
    if isinstance(values, MatrixFile):
        path = base_dir / Path(values.from_file).expanduser()
        try:
            loaded = parse_yaml_bytes(read_input_file(path))
        except InputFileError as error:
            problems.append(f"{where}: from-file {values.from_file!r} ({path}) {error.message}")
            return None
        except YamlTextError as error:
            problems.append(f"{where}: from-file {values.from_file!r} {error.message}")
            return None
        if not isinstance(loaded, list) or not loaded:
            what = "an empty list" if loaded == [] else f"a {yaml_kind(loaded)}"
            problems.append(
                f"{where}: from-file {values.from_file!r} holds {what}; it must hold a "
                "non-empty YAML list, one value per line as '- value'"
            )
            return None
        values = loaded
    identities = [_identity(value) for value in values]
    repeated = sorted(text for text, n in Counter(identities).items() if n > 1)
    if repeated:
        problems.append(f"{where} lists {', '.join(repeated)} more than once")
        return None
    return values


def _pairing_roots(
    steps: Mapping[str, Step],
    matrices: Mapping[str, MatrixSpec],
    families: Mapping[str, _Family],
    problems: list[str],
    *,
    data: Mapping[str, list[str]],
) -> dict[str, str]:
    """Each ``same-as`` step mapped to the matrix step (or list of data) whose values it ends
    up pairing with."""
    roots: dict[str, str] = {}
    for name, matrix in matrices.items():
        if matrix.same_as is None:
            continue
        where = f"step {name!r}: matrix.same-as"
        seen = [name]
        current = matrix.same_as
        while True:
            if current in data:
                roots[name] = current
                break
            if current in seen:
                loop = " -> ".join([*seen[seen.index(current) :], current])
                problems.append(f"{where}: the pairings form a loop: {loop}")
                break
            if current not in steps:
                problems.append(
                    f"{where} names {current!r}, but there is no such step"
                    f"{did_you_mean(current, steps)}"
                )
                break
            target = matrices.get(current)
            if target is None:
                problems.append(
                    f"{where} names {current!r}, which has no matrix; pair only with a step "
                    "that has 'matrix:'"
                )
                break
            if target.same_as is None:
                if current in families:
                    roots[name] = current
                break
            seen.append(current)
            current = target.same_as
    return roots


def _check_paired_inputs(
    steps: Mapping[str, Step],
    matrices: Mapping[str, MatrixSpec],
    roots: Mapping[str, str],
    problems: list[str],
) -> None:
    """A ``same-as`` step must read what it pairs with: one of its inputs is the step (or data)
    it is ``same-as``, or another step paired with the same values. Otherwise every expansion
    would read the same inputs and make the same output N times under N names."""
    for name, matrix in matrices.items():
        root = roots.get(name)
        if matrix.same_as is None or root is None:
            continue
        inputs = steps[name].inputs
        if any(roots.get(item, item) == root for item in inputs):
            continue
        listed = ", ".join(repr(item) for item in inputs) or "none"
        problems.append(
            f"step {name!r}: matrix.same-as {matrix.same_as!r} pairs each expansion with one "
            f"of {matrix.same_as!r}, but its inputs ({listed}) do not include {matrix.same_as!r} "
            f"or a step paired with it, so every expansion would read the same; add "
            f"{matrix.same_as!r} to its inputs, or drop 'same-as' for one step that reads all"
        )


def _expansion_names(
    name: str, matrix: MatrixSpec, family: _Family, problems: list[str]
) -> list[str]:
    names: list[str] = []
    for index, (combination, suffix) in enumerate(
        zip(family.combinations, family.suffixes, strict=True), 1
    ):
        if matrix.name is None:
            expansion = f"{name}[{suffix}]"
        else:
            rendered = _render(
                name, matrix.name, {"index": str(index), **_texts(combination)}, problems
            )
            if rendered is None:
                return []
            expansion = rendered
        problem = folder_name_problem(expansion)
        if problem is not None:
            fix = (
                "change the template"
                if matrix.name is not None
                else f"give matrix.name a template such as '{name}-{{index}}'"
            )
            problems.append(
                f"step {name!r}: the combination {_shown(combination)} cannot name a step: "
                f"{problem}; {fix}"
            )
            return []
        names.append(expansion)
    repeated = sorted(n for n, times in Counter(names).items() if times > 1)
    if repeated:
        problems.append(
            f"step {name!r}: matrix.name {matrix.name!r} gives the same name "
            f"{repeated[0]!r} to several combinations; use every matrix parameter (or "
            "{index}) in the template"
        )
        return []
    return names


def _render(name: str, template: str, values: Mapping[str, str], problems: list[str]) -> str | None:
    where = f"step {name!r}: matrix.name {template!r}"
    try:
        parsed = [(field, spec) for _, field, spec, _ in string.Formatter().parse(template)]
    except ValueError as error:
        problems.append(f"{where} is not a template: {error}; write placeholders as {{parameter}}")
        return None
    fields = [field for field, _ in parsed if field]
    for field, spec in parsed:
        # A name is at most NAME_MAX characters; a width of 10**9 would first fill memory.
        widths = re.findall(r"[0-9]+", spec or "")
        if "{" in (spec or "") or any(len(w) > 3 or int(w) > NAME_MAX for w in widths):
            problems.append(
                f"{where}: the format {shown(spec)} of {{{field}}} asks for more than the "
                f"{NAME_MAX} characters a step name may have; write {{{field}}} alone"
            )
            return None
    unknown = [field for field in fields if field not in values]
    if unknown:
        problems.append(
            f"{where} uses {', '.join(repr(f) for f in unknown)}, which is not a matrix "
            f"parameter{did_you_mean(unknown[0], values)}; use {', '.join(values)}"
        )
        return None
    try:
        return template.format_map(values)
    except (ValueError, IndexError, KeyError) as error:
        problems.append(f"{where} cannot be filled in: {error}")
        return None


def _check_unique(
    steps: Mapping[str, Step], expansions: Mapping[str, list[str]], problems: list[str]
) -> None:
    owner: dict[str, str] = {name: name for name in steps if name not in expansions}
    for name, names in expansions.items():
        for expansion in names:
            if expansion in owner:
                other = owner[expansion]
                whose = f"step {other!r}" if other == expansion else f"an expansion of {other!r}"
                problems.append(
                    f"step {name!r}: expansion {expansion!r} has the same name as {whose}; "
                    "rename one of them"
                )
            owner[expansion] = name


def _rewrite_inputs(
    inputs: tuple[str, ...],
    root: str | None,
    index: int | None,
    roots: Mapping[str, str],
    expansions: Mapping[str, list[str]],
) -> tuple[tuple[str, ...], bool]:
    """The inputs as expansions: a paired family member by the same index, others in full."""
    rewritten: list[str] = []
    in_folders = False
    for name in inputs:
        names = expansions.get(name)
        if names is None:
            rewritten.append(name)
        elif root is not None and index is not None and roots.get(name, name) == root:
            rewritten.append(names[index])
        else:
            rewritten.extend(names)
            in_folders = True
    return tuple(rewritten), in_folders


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _texts(combination: Combination) -> dict[str, str]:
    return {key: _value_text(value) for key, value in combination.items()}


def _default_suffix(combination: Combination) -> str:
    return ",".join(f"{key}={text}" for key, text in _texts(combination).items())


def _identity(value: Any) -> str:
    """A text equal for equal YAML values (so 1, 1.0 and true stay apart)."""
    return json.dumps(value, sort_keys=True, default=str)


def _matches(combination: Combination, pattern: Mapping[str, Any]) -> bool:
    return all(
        key in combination and _identity(combination[key]) == _identity(value)
        for key, value in pattern.items()
    )


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str, separators=(", ", ": "))
    return text if len(text) <= 60 else text[:57] + "..."
