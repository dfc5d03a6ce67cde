"""The Kliko container specification (``kliko.yml``): its sections and typed fields, and the check
of one value against a field's type. Validating a whole set of parameters is
:mod:`kliko_async.model.parameters`.

Parsing errors are reported as one readable paragraph naming the file and field.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from kliko_async.errors import SpecError, shown
from kliko_async.model.inputfiles import InputFileError, read_input_file
from kliko_async.model.yamltext import (
    MAX_INTEGER_DIGITS,
    YamlTextError,
    did_you_mean,
    parse_yaml_bytes,
)

FIELD_TYPES: tuple[str, ...] = (
    "choice",
    "str",
    "float",
    "file",
    "bool",
    "int",
    "List[int]",
    "List[float]",
    "List[bool]",
    "List[str]",
    "List[file]",
)
"""Every parameter type a kliko.yml may declare."""

LEGACY_TYPE_ALIASES: Mapping[str, str] = {"char": "str"}
"""Older type names still accepted, mapped to their current name."""

MAX_KLIKO_YML_BYTES = 1 << 20
"""The largest kliko.yml read (1 MiB; Kliko's own are a few KiB): it comes from someone else's
image, so it is bounded as every other input (see :mod:`kliko_async.model.yamltext`)."""


_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_LIST_PREFIX = "List["
BOOL_WORDS: Mapping[str, bool] = {
    "true": True,
    "yes": True,
    "1": True,
    "false": False,
    "no": False,
    "0": False,
}


class Field(BaseModel):
    """One typed parameter of a Kliko container."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = pydantic.Field(description="Parameter name; also its CLI flag (--name).")
    type: str = pydantic.Field(description="One of FIELD_TYPES (legacy 'char' becomes 'str').")
    initial: Any = pydantic.Field(default=None, description="Default value, used when not given.")
    max_length: int | None = pydantic.Field(
        default=None, gt=0, description="Longest allowed string (str and List[str] only)."
    )
    choices: dict[str, str] | None = pydantic.Field(
        default=None, description="Allowed values mapped to their labels (choice only)."
    )
    label: str | None = pydantic.Field(default=None, description="Short human-readable name.")
    help_text: str | None = pydantic.Field(default=None, description="Longer explanation.")
    required: bool = pydantic.Field(
        default=False, description="Whether a value (given or initial) must be present."
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_PATTERN.match(value):
            raise ValueError(
                f"name {shown(value)} cannot be used as a command-line flag; use letters, digits, "
                "'_' and '-', starting with a letter or '_'"
            )
        return value

    @field_validator("type")
    @classmethod
    def _check_type(cls, value: str) -> str:
        value = LEGACY_TYPE_ALIASES.get(value, value)
        if value not in FIELD_TYPES:
            raise ValueError(
                f"type {shown(value)} is not a Kliko type; use one of {', '.join(FIELD_TYPES)}"
            )
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Field:
        if self.type == "choice" and not self.choices:
            raise ValueError("type 'choice' needs a non-empty 'choices' mapping of value to label")
        if self.choices is not None and self.type != "choice":
            raise ValueError(f"'choices' is only allowed with type 'choice', not {self.type!r}")
        if self.max_length is not None and self.type not in ("str", "List[str]"):
            raise ValueError(
                f"'max_length' is only allowed with type 'str' or 'List[str]', not {self.type!r}"
            )
        if self.initial is not None:
            normalized, problem = check_value(self, self.initial)
            if problem is not None:
                raise ValueError(f"initial value {shown(self.initial)} does not fit: {problem}")
            if self.item_type() == "float":  # Kliko's simms writes `type: float, initial: 10`
                object.__setattr__(self, "initial", normalized)
        return self

    def is_file(self) -> bool:
        """Whether given values are host paths copied into the container (file or List[file])."""
        return self.item_type() == "file"

    def is_list(self) -> bool:
        """Whether values are lists (any List[...] type)."""
        return self.type.startswith(_LIST_PREFIX)

    def item_type(self) -> str:
        """The type of one value: the element type for List[...] types, else the type itself."""
        return self.type[len(_LIST_PREFIX) : -1] if self.is_list() else self.type


class Section(BaseModel):
    """A named group of fields, as shown together in a form."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = pydantic.Field(description="Section title.")
    description: str = pydantic.Field(default="", description="What the section is about.")
    fields: list[Field] = pydantic.Field(description="The parameters of this section, in order.")


class KlikoSpec(BaseModel):
    """The contents of a container's /kliko.yml."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[2, 3, 4] = pydantic.Field(description="Kliko schema version.")
    name: str | None = pydantic.Field(default=None, description="Name of the container's tool.")
    description: str | None = pydantic.Field(default=None, description="What the container does.")
    author: str | None = pydantic.Field(default=None, description="Who made it.")
    email: str | None = pydantic.Field(default=None, description="How to reach the author.")
    url: str | None = pydantic.Field(default=None, description="Where to read more.")
    container: str | None = pydantic.Field(default=None, description="Image name it is built as.")
    io: Literal["split", "join"] = pydantic.Field(
        description="'split': separate /input and /output folders; 'join': one /work folder."
    )
    sections: list[Section] = pydantic.Field(description="Parameter sections, in order.")

    @model_validator(mode="after")
    def _check_unique_names(self) -> KlikoSpec:
        seen: dict[str, str] = {}
        problems: list[str] = []
        for s_index, section in enumerate(self.sections):
            for f_index, field in enumerate(section.fields):
                here = f"sections[{s_index}].fields[{f_index}] ({field.name!r})"
                if field.name in seen:
                    problems.append(
                        f"{here}: field name {field.name!r} is already used by {seen[field.name]}"
                    )
                else:
                    seen[field.name] = f"sections[{s_index}].fields[{f_index}]"
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def fields(self) -> dict[str, Field]:
        """Every field by name, in file order."""
        return {field.name: field for section in self.sections for field in section.fields}


def parse_spec(text: str | bytes, source: str) -> KlikoSpec:
    """Parse kliko.yml text; ``source`` names the file or image in error messages."""
    try:
        raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        data = parse_yaml_bytes(raw, max_bytes=MAX_KLIKO_YML_BYTES)
    except YamlTextError as error:
        raise SpecError(error.message, where=source, hint=error.hint) from None
    if data is None:
        raise SpecError(
            "is empty",
            where=source,
            hint="A kliko.yml needs at least schema_version, io and sections.",
        )
    if not isinstance(data, dict):
        raise SpecError(
            f"the document is {describe_value(data)}, not a mapping of keys",
            where=source,
            hint="A kliko.yml needs at least schema_version, io and sections.",
        )
    try:
        return KlikoSpec.model_validate(data)
    except ValidationError as error:
        message = "; ".join(_describe_spec_error(detail, data) for detail in error.errors())
        raise SpecError(message, where=source) from error


def load_spec(path: Path) -> KlikoSpec:
    """Read and parse a kliko.yml file."""
    try:
        data = read_input_file(path, limit=MAX_KLIKO_YML_BYTES)
    except InputFileError as error:
        if error.missing:
            raise SpecError("file does not exist", where=str(path)) from None
        hint = "Point at the kliko.yml inside it." if error.folder else error.hint
        raise SpecError(error.message, where=str(path), hint=hint) from None
    return parse_spec(data, str(path))


def check_value(field: Field, value: Any) -> tuple[Any, str | None]:
    """Return ``(normalized value, None)`` or ``(None, what is wrong)``."""
    if not field.is_list():
        return _check_item(field, field.type, value)
    if not isinstance(value, list | tuple):
        return None, f"expected a list of {field.item_type()}, got {describe_value(value)}"
    normalized: list[Any] = []
    for index, item in enumerate(value):
        checked, problem = _check_item(field, field.item_type(), item)
        if problem is not None:
            return None, f"item {index}: {problem}"
        normalized.append(checked)
    return normalized, None


def _check_item(field: Field, kind: str, value: Any) -> tuple[Any, str | None]:
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 10**MAX_INTEGER_DIGITS:
                return None, f"{shown(value)} is longer than {MAX_INTEGER_DIGITS} digits"
            return value, None
        return None, f"expected an integer, got {describe_value(value)}"
    if kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                return None, f"expected a finite number, got {value!r}"
            return float(value), None
        return None, f"expected a number, got {describe_value(value)}"
    if kind == "bool":
        if isinstance(value, bool):
            return value, None
        return None, f"expected true or false, got {describe_value(value)}"
    if kind == "str":
        if not isinstance(value, str):
            return None, f"expected a string, got {describe_value(value)}"
        if field.max_length is not None and len(value) > field.max_length:
            return None, (
                f"{shown(value)} is {len(value):,} characters long; the limit is {field.max_length}"
            )
        return value, None
    if kind == "choice":
        choices = field.choices or {}
        if isinstance(value, str) and value in choices:
            return value, None
        return None, f"{shown(value)} is not one of the choices {', '.join(choices)}"
    # file: a path on the host; existence is checked by validate_parameters
    if isinstance(value, str | os.PathLike):
        return os.fspath(value), None
    return None, f"expected a file path, got {describe_value(value)}"


def describe_value(value: Any) -> str:
    """A short phrase naming a value's YAML/JSON kind and the value itself."""
    if value is None:
        return "null"
    kinds: tuple[tuple[type | tuple[type, ...], str], ...] = (
        (bool, "boolean"),
        (int, "integer"),
        (float, "number"),
        (str, "string"),
        ((list, tuple), "list"),
        (dict, "mapping"),
    )
    for kinds_type, kind in kinds:
        if isinstance(value, kinds_type):
            text = shown(value, 40)
            return f"a {kind} {text}" if kind != "integer" else f"an integer {text}"
    return f"a {type(value).__name__}"


_SECTION_KEYS = ("sections", "fields")
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "float_type": "a number",
}


def _describe_spec_error(detail: ErrorDetails, data: Any) -> str:
    """Turn one pydantic error on kliko.yml data into 'location: what is wrong'."""
    loc = tuple(detail["loc"])
    # The location splits into the model it is in (sections[i].fields[j]) and the key path within.
    split = 0
    for index in range(1, len(loc)):
        if isinstance(loc[index], int) and loc[index - 1] in _SECTION_KEYS:
            split = index + 1
    container, rest = loc[:split], loc[split:]
    kind = detail["type"]
    key = ".".join(str(part) for part in rest)
    if kind == "value_error":
        error = detail.get("ctx", {}).get("error")
        message = str(error) if error is not None else detail["msg"]
    elif kind == "extra_forbidden":
        message = _describe_unknown_key(str(rest[-1]), container)
    elif kind == "missing":
        message = f"missing required key {key!r}"
    elif kind == "invalid_key":
        message = f"key {shown(detail['input'])} must be a string (quote it in the YAML)"
        if len(rest) > 1:
            message = f"{'.'.join(str(part) for part in rest[:-1])}: {message}"
    elif kind == "literal_error":
        expected = detail.get("ctx", {}).get("expected", "")
        message = f"{key} must be {expected}, not {describe_value(detail['input'])}"
    elif kind in _EXPECTED:
        what = f"{key} must be" if key else "must be"
        message = f"{what} {_EXPECTED[kind]}, not {describe_value(detail['input'])}"
    else:
        text = detail["msg"]
        text = text[:1].lower() + text[1:]
        message = f"{key}: {text}" if key else text
    location = _render_container(container, data)
    return f"{location}: {message}" if location else message


def _describe_unknown_key(key: str, container: tuple[int | str, ...]) -> str:
    model: type[BaseModel] = KlikoSpec
    if container:
        model = Section if container[-2] == "sections" else Field
    known = list(model.model_fields)
    if suggestion := did_you_mean(key, known):
        return f"unknown key {shown(key)}{suggestion}"
    return f"unknown key {shown(key)}; allowed keys are {', '.join(known)}"


def _render_container(container: tuple[int | str, ...], data: Any) -> str:
    """Render e.g. ("sections", 0, "fields", 2) as "sections[0].fields[2] ('mode')"."""
    text = ""
    node = data
    for part in container:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
        else:
            text += f".{part}" if text else part
            node = node.get(part) if isinstance(node, dict) else None
    name = node.get("name") if isinstance(node, dict) else None
    if container and isinstance(name, str):
        text += f" ({name!r})"
    return text
