"""Parameters of a Kliko image, validated against its kliko.yml: types, choices, required,
lengths, defaults (``initial``) and the file parameters the container is given.

Errors are one readable paragraph naming the parameter and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, field_validator

from kliko_async.errors import ParameterError, shown
from kliko_async.model.spec import BOOL_WORDS, Field, KlikoSpec, check_value
from kliko_async.model.variables import CliText, FromVariable, as_written
from kliko_async.model.yamltext import MAX_INTEGER_DIGITS, did_you_mean

PARAM_FILES_DIR = "/param_files"
"""Where the runner copies file parameters inside the container."""


class FileParameter(BaseModel):
    """A host file given as a parameter, and where it appears inside the container."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = pydantic.Field(description="The field it was given for.")
    host_path: Path = pydantic.Field(description="Absolute, resolved path on the host.")
    container_path: str = pydantic.Field(description="Path of the copy inside the container.")
    sha256: str | None = pydantic.Field(
        None,
        description=(
            "Hex SHA-256 of the bytes the container sees; set by kliko_async.cache.paramfiles."
        ),
    )

    @field_validator("host_path")
    @classmethod
    def _check_absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"host_path {str(value)!r} must be absolute")
        return value


_SCALARS = (str, int, float, bool, type(None))


class ValidatedParameters(BaseModel):
    """A complete, checked parameter set ready to be written as /parameters.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    values: dict[str, Any] = pydantic.Field(
        description="Every field with a value (given or initial); files as container paths."
    )
    files: tuple[FileParameter, ...] = pydantic.Field(
        default=(), description="The host files to copy into /param_files, in field order."
    )
    files_root: Path | None = pydantic.Field(
        None,
        description="A private folder already laid out as /param_files, holding the very "
        "copies that were hashed (see kliko_async.cache.paramfiles); None to copy the host files.",
    )

    def parameters_json(self) -> str:
        """The text of /parameters.json: ``json.dumps(values, sort_keys=True, indent=2)``.

        One field to a line, as Kliko images' shell scripts read it (``sed`` on
        ``"name": value``). Written once per step to run: scalar values (the common case) are
        joined here around the C encoder, which ``indent`` alone would not use (the pure-Python
        one costs ten times as much); the text is the same."""
        values = self.values
        if not all(isinstance(value, _SCALARS) for value in values.values()):
            return json.dumps(values, sort_keys=True, indent=2) + "\n"
        if not values:
            return "{}\n"
        dumps = json.dumps
        lines = ",\n".join(f"  {dumps(name)}: {dumps(values[name])}" for name in sorted(values))
        return "{\n" + lines + "\n}\n"


def validate_parameters(
    spec: KlikoSpec,
    params: Mapping[str, Any],
    *,
    where: str,
    base_dir: Path | None = None,
) -> ValidatedParameters:
    """Check ``params`` against ``spec``, fill in defaults and locate file parameters.

    All problems are collected and raised together as one ParameterError. Relative file paths
    are resolved against ``base_dir`` (the current folder when None).
    """
    fields = spec.fields()
    problems: list[str] = []
    for name in params:
        if name not in fields:
            problems.append(_describe_unknown(name, list(fields)))
    values: dict[str, Any] = {}
    files: list[FileParameter] = []
    for name, field in fields.items():
        given = params.get(name)
        if given is None and field.is_file() and field.initial is not None:
            values[name] = file_default(field, spec.io)  # never read from the host
            continue
        value = field.initial if given is None else given
        if isinstance(value, FromVariable) or _holds_variable(value):
            value = _variable_typed(field, value)
        if isinstance(value, CliText) or _holds_cli_text(value):
            try:  # --set text: typed by the field it lands in
                value = _typed_cli_text(field, value)
            except ParameterError as error:
                problems.append(f"parameter {name!r}: the --set value {error.message}")
                continue
        if value is None:
            if field.required:
                problems.append(f"parameter {name!r} ({field.type}) is required but not given")
            continue
        normalized, problem = check_value(field, value)
        if problem is not None:
            problems.append(f"parameter {name!r}: {problem}")
            continue
        if field.is_file():
            normalized = _locate_files(field, normalized, base_dir, files, problems)
        values[name] = normalized
    if problems:
        raise ParameterError("; ".join(problems), where=where)
    return ValidatedParameters(values=values, files=tuple(files))


def _holds_cli_text(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(item, CliText) for item in value)


def _holds_variable(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(item, FromVariable) for item in value)


def _variable_typed(field: Field, value: Any) -> Any:
    """A whole ``${vars.NAME}`` (or a list holding some) as written where it fits the field,
    else as its text typed by the field, as ``--set`` text is: ``vars: {n: 4}`` is 4 for an
    ``int`` field and "4" for a ``str`` one. Text that does not fit either is left as written,
    for check_value to say what is wrong with it."""
    if isinstance(value, FromVariable):
        if check_value(field, value)[1] is None:
            return as_written(value)
        return _retyped(value, lambda text: parse_cli_value(field, text))
    if not field.is_list():
        return value
    kind = field.item_type()
    return [
        item
        if not isinstance(item, FromVariable)
        else as_written(item)
        if check_value(field, [item])[1] is None
        else _retyped(item, lambda text: _parse_cli_item(field, kind, text, text))
        for item in value
    ]


def _retyped(value: Any, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(str(as_written(value)))
    except ParameterError:
        return as_written(value)


def _typed_cli_text(field: Field, value: Any) -> Any:
    """A ``--set`` value (or a list holding some) as a value of the field's type."""
    if isinstance(value, CliText):
        return parse_cli_value(field, str(value))
    kind = field.item_type() if field.is_list() else field.type
    return [
        _parse_cli_item(field, kind, str(item), str(item)) if isinstance(item, CliText) else item
        for item in value
    ]


