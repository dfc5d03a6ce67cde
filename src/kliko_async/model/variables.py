"""Chain variables: ``vars:`` at the top of a chain file, ``${vars.NAME}`` in its steps, and
``--set NAME=VALUE`` on the command line.

A string that is exactly ``${vars.NAME}`` becomes the variable's value with its type (a number,
a list for a ``matrix:``); inside a longer string the value is put in as text
(``image: radio/image:${vars.tag}``). Every string under ``steps`` may hold variables, map keys
never do. ``$${`` writes a literal ``${``.

A parameter given a whole ``${vars.NAME}`` takes the value as written where it fits the field,
and otherwise its text, typed by the field as a ``--set`` value is (:class:`FromVariable`): so
``vars: {n: 4}`` gives 4 to an ``int`` field and "4" to a ``str`` one, and a ``--set`` of the
value the chain already has changes nothing, whichever field it lands in.

A value given with ``--set`` is command-line text, as a ``--name`` flag of ``run-image`` is: it
is typed by the field of the kliko.yml it lands in (``--set n=3`` gives 3 to an ``int`` field
and "3" to a ``str`` one), when the step's parameters are checked. A variable whose chain value
is a list takes a YAML list (``--set fields=[a, b]``), so that a ``matrix:`` over it expands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from kliko_async.model.yamltext import (
    MAX_EXPANDED_VALUES,
    YamlTextError,
    did_you_mean,
    parse_yaml_text,
    yaml_kind,
)

__all__ = [
    "VARIABLE_NAME",
    "CliText",
    "FromVariable",
    "Substituter",
    "VariableError",
    "as_written",
    "parse_sets",
    "resolve",
]

VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_REFERENCE = re.compile(r"\$\$\{|\$\{vars\.([^}]*)\}|\$\{")


class CliText(str):
    """Text given on the command line (``--set``): typed by the field it lands in."""

    __slots__ = ()


class FromVariable:
    """A scalar that a whole ``${vars.NAME}`` put in: it is the value as written (so it keys,
    compares and names a matrix expansion as the value does), and a parameter it does not fit
    takes its text instead (:func:`~kliko_async.model.parameters.validate_parameters`)."""

    __slots__ = ()


class _VariableInt(int, FromVariable):
    __slots__ = ()


class _VariableFloat(float, FromVariable):
    __slots__ = ()


class _VariableStr(str, FromVariable):
    __slots__ = ()


def _marked(value: Any) -> Any:
    """``value`` as a :class:`FromVariable`, when it is a number or a string (booleans cannot
    be subclassed; ``--set`` text is typed by the field already)."""
    if isinstance(value, bool | CliText):
        return value
    if isinstance(value, int):
        return _VariableInt(value)
    if isinstance(value, float):
        return _VariableFloat(value)
    if isinstance(value, str):
        return _VariableStr(value)
    return value


def as_written(value: FromVariable) -> Any:
    """The plain value a :class:`FromVariable` stands for (an ``int``, ``float`` or ``str``)."""
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


class VariableError(ValueError):
    """A problem with variables; its text names the place (``step 'a': params.n``)."""


def parse_sets(sets: Sequence[str]) -> dict[str, str]:
    """``["NAME=VALUE", ...]`` as given to ``--set``, by name; a repeated name is refused."""
    values: dict[str, str] = {}
    for item in sets:
        name, equals, value = item.partition("=")
        if not equals or not VARIABLE_NAME.fullmatch(name):
            raise VariableError(
                f"--set {item!r} is not NAME=VALUE with a variable's name (letters, digits "
                "and _, not starting with a digit)"
            )
        if name in values:
            raise VariableError(f"--set {name} is given twice; give each variable once")
        values[name] = value
    return values


def resolve(declared: Any, sets: Mapping[str, str]) -> dict[str, Any]:
    """The chain's ``vars:`` section with the ``--set`` values over it."""
    if declared is None:
        declared = {}
    if not isinstance(declared, Mapping):
        raise VariableError(
            f"'vars' is a {yaml_kind(declared)}; it must be a mapping of names to values"
        )
    problems = []
    values: dict[str, Any] = {}
    for name, value in declared.items():
        if not isinstance(name, str) or not VARIABLE_NAME.fullmatch(name):
            problems.append(
                f"vars: {name!r} is not a variable name (letters, digits and _, not starting "
                "with a digit)"
            )
        elif isinstance(value, Mapping):
            problems.append(f"vars.{name} is a mapping; a variable is a value or a list")
        else:
            values[name] = value
    for name, text in sets.items():
        if name not in values:
            known = ", ".join(values) or "none"
            problems.append(
                f"--set {name}: the chain declares no variable {name!r}"
                f"{did_you_mean(name, values)} (its vars: {known})"
            )
        elif isinstance(values[name], list):
            values[name] = _list_from_text(name, text, problems)
        else:
            values[name] = CliText(text)
    if problems:
        raise VariableError("; ".join(problems))
    return values


def _list_from_text(name: str, text: str, problems: list[str]) -> list[Any]:
    try:
        value = parse_yaml_text(text)
    except YamlTextError as error:
        problems.append(f"--set {name}: {error.message}")
        return []
    if not isinstance(value, list):
        problems.append(
            f"--set {name}: vars.{name} is a list in the chain, so give a list, such as "
            f"--set {name}='[a, b]' (got {yaml_kind(value)})"
        )
        return []
    return value


class Substituter:
    """Replaces ``${vars.NAME}`` in the strings of a chain's steps, one step at a time.

    Raises :class:`VariableError` naming the first unknown variable and where it is, or when
    whole-value lists grow the chain (all steps together) past the bound on YAML values."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values
        self._budget = [MAX_EXPANDED_VALUES]

    def __call__(self, data: Any, *, where: str) -> Any:
        """``data`` (a step as written) with its variables replaced; as it is when none of its
        strings holds a ``${`` (looking costs a third of replacing)."""
        if not _mentions(data):
            return data
        if isinstance(data, Mapping):  # a step: "step 'a': params.n"
            return {
                key: _walk(value, self.values, f"{where}: {key}", self._budget, key in TEXT_KEYS)
                for key, value in data.items()
            }
        return _walk(data, self.values, where, self._budget)


def _mentions(data: Any) -> bool:
    """Whether a string in ``data`` holds ``${``."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "${" in item:
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


TEXT_KEYS = frozenset({"image", "build", "user", "env"})
"""A step's keys whose values are text only: a whole ``${vars.NAME}`` there is the variable's
text (``vars: {uid: 1000}`` gives ``user: "1000"``), as a ``--set`` value would be."""


def _walk(
    data: Any, values: Mapping[str, Any], where: str, budget: list[int], text: bool = False
) -> Any:
    if isinstance(data, str):
        return _in_text(data, values, where, budget, text)
    if isinstance(data, Mapping):
        return {
            key: _walk(value, values, f"{where}.{key}", budget, text) for key, value in data.items()
        }
    if isinstance(data, list):
        return [_walk(item, values, f"{where}[{i}]", budget, text) for i, item in enumerate(data)]
    return data


def _in_text(
    text: str, values: Mapping[str, Any], where: str, budget: list[int], as_text: bool = False
) -> Any:
    if "${" not in text:
        return text
    whole = _REFERENCE.fullmatch(text)
    if whole is not None and whole.group(1) is not None:
        value = _value(whole.group(1), values, where)
        if as_text and not isinstance(value, list | Mapping):
            return _scalar_text(value)
        if isinstance(value, list):
            budget[0] -= len(value)
            if budget[0] < 0:
                raise VariableError(
                    f"{where}: the variables' lists grow the chain past "
                    f"{MAX_EXPANDED_VALUES:,} values"
                )
        return _marked(value)

    def put(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        if match.group(1) is None:
            raise VariableError(
                f"{where}: {text!r} has a '${{' that is not ${{vars.NAME}} (write $${{ for a "
                "literal one)"
            )
        value = _value(match.group(1), values, where)
        if isinstance(value, list | Mapping):
            raise VariableError(
                f"{where}: vars.{match.group(1)} is a list; a list can be a whole value "
                f"('${{vars.{match.group(1)}}}' alone), not part of the text {text!r}"
            )
        return _scalar_text(value)

    return _REFERENCE.sub(put, text)


def _scalar_text(value: Any) -> str:
    """A variable's value put into text: YAML's spelling of a boolean, nothing for null."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _value(name: str, values: Mapping[str, Any], where: str) -> Any:
    if name not in values:
        known = ", ".join(values) or "none"
        raise VariableError(
            f"{where}: ${{vars.{name}}} names no variable{did_you_mean(name, values)} "
            f"(the chain's vars: {known})"
        )
    return values[name]