def file_default(field: Field, io: Literal["split", "join"]) -> str | list[str]:
    """The container path(s) a ``file`` field's kliko.yml default names.

    The default comes from the image, not from the user, so it is never a host file: an image
    must not be able to make the runner read ``/etc/shadow`` or ``~/.ssh``. As Kliko puts a file
    "in /input in case of split io, /work in case of join io", a relative default names a file
    there (an upstream step's output); an absolute one names a file inside the image. The path
    goes into /parameters.json as it is and nothing is copied into /param_files.
    """
    folder = "/input" if io == "split" else "/work"

    def inside(item: Any) -> str:
        text = os.fspath(item)
        return text if text.startswith("/") else posixpath.normpath(f"{folder}/{text}")

    initial = field.initial
    if field.is_list():
        return [inside(item) for item in initial]
    return inside(initial)


def parse_cli_value(field: Field, text: str) -> Any:
    """Turn the text of a ``--name`` command-line flag into a value of the field's type.

    List types take comma-separated items; an empty text is an empty list.
    """
    if field.is_list():
        items = [item.strip() for item in text.split(",")] if text.strip() else []
        return [_parse_cli_item(field, field.item_type(), item, text) for item in items]
    return _parse_cli_item(field, field.type, text, text)


def _parse_cli_item(field: Field, kind: str, item: str, text: str) -> Any:
    flag = f"flag --{field.name}"
    quoted = shown(text) if item == text else f"{shown(item)} in {shown(text)}"
    if kind == "int":
        if len(item.strip().lstrip("+-")) > MAX_INTEGER_DIGITS:
            raise ParameterError(
                f"{quoted} is longer than the {MAX_INTEGER_DIGITS} digits an integer may have",
                where=flag,
            )
        try:
            return int(item)
        except ValueError:
            raise ParameterError(f"{quoted} is not an integer", where=flag) from None
    if kind == "float":
        try:
            number = float(item)
        except ValueError:
            raise ParameterError(f"{quoted} is not a number", where=flag) from None
        if not math.isfinite(number):
            raise ParameterError(f"{quoted} is not a finite number", where=flag)
        return number
    if kind == "bool":
        word = item.strip().lower()
        if word not in BOOL_WORDS:
            raise ParameterError(
                f"{quoted} is not a boolean", where=flag, hint="Use true/false, yes/no or 1/0."
            )
        return BOOL_WORDS[word]
    return item


def _locate_files(
    field: Field,
    value: Any,
    base_dir: Path | None,
    files: list[FileParameter],
    problems: list[str],
) -> Any:
    """Resolve and check the file(s) of one field; return the container path(s).

    They are hashed later, as the copies the container sees (:mod:`kliko_async.cache.paramfiles`).
    """
    if field.is_list():
        paths: list[tuple[str, str]] = [
            (item, f"{PARAM_FILES_DIR}/{field.name}/{index}-{Path(item).name}")
            for index, item in enumerate(value)
        ]
    else:
        paths = [(value, f"{PARAM_FILES_DIR}/{field.name}")]
    base = base_dir if base_dir is not None else Path.cwd()
    for given, container_path in paths:
        host_path = (base / Path(given).expanduser()).resolve()
        label = f"file parameter {field.name!r}: {shown(given)}"
        if given != str(host_path):
            label += f" ({host_path})"
        problem = _file_problem(host_path)
        if problem is not None:
            problems.append(f"{label} {problem}")
            continue
        files.append(
            FileParameter(name=field.name, host_path=host_path, container_path=container_path)
        )
    return [container for _, container in paths] if field.is_list() else paths[0][1]


def _file_problem(host_path: Path) -> str | None:
    """Why the host file of a file parameter cannot be given to a container; None if it can."""
    try:
        if not host_path.exists():
            return "does not exist"
        if host_path.is_dir():
            return "is a folder, not a file"
        if not host_path.is_file():  # a device or pipe: hashing it might never end
            return "is not a regular file (a device, pipe or socket)"
        host_path.open("rb").close()
    except OSError as error:  # also a folder on the way you may not look into
        return f"cannot be read: {error.strerror or error}"
    return None


def _describe_unknown(name: str, known: list[str]) -> str:
    if not known:
        return f"unknown parameter {shown(name)}; this image takes no parameters"
    if suggestion := did_you_mean(name, known):
        return f"unknown parameter {shown(name)}{suggestion}"
    return f"unknown parameter {shown(name)}; known parameters are {', '.join(known)}"
